"""A cross-prompt cached ``StableDiffusion3Pipeline``, called like the pipeline.

``CachedStableDiffusion3Pipeline.from_pipe(pipe, cache=store)`` wraps a loaded pipeline (with
its text encoders): each image of a call is looked up on its own (its prompt's similarity
embedding, the model, grid, guidance and latent shape); a hit continues the most similar cached
run with the chosen transition strategy, a miss is the pipeline's own run (bit for bit: the
same arguments, the noise drawn as the pipeline draws it) and is stored. Images are decoded and
post-processed as the pipeline does. Sigma runs from 1 (noise) to 0 (data).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from diffusers.pipelines.stable_diffusion_3.pipeline_output import StableDiffusion3PipelineOutput

from flowctl.adapters.common import MissingTextEncoderError
from flowctl.cache import SEED_POLICY, CachedGenerator, CachePolicy, CacheStore, PersistentStore
from flowctl.errors import InvalidArgumentError
from flowctl.text import TextEncoder

from .dynamics import SD3Dynamics
from .encoding import SD3PooledEncoder, has_text_encoders
from .loop import pipeline_grid
from .recording import TrajectoryRecorder
from .strategies import STRATEGY_NAMES, make_strategy

UNSUPPORTED = ("prompt_2", "prompt_3", "negative_prompt_2", "negative_prompt_3", "sigmas", "ip_adapter_image",
               "ip_adapter_image_embeds", "skip_guidance_layers", "mu", "clip_skip", "joint_attention_kwargs")
"""Pipeline arguments the cache cannot key or continue: refused (call the pipeline itself)."""


@dataclass(frozen=True)
class ImageCache:
    """What the cache did for one image.

    Attributes:
        hit: whether a cached run was continued.
        similarity: the best match's similarity (None when nothing was cached under the key).
        cached_prompt: the continued run's prompt (hit) or the most similar one (miss).
        resume_step: the grid step it was continued from (hit).
        strategy: the transition strategy's name (hit).
        model_evaluations: model calls spent on this image, of any kind (a miss: the steps).
        entry_id: the stored entry (miss with ``cache_write``).
    """

    hit: bool
    similarity: float | None
    cached_prompt: str | None
    resume_step: int | None
    strategy: str | None
    model_evaluations: float
    entry_id: str | None


@dataclass
class CachedPipelineOutput(StableDiffusion3PipelineOutput):
    """The pipeline's output with ``cache``: one :class:`ImageCache` per image."""

    cache: list[ImageCache] = field(default_factory=list)


