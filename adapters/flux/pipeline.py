"""A cross-prompt cached ``FluxPipeline``, called like the pipeline.

``CachedFluxPipeline.from_pipe(pipe, cache=store)`` wraps a loaded FLUX.1 pipeline (with its
CLIP and T5 encoders): each image of a call is looked up on its own; a hit continues the most
similar cached run with the chosen transition strategy, a miss is the pipeline's own run (bit
for bit: the same arguments, the noise drawn as the pipeline draws it) and is stored. The
machinery is :mod:`flowctl.adapters.pipeline`'s (shared with SD3's cached pipeline); this
module holds FLUX's call and hooks: latents are cached unpacked, (B, C, H, W), and handed to
the pipeline packed; ``output_type="latent"`` returns them packed, as the pipeline does. The
cache key's guidance is :attr:`FluxDynamics.guidance` (the embedded guidance on FLUX.1-dev, the
true CFG scale on a model without a guidance embedding). Sigma runs from 1 (noise) to 0 (data).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from diffusers.pipelines.flux.pipeline_output import FluxPipelineOutput

from flowctl.adapters.pipeline import CachedPipeline, ImageCache
from flowctl.sampling import SigmaGrid

from .bench import PATCH
from .dynamics import FluxDynamics
from .encoding import FluxPooledEncoder, has_text_encoders
from .latents import pack_latents, unpack_latents
from .loop import pipeline_grid

__all__ = ["CachedFluxPipeline", "CachedFluxPipelineOutput"]


@dataclass
class CachedFluxPipelineOutput(FluxPipelineOutput):
    """The pipeline's output with ``cache``: one :class:`ImageCache` per image."""

    cache: list[ImageCache] = field(default_factory=list)


class CachedFluxPipeline(CachedPipeline):
    """A FluxPipeline with a cross-prompt trajectory cache; make it with :meth:`from_pipe` (the
    default similarity encoder: :class:`FluxPooledEncoder`)."""

    PIPELINE_CLASS = "FluxPipeline"
    UNSUPPORTED = ("prompt_2", "negative_prompt_2", "sigmas", "prompt_embeds", "pooled_prompt_embeds", "negative_prompt_embeds",
                   "negative_pooled_prompt_embeds", "ip_adapter_image", "ip_adapter_image_embeds", "negative_ip_adapter_image",
                   "negative_ip_adapter_image_embeds", "joint_attention_kwargs", "callback_on_step_end_tensor_inputs")
    OUTPUT = CachedFluxPipelineOutput

    def __call__(
        self,
        prompt: str | list[str] | None = None,
        *,
        negative_prompt: str | None = None,
        true_cfg_scale: float = 1.0,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = 28,
        guidance_scale: float = 3.5,
        num_images_per_prompt: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: Any = None,
        max_sequence_length: int = 512,
        cache_namespace: str = "default",
        cache_strategy: str | None = None,
        cache_write: bool = True,
        **unsupported: Any,
    ) -> CachedFluxPipelineOutput | tuple:
        """The pipeline's call (its own arguments, as ``pipe(...)``; ``latents`` packed, as the
        pipeline takes them) with the cache in front. ``cache_namespace``: the tenant;
        ``cache_strategy``: this call's strategy; ``cache_write``: store the misses."""
        settings = dict(guidance_scale=guidance_scale, true_cfg_scale=true_cfg_scale, negative_prompt=negative_prompt,
                        max_sequence_length=max_sequence_length)
        return self._call(
            prompt, settings=settings, height=height, width=width,
            num_inference_steps=num_inference_steps, num_images_per_prompt=num_images_per_prompt, generator=generator,
            latents=latents, output_type=output_type, return_dict=return_dict, callback_on_step_end=callback_on_step_end,
            cache_namespace=cache_namespace, cache_strategy=cache_strategy, cache_write=cache_write, unsupported=unsupported,
        )

    @staticmethod
    def _has_text_encoders(pipe: Any) -> bool:
        return has_text_encoders(pipe)

    @staticmethod
    def _pooled_encoder(pipe: Any) -> FluxPooledEncoder:
        return FluxPooledEncoder(pipe)

    def _noise(self, batch: int, height: int, width: int, generator: Any, latents: torch.Tensor | None) -> torch.Tensor:
        pipe, transformer = self.pipe, self.pipe.transformer
        packed, _ = pipe.prepare_latents(batch, transformer.config.in_channels // 4, height, width, transformer.dtype, transformer.device, generator, latents)
        scale = 2 * pipe.vae_scale_factor  # the pipeline's latent size: 2 * (pixels // (2 * scale factor))
        return unpack_latents(packed, 2 * (height // scale), 2 * (width // scale))

    def _new_dynamics(self, settings: dict[str, Any], same_weights: FluxDynamics | None) -> FluxDynamics:
        # true CFG only with a negative prompt, as the pipeline's do_true_cfg
        true_cfg = settings["true_cfg_scale"] if settings["negative_prompt"] is not None else 1.0
        dynamics = FluxDynamics.from_pipeline(
            self.pipe, guidance_scale=settings["guidance_scale"], true_cfg_scale=true_cfg,
            negative_prompt=settings["negative_prompt"], max_sequence_length=settings["max_sequence_length"],
        )
        if same_weights is not None:
            dynamics.share_checksum(same_weights)
        return dynamics

    def _guidance(self, settings: dict[str, Any], dynamics: FluxDynamics) -> float:
        return dynamics.guidance

    def _grid(self, steps: int, noise: torch.Tensor) -> SigmaGrid:
        return pipeline_grid(self.pipe, steps, noise)

    def _patch_size(self) -> int:
        return PATCH

    def _to_pipe(self, latents: torch.Tensor) -> torch.Tensor:
        return pack_latents(latents)

    def _from_pipe(self, latents: torch.Tensor, height: int, width: int) -> torch.Tensor:
        return unpack_latents(latents, height, width)
