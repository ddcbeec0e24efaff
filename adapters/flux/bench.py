"""The caching benchmark (:mod:`flowctl.bench`) on a FLUX.1 checkpoint: :func:`flux_model`."""

from __future__ import annotations

from typing import Any

from flowctl.bench.runner import BenchModel

from flowctl.adapters.bench import seed_noise, transformer_model
from flowctl.adapters.sd3.loop import decode

from .dynamics import FluxDynamics
from .loop import latent_shape, pipeline_grid

PATCH = 2
"""FLUX's transformer tokenises the unpacked (B, C, H, W) states in 2x2 patches."""


def flux_model(pipeline: Any, dynamics: FluxDynamics, *, seeds: int, seed: int = 0, height: int | None = None, width: int | None = None) -> BenchModel:
    """The benchmark's view of ``pipeline`` with ``dynamics`` (its guidance keys the cache):
    ``seeds`` unpacked noise latents (seeds ``seed .. seed + seeds - 1``, drawn as
    ``pipe(generator=...)`` draws them) of ``height`` x ``width`` pixels (the pipeline's default
    if None), FLUX's own grid for any step count, images decoded by the VAE, 2x2 patch blocks for
    shooting + MPC; no adherence metric."""
    noise = seed_noise(latent_shape(pipeline, height, width), seeds, seed, dtype=dynamics.dtype, device=dynamics.device)
    return transformer_model(
        dynamics, noise, lambda steps: pipeline_grid(pipeline, steps, noise), to_image=lambda x: decode(pipeline.vae, x),
        patch_size=PATCH, guidance=dynamics.guidance,
    )
