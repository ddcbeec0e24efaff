"""The caching benchmark (:mod:`flowctl.bench`) on an SD3 checkpoint.

:func:`mmdit_model` wraps any MMDiT as a :class:`flowctl.bench.runner.BenchModel`, and
:func:`sd3_model` a pipeline: the MMDiT as
the prompt-conditioned flow, one noise latent per seed (drawn as ``pipe(generator=...)`` draws
it), the pipeline's own grid for any step count, images decoded by the VAE (PSNR and SSIM are
measured on them, range [-1, 1]), JVPs under the MATH attention kernel, and patch blocks for
shooting + MPC. The protocol, tables and outputs are the default model's.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from flowctl.bench.runner import BenchModel
from flowctl.jacobians import ColouredJacobian
from flowctl.sampling import SigmaGrid

from flowctl.adapters.common import math_attention, noise_latents

from .dynamics import SD3Dynamics
from .loop import decode, latent_shape, pipeline_grid


class _PerSeed:
    """The dynamics with every prompt's condition repeated for the batch of seeds."""

    def __init__(self, dynamics: SD3Dynamics, seeds: int):
        self.dynamics, self.seeds = dynamics, seeds
        self.fingerprint = dynamics.fingerprint

    def condition(self, prompt: str):
        return self.dynamics.condition(prompt).repeat(self.seeds)

    def velocity(self, x: torch.Tensor, t, cond) -> torch.Tensor:
        return self.dynamics.velocity(x, t, cond)


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
    step count, images from its output, derivatives under the MATH attention kernel, patch
    blocks for shooting + MPC; guidance from the dynamics' prompt encoder."""
    patch = dynamics.transformer.config.patch_size
    return BenchModel(
        _PerSeed(dynamics, len(noise)),
        noise,
        grid_for,
        to_image=to_image,
        adherence=adherence,
        adherence_note=adherence_note,
        derivatives=math_attention,
        guidance=dynamics.prompts.guidance_scale if dynamics.prompts is not None else 1.0,
        mpc_jacobian=ColouredJacobian(block=(patch, patch), radius=0),
    )


def sd3_model(pipeline, dynamics: SD3Dynamics, *, seeds: int, seed: int = 0, height: int | None = None, width: int | None = None) -> BenchModel:
    """The benchmark's view of ``pipeline`` with ``dynamics`` (its prompt encoder sets the
    guidance): ``seeds`` noise latents (seeds ``seed .. seed + seeds - 1``) of ``height`` x
    ``width`` pixels (the pipeline's default if None), decoded by the VAE; no adherence metric."""
    shape = latent_shape(pipeline, height, width)
    noise = torch.cat([noise_latents(shape, s, dtype=dynamics.dtype, device=dynamics.device)[0] for s in range(seed, seed + seeds)])
    return mmdit_model(dynamics, noise, lambda steps: pipeline_grid(pipeline, steps, noise), to_image=lambda x: decode(pipeline.vae, x))
