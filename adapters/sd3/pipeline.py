"""A cross-prompt cached ``StableDiffusion3Pipeline``, called like the pipeline.

``CachedStableDiffusion3Pipeline.from_pipe(pipe, cache=store)`` wraps a loaded pipeline (with
its text encoders): each image of a call is looked up on its own (its prompt's similarity
embedding, the model, grid, guidance and latent shape); a hit continues the most similar cached
run with the chosen transition strategy, a miss is the pipeline's own run (bit for bit: the
same arguments, the noise drawn as the pipeline draws it) and is stored. Images are decoded and
post-processed as the pipeline does. The machinery is :mod:`flowctl.adapters.pipeline`'s; this
module holds SD3's call and hooks. Sigma runs from 1 (noise) to 0 (data).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from diffusers.pipelines.stable_diffusion_3.pipeline_output import StableDiffusion3PipelineOutput

from flowctl.adapters.pipeline import CachedPipeline, ImageCache
from flowctl.sampling import SigmaGrid

from .dynamics import SD3Dynamics
from .encoding import SD3PooledEncoder, has_text_encoders
from .loop import pipeline_grid

__all__ = ["CachedPipelineOutput", "CachedStableDiffusion3Pipeline", "ImageCache"]


@dataclass
class CachedPipelineOutput(StableDiffusion3PipelineOutput):
    """The pipeline's output with ``cache``: one :class:`ImageCache` per image."""

    cache: list[ImageCache] = field(default_factory=list)


class CachedStableDiffusion3Pipeline(CachedPipeline):
    """A StableDiffusion3Pipeline with a cross-prompt trajectory cache; make it with
    :meth:`from_pipe` (the default similarity encoder: :class:`SD3PooledEncoder`)."""

    PIPELINE_CLASS = "StableDiffusion3Pipeline"
    UNSUPPORTED = ("prompt_2", "prompt_3", "negative_prompt_2", "negative_prompt_3", "sigmas", "ip_adapter_image",
                   "ip_adapter_image_embeds", "skip_guidance_layers", "mu", "clip_skip", "joint_attention_kwargs")
    OUTPUT = CachedPipelineOutput

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
        return self._call(
            prompt, settings=dict(guidance_scale=guidance_scale, negative_prompt=negative_prompt, max_sequence_length=max_sequence_length),
            height=height, width=width, num_inference_steps=num_inference_steps,
            num_images_per_prompt=num_images_per_prompt, generator=generator, latents=latents, output_type=output_type,
            return_dict=return_dict, callback_on_step_end=callback_on_step_end, cache_namespace=cache_namespace,
            cache_strategy=cache_strategy, cache_write=cache_write, unsupported=unsupported,
        )

    @staticmethod
    def _has_text_encoders(pipe: Any) -> bool:
        return has_text_encoders(pipe)

    @staticmethod
    def _pooled_encoder(pipe: Any) -> SD3PooledEncoder:
        return SD3PooledEncoder(pipe)

    def _noise(self, batch: int, height: int, width: int, generator: Any, latents: torch.Tensor | None) -> torch.Tensor:
        transformer = self.pipe.transformer
        return self.pipe.prepare_latents(batch, transformer.config.in_channels, height, width, transformer.dtype, transformer.device, generator, latents)

    def _new_dynamics(self, settings: dict[str, Any], same_weights: SD3Dynamics | None) -> SD3Dynamics:
        dynamics = SD3Dynamics.from_pipeline(
            self.pipe, guidance_scale=settings["guidance_scale"], negative_prompt=settings["negative_prompt"] or "",
            max_sequence_length=settings["max_sequence_length"],
        )
        if same_weights is not None:
            dynamics.share_checksum(same_weights)
        return dynamics

    def _guidance(self, settings: dict[str, Any], dynamics: SD3Dynamics) -> float:
        return settings["guidance_scale"]

    def _grid(self, steps: int, noise: torch.Tensor) -> SigmaGrid:
        return pipeline_grid(self.pipe, steps, noise)

    def _patch_size(self) -> int:
        return self.pipe.transformer.config.patch_size
