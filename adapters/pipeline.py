"""What the cross-prompt cached pipelines share (SD3's ``CachedStableDiffusion3Pipeline``,
FLUX's ``CachedFluxPipeline``): a diffusers pipeline's call with the cache in front.

Each image of a call is looked up on its own (its prompt's similarity embedding, the model,
grid, guidance and latent shape); a hit continues the most similar cached run with the chosen
transition strategy, a miss is the pipeline's own run (bit for bit: the same arguments, the
noise drawn as the pipeline draws it) and is stored. Images are decoded and post-processed as
the pipeline does. A family subclasses :class:`CachedPipeline` with its call signature and the
few hooks where pipelines differ (the noise, the latents' layout, the dynamics and grid).
States are (B, C, H, W) latents; sigma runs from 1 (noise) to 0 (data).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from flowctl.adapters.common import MissingTextEncoderError
from flowctl.adapters.common import make_strategy
from flowctl.transitions import STRATEGY_NAMES
from flowctl.cache import SEED_POLICY, CacheEntry, CachedGenerator, CacheKey, CachePolicy, CacheStore, PersistentStore
from flowctl.errors import InvalidArgumentError
from flowctl.sampling import SigmaGrid
from flowctl.text import TextEncoder


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


class CachedPipeline:
    """A diffusers pipeline with a cross-prompt trajectory cache; make one with :meth:`from_pipe`.

    A subclass sets :attr:`PIPELINE_CLASS`, :attr:`UNSUPPORTED` and :attr:`OUTPUT`, implements
    the hooks below, and defines ``__call__`` with the pipeline's own arguments, passing them to
    :meth:`_call`.
    """

    PIPELINE_CLASS: ClassVar[str]
    """The diffusers class it wraps (by name)."""
    UNSUPPORTED: ClassVar[tuple[str, ...]]
    """Pipeline arguments the cache cannot key or continue: refused (call the pipeline itself)."""
    OUTPUT: ClassVar[type]
    """The pipeline's output class with a ``cache`` field: one :class:`ImageCache` per image."""

    def __init__(self, pipe: Any, store: CacheStore, encoder: TextEncoder, policy: CachePolicy, strategy: str):
        self.pipe, self.store, self.encoder, self.policy, self.strategy = pipe, store, encoder, policy, strategy
        self._dynamics: dict[tuple, Any] = {}

    @classmethod
    def from_pipe(
        cls,
        pipe: Any,
        *,
        cache: CacheStore | PersistentStore,
        encoder: TextEncoder | None = None,
        policy: CachePolicy = SEED_POLICY,
        strategy: str = "direct",
    ) -> CachedPipeline:
        """Wrap ``pipe`` (a pipeline of :attr:`PIPELINE_CLASS` with its text encoders).
        ``cache``: a CacheStore, or a persistent store (then kept in a CacheStore on the
        pipeline's device); ``encoder``: the similarity encoder (default: the pipeline's pooled
        CLIP); ``strategy``: how hits continue (:data:`STRATEGY_NAMES`)."""
        if type(pipe).__name__ != cls.PIPELINE_CLASS:
            raise InvalidArgumentError("pipe", f"expected a {cls.PIPELINE_CLASS}, got {type(pipe).__name__}")
        if not cls._has_text_encoders(pipe):
            raise MissingTextEncoderError("the cached pipeline looks prompts up and encodes them: load the pipeline with its text encoders")
        if isinstance(cache, PersistentStore):
            cache = CacheStore(pipe.transformer.device, persistent=cache)
        if not isinstance(cache, CacheStore):
            raise InvalidArgumentError("cache", f"expected a CacheStore or a persistent store, got {type(cache).__name__}")
        _check_strategy("strategy", strategy)
        return cls(pipe, cache, encoder or cls._pooled_encoder(pipe), policy, strategy)

    # --- the family's hooks ------------------------------------------------------------------

    @staticmethod
    def _has_text_encoders(pipe: Any) -> bool:
        raise NotImplementedError

    @staticmethod
    def _pooled_encoder(pipe: Any) -> TextEncoder:
        """The default similarity encoder."""
        raise NotImplementedError

    def _noise(self, batch: int, height: int, width: int, generator: Any, latents: torch.Tensor | None) -> torch.Tensor:
        """(batch, C, h, w) starting latents drawn as the pipeline draws them (or its ``latents``)."""
        raise NotImplementedError

    def _new_dynamics(self, settings: dict[str, Any], same_weights: Any | None) -> Any:
        """The pipeline as dynamics under the call's ``settings``; ``same_weights``: another of
        this pipeline's dynamics, whose weight checksum can be reused (it reads every weight)."""
        raise NotImplementedError

    def _guidance(self, settings: dict[str, Any], dynamics: Any) -> float:
        """The guidance scale of the cache key."""
        raise NotImplementedError

    def _grid(self, steps: int, noise: torch.Tensor) -> SigmaGrid:
        """The grid ``pipe(latents=..., num_inference_steps=steps)`` samples on."""
        raise NotImplementedError

    def _patch_size(self) -> int:
        """Side of the latents' patches the transformer tokenises (shooting + MPC's blocks)."""
        raise NotImplementedError

    def _to_pipe(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) latents in the pipeline's own layout (its ``latents`` argument and latent output)."""
        return latents

    def _from_pipe(self, latents: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """The pipeline's latents as (B, C, ``height``, ``width``)."""
        return latents

    # --- the call ----------------------------------------------------------------------------

    def _call(
        self,
        prompt: Any,
        *,
        settings: dict[str, Any],
        height: int | None,
        width: int | None,
        num_inference_steps: int,
        num_images_per_prompt: int,
        generator: Any,
        latents: torch.Tensor | None,
        output_type: str,
        return_dict: bool,
        callback_on_step_end: Any,
        cache_namespace: str,
        cache_strategy: str | None,
        cache_write: bool,
        unsupported: dict[str, Any],
    ) -> Any:
        """The call: ``settings`` are the pipeline's prompt and guidance arguments (passed to it
        as they are, and to :meth:`_new_dynamics`)."""
        pipe = self.pipe
        given = sorted(k for k, v in unsupported.items() if v is not None)
        if given:
            raise InvalidArgumentError(given[0], f"not supported by the cached pipeline ({', '.join(self.UNSUPPORTED)} are not); call the pipeline itself")
        prompts = [prompt] if isinstance(prompt, str) else list(prompt) if isinstance(prompt, (list, tuple)) else None
        if not prompts or not all(isinstance(p, str) and p.strip() for p in prompts):
            raise InvalidArgumentError("prompt", "expected a non-empty prompt or list of prompts (the cache looks prompts up by their text)")
        negative_prompt = settings.get("negative_prompt")
        if negative_prompt is not None and not isinstance(negative_prompt, str):
            raise InvalidArgumentError("negative_prompt", "expected one string for every image")
        if not isinstance(num_images_per_prompt, int) or num_images_per_prompt < 1:
            raise InvalidArgumentError("num_images_per_prompt", f"expected an integer >= 1, got {num_images_per_prompt!r}")
        if output_type not in ("pil", "np", "pt", "latent"):
            raise InvalidArgumentError("output_type", f"expected 'pil', 'np', 'pt' or 'latent', got {output_type!r}")
        rows = [p for p in prompts for _ in range(num_images_per_prompt)]
        if isinstance(generator, list) and len(generator) != len(rows):
            raise InvalidArgumentError("generator", f"a list of {len(generator)} generators for {len(rows)} images")
        strategy = make_strategy(_check_strategy("cache_strategy", cache_strategy or self.strategy), patch_size=self._patch_size())

        height = height or pipe.default_sample_size * pipe.vae_scale_factor
        width = width or pipe.default_sample_size * pipe.vae_scale_factor
        noise = self._noise(len(rows), height, width, generator, latents)  # it draws nothing more when given latents
        dynamics = self._dynamics_for(settings)
        grid = self._grid(num_inference_steps, noise)
        cached = CachedGenerator(dynamics, self.encoder, self.store, grid, policy=self.policy, namespace=cache_namespace,
                                 guidance=self._guidance(settings, dynamics))
        lookups = [cached.lookup(p, noise[i : i + 1]) for i, p in enumerate(rows)]

        call = dict(height=height, width=width, num_inference_steps=num_inference_steps, **settings)
        misses = [i for i, lookup in enumerate(lookups) if not lookup.hit]
        recorder = _Recorder(cached.policy.cached_steps(num_inference_steps), lambda x: self._from_pipe(x, *noise.shape[2:])) if cache_write and misses else None
        callback = _chain(recorder, callback_on_step_end)
        finals: dict[int, torch.Tensor] = {}
        info: dict[int, ImageCache] = {}
        if len(misses) == len(rows):  # the pipeline's own run, its own output
            out = pipe(prompt=prompt, num_images_per_prompt=num_images_per_prompt, latents=self._to_pipe(noise), output_type=output_type,
                       callback_on_step_end=callback, **call)
            images = out.images
        else:
            if misses:
                miss_latents = pipe(prompt=[rows[i] for i in misses], latents=self._to_pipe(noise[misses]), output_type="latent",
                                    callback_on_step_end=callback, **call).images
                miss_latents = self._from_pipe(miss_latents, *noise.shape[2:])
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
                entry = recorder.entry(j, key=cached.key(noise[i : i + 1]), prompt=rows[i], embedding=lookups[i].embedding,
                                       noise=noise[i : i + 1], namespace=cache_namespace)
                entry_id = self.store.put(entry)
            match = lookups[i].match
            info[i] = ImageCache(False, None if match is None else match.similarity, None if match is None else match.prompt,
                                 None, None, float(num_inference_steps), entry_id)
        cache = [info[i] for i in range(len(rows))]
        if not return_dict:
            return (images,)
        return self.OUTPUT(images=images, cache=cache)

    def _dynamics_for(self, settings: dict[str, Any]) -> Any:
        """The pipeline as dynamics under these settings (kept: its fingerprint reads every weight)."""
        key = tuple(sorted(settings.items()))
        if key not in self._dynamics:
            self._dynamics[key] = self._new_dynamics(settings, next(iter(self._dynamics.values()), None))
        return self._dynamics[key]

    def _decode(self, latents: torch.Tensor, output_type: str) -> Any:
        """Decode and post-process (B, C, h, w) latents as the pipeline does."""
        if output_type == "latent":
            return self._to_pipe(latents)
        vae = self.pipe.vae
        with torch.no_grad():
            image = vae.decode(latents / vae.config.scaling_factor + vae.config.shift_factor, return_dict=False)[0]
        return self.pipe.image_processor.postprocess(image, output_type=output_type)


class _Recorder:
    """A step-end callback that keeps a pipeline run's latents (as (B, C, h, w), by ``unpack``)
    after the steps in ``steps``, and the run's sigmas; :meth:`entry` makes one row's cache entry."""

    tensor_inputs = ["latents"]

    def __init__(self, steps: Any, unpack: Callable[[torch.Tensor], torch.Tensor]):
        self.steps, self.unpack = set(steps), unpack
        self.states: dict[int, torch.Tensor] = {}
        self.sigmas: tuple[float, ...] | None = None

    def __call__(self, pipeline: Any, step_index: int, timestep: Any, callback_kwargs: dict[str, Any]) -> dict[str, Any]:
        if step_index == 0:
            self.sigmas = tuple(pipeline.scheduler.sigmas.tolist())
        if step_index + 1 in self.steps:
            self.states[step_index + 1] = self.unpack(callback_kwargs["latents"].detach().clone())
        return callback_kwargs

    def entry(self, row: int, *, key: CacheKey, prompt: str, embedding: torch.Tensor, noise: torch.Tensor, namespace: str) -> CacheEntry:
        """Row ``row`` of the recorded run as a cache entry under ``key`` (its noise: ``noise``,
        that row's latents at step 0)."""
        if self.sigmas != key.sigmas:
            raise InvalidArgumentError("key", "does not describe the recorded run's grid")
        states = {k: x[row : row + 1] for k, x in self.states.items()}
        if 0 in self.steps:
            states[0] = noise
        return CacheEntry(key, prompt, embedding, states, noise, namespace=namespace)


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