class CachedStableDiffusion3Pipeline:
    """A StableDiffusion3Pipeline with a cross-prompt trajectory cache; make it with
    :meth:`from_pipe`."""

    def __init__(self, pipe: Any, store: CacheStore, encoder: TextEncoder, policy: CachePolicy, strategy: str):
        self.pipe, self.store, self.encoder, self.policy, self.strategy = pipe, store, encoder, policy, strategy
        self._dynamics: dict[tuple, SD3Dynamics] = {}

    @classmethod
    def from_pipe(
        cls,
        pipe: Any,
        *,
        cache: CacheStore | PersistentStore,
        encoder: TextEncoder | None = None,
        policy: CachePolicy = SEED_POLICY,
        strategy: str = "direct",
    ) -> CachedStableDiffusion3Pipeline:
        """Wrap ``pipe`` (a StableDiffusion3Pipeline with its text encoders). ``cache``: a
        CacheStore, or a persistent store (then kept in a CacheStore on the pipeline's device);
        ``encoder``: the similarity encoder (default: the pipeline's pooled CLIP);
        ``strategy``: how hits continue (:data:`STRATEGY_NAMES`)."""
        if type(pipe).__name__ != "StableDiffusion3Pipeline":
            raise InvalidArgumentError("pipe", f"expected a StableDiffusion3Pipeline, got {type(pipe).__name__}")
        if not has_text_encoders(pipe):
            raise MissingTextEncoderError("the cached pipeline looks prompts up and encodes them: load the pipeline with its text encoders")
        if isinstance(cache, PersistentStore):
            cache = CacheStore(pipe.transformer.device, persistent=cache)
        if not isinstance(cache, CacheStore):
            raise InvalidArgumentError("cache", f"expected a CacheStore or a persistent store, got {type(cache).__name__}")
        _check_strategy("strategy", strategy)
        return cls(pipe, cache, encoder or SD3PooledEncoder(pipe), policy, strategy)

    def __call__(
        self,
        prompt: str | list[str] | None = None,
        *,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = 28,
        guidance_scale: float = 7.0,
        negative_prompt: str | None = None,
        num_images_per_prompt: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        max_sequence_length: int = 256,
        callback_on_step_end: Any = None,
        cache_namespace: str = "default",
        cache_strategy: str | None = None,
        cache_write: bool = True,
        **unsupported: Any,
    ) -> CachedPipelineOutput | tuple:
        """The pipeline's call (its own arguments, as ``pipe(...)``) with the cache in front.
        ``cache_namespace``: the tenant; ``cache_strategy``: this call's strategy;
        ``cache_write``: store the misses."""
        pipe = self.pipe
        given = sorted(k for k, v in unsupported.items() if v is not None)
        if given:
            raise InvalidArgumentError(given[0], f"not supported by the cached pipeline ({', '.join(UNSUPPORTED)} are not); call the pipeline itself")
        prompts = [prompt] if isinstance(prompt, str) else list(prompt) if isinstance(prompt, (list, tuple)) else None
        if not prompts or not all(isinstance(p, str) and p.strip() for p in prompts):
            raise InvalidArgumentError("prompt", "expected a non-empty prompt or list of prompts (the cache looks prompts up by their text)")
        if negative_prompt is not None and not isinstance(negative_prompt, str):
            raise InvalidArgumentError("negative_prompt", "expected one string for every image")
        if not isinstance(num_images_per_prompt, int) or num_images_per_prompt < 1:
            raise InvalidArgumentError("num_images_per_prompt", f"expected an integer >= 1, got {num_images_per_prompt!r}")
        if output_type not in ("pil", "np", "pt", "latent"):
            raise InvalidArgumentError("output_type", f"expected 'pil', 'np', 'pt' or 'latent', got {output_type!r}")
        rows = [p for p in prompts for _ in range(num_images_per_prompt)]
        if isinstance(generator, list) and len(generator) != len(rows):
            raise InvalidArgumentError("generator", f"a list of {len(generator)} generators for {len(rows)} images")
        strategy = make_strategy(_check_strategy("cache_strategy", cache_strategy or self.strategy), patch_size=pipe.transformer.config.patch_size)

        height = height or pipe.default_sample_size * pipe.vae_scale_factor
        width = width or pipe.default_sample_size * pipe.vae_scale_factor
        transformer = pipe.transformer
        noise = pipe.prepare_latents(
            len(rows), transformer.config.in_channels, height, width, transformer.dtype, transformer.device, generator, latents,
        )  # as the pipeline draws them (it draws nothing more when given latents)
        dynamics = self._dynamics_for(guidance_scale, negative_prompt or "", max_sequence_length)
        grid = pipeline_grid(pipe, num_inference_steps, noise)
        cached = CachedGenerator(dynamics, self.encoder, self.store, grid, policy=self.policy, namespace=cache_namespace, guidance=guidance_scale)
        lookups = [cached.lookup(p, noise[i : i + 1]) for i, p in enumerate(rows)]

        call = dict(height=height, width=width, num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
                    negative_prompt=negative_prompt, max_sequence_length=max_sequence_length)
        misses = [i for i, lookup in enumerate(lookups) if not lookup.hit]
        recorder = TrajectoryRecorder(cached.policy.cached_steps(num_inference_steps)) if cache_write and misses else None
        callback = _chain(recorder, callback_on_step_end)
        finals: dict[int, torch.Tensor] = {}
        info: dict[int, ImageCache] = {}
        if len(misses) == len(rows):  # the pipeline's own run, its own output
            out = pipe(prompt=prompt, num_images_per_prompt=num_images_per_prompt, latents=noise, output_type=output_type,
                       callback_on_step_end=callback, **call)
            images = out.images
        else:
            if misses:
                miss_latents = pipe(prompt=[rows[i] for i in misses], latents=noise[misses], output_type="latent",
                                    callback_on_step_end=callback, **call).images
                finals.update({i: miss_latents[j : j + 1] for j, i in enumerate(misses)})
            for i, lookup in enumerate(lookups):
                if lookup.hit:
                    result = strategy.run(cached.request(lookup, cached.condition(rows[i])))
                    finals[i] = result.final
                    d = lookup.decision
                    info[i] = ImageCache(True, d.similarity, lookup.match.prompt, d.resume_step, result.strategy,
                                         float(sum(result.nfe.values())), None)
            images = self._decode(torch.cat([finals[i] for i in range(len(rows))]), output_type)
        for j, i in enumerate(misses):
            entry_id = None
            if recorder is not None:
                entry = recorder.row_entry(j, key=cached.key(noise[i : i + 1]), prompt=rows[i], embedding=lookups[i].embedding,
                                           noise=noise[i : i + 1], namespace=cache_namespace)
                entry_id = self.store.put(entry)
            match = lookups[i].match
            info[i] = ImageCache(False, None if match is None else match.similarity, None if match is None else match.prompt,
                                 None, None, float(num_inference_steps), entry_id)
        cache = [info[i] for i in range(len(rows))]
        if not return_dict:
            return (images,)
        return CachedPipelineOutput(images=images, cache=cache)

    def _dynamics_for(self, guidance: float, negative_prompt: str, max_sequence_length: int) -> SD3Dynamics:
        """The pipeline as dynamics under these prompt settings (kept: its fingerprint reads every weight)."""
        key = (guidance, negative_prompt, max_sequence_length)
        if key not in self._dynamics:
            dynamics = SD3Dynamics.from_pipeline(self.pipe, guidance_scale=guidance, negative_prompt=negative_prompt, max_sequence_length=max_sequence_length)
            if self._dynamics:  # the weights are the same: reuse the fingerprint
                dynamics._fingerprint = next(iter(self._dynamics.values())).fingerprint
            self._dynamics[key] = dynamics
        return self._dynamics[key]

    def _decode(self, latents: torch.Tensor, output_type: str) -> Any:
        """Decode and post-process as the pipeline does."""
        if output_type == "latent":
            return latents
        vae = self.pipe.vae
        with torch.no_grad():
            image = vae.decode(latents / vae.config.scaling_factor + vae.config.shift_factor, return_dict=False)[0]
        return self.pipe.image_processor.postprocess(image, output_type=output_type)


def _check_strategy(argument: str, name: str) -> str:
    if name not in STRATEGY_NAMES:
        raise InvalidArgumentError(argument, f"unknown strategy {name!r}; known: {', '.join(STRATEGY_NAMES)}")
    return name


def _chain(*callbacks: Any) -> Any:
    """One step-end callback calling each given one in turn (None if none)."""
    active = [c for c in callbacks if c is not None]
    if not active:
        return None

    def chained(pipeline: Any, step: int, timestep: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        for callback in active:
            kwargs = callback(pipeline, step, timestep, kwargs) or kwargs
        return kwargs

    return chained
