"""The caching benchmark (:mod:`flowctl.bench`) on an SD3 MMDiT or checkpoint.

:func:`mmdit_model` wraps an :class:`SD3Dynamics` as a :class:`flowctl.bench.runner.BenchModel`
(:func:`flowctl.adapters.bench.transformer_model` with the MMDiT's patch size and its prompt
encoder's guidance), and :func:`sd3_model` a pipeline: one noise latent per seed (drawn as
``pipe(generator=...)`` draws it), the pipeline's own grid for any step count, images decoded
by the VAE. The protocol, tables and outputs are the default model's.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from flowctl.bench.runner import BenchModel
from flowctl.sampling import SigmaGrid

from flowctl.adapters.bench import seed_noise, transformer_model

from .dynamics import SD3Dynamics
from .loop import decode, latent_shape, pipeline_grid


def mmdit_model(
    dynamics: SD3Dynamics,
    noise: torch.Tensor,
    grid_for: Callable[[int], SigmaGrid],
    *,
    to_image: Callable[[torch.Tensor], torch.Tensor],
    adherence: Callable[[torch.Tensor, str, str], torch.Tensor] | None = None,
    adherence_note: str = "",
) -> BenchModel:
    """The benchmark's view of an MMDiT: ``noise`` (one row per seed), the sampler's grid for a
    step count, images from its output, patch blocks of the transformer's patch size for
    shooting + MPC; guidance from the dynamics' prompt encoder (1 without one)."""
    return transformer_model(
        dynamics, noise, grid_for, to_image=to_image, adherence=adherence, adherence_note=adherence_note,
        patch_size=dynamics.transformer.config.patch_size,
        guidance=dynamics.prompts.guidance_scale if dynamics.prompts is not None else 1.0,
    )


def sd3_model(pipeline, dynamics: SD3Dynamics, *, seeds: int, seed: int = 0, height: int | None = None, width: int | None = None) -> BenchModel:
    """The benchmark's view of ``pipeline`` with ``dynamics`` (its prompt encoder sets the
    guidance): ``seeds`` noise latents (seeds ``seed .. seed + seeds - 1``) of ``height`` x
    ``width`` pixels (the pipeline's default if None), decoded by the VAE; no adherence metric."""
    noise = seed_noise(latent_shape(pipeline, height, width), seeds, seed, dtype=dynamics.dtype, device=dynamics.device)
    return mmdit_model(dynamics, noise, lambda steps: pipeline_grid(pipeline, steps, noise), to_image=lambda x: decode(pipeline.vae, x))
