"""The caching benchmark (:mod:`flowctl.bench`) on an SD3 checkpoint.

:func:`sd3_model` wraps a pipeline as a :class:`flowctl.bench.runner.BenchModel`: the MMDiT as
the prompt-conditioned flow, one noise latent per seed (drawn as ``pipe(generator=...)`` draws
it), the pipeline's own grid for any step count, images decoded by the VAE (PSNR and SSIM are
measured on them, range [-1, 1]), JVPs under the MATH attention kernel, and patch blocks for
shooting + MPC. The protocol, tables and outputs are the default model's.
"""

from __future__ import annotations

import torch

from flowctl.bench.runner import BenchModel
from flowctl.jacobians import ColouredJacobian

from .dynamics import SD3Dynamics, math_attention
from .loop import decode, latent_shape, noise_latents, pipeline_grid


class _PerSeed:
    """The dynamics with every prompt's condition repeated for the batch of seeds."""

    def __init__(self, dynamics: SD3Dynamics, seeds: int):
        self.dynamics, self.seeds = dynamics, seeds
        self.fingerprint = dynamics.fingerprint

    def condition(self, prompt: str):
        return self.dynamics.condition(prompt).repeat(self.seeds)

    def velocity(self, x: torch.Tensor, t, cond) -> torch.Tensor:
        return self.dynamics.velocity(x, t, cond)


def sd3_model(pipeline, dynamics: SD3Dynamics, *, seeds: int, seed: int = 0, height: int | None = None, width: int | None = None) -> BenchModel:
    """The benchmark's view of ``pipeline`` with ``dynamics`` (its prompt encoder sets the
    guidance): ``seeds`` noise latents (seeds ``seed .. seed + seeds - 1``) of ``height`` x
    ``width`` pixels (the pipeline's default if None)."""
    shape = latent_shape(pipeline, height, width)
    noise = torch.cat([noise_latents(shape, s, dtype=dynamics.dtype, device=dynamics.device)[0] for s in range(seed, seed + seeds)])
    patch = pipeline.transformer.config.patch_size
    return BenchModel(
        _PerSeed(dynamics, seeds),
        noise,
        lambda steps: pipeline_grid(pipeline, steps, noise),
        to_image=lambda x: decode(pipeline.vae, x),
        derivatives=math_attention,
        guidance=dynamics.prompts.guidance_scale if dynamics.prompts is not None else 1.0,
        mpc_jacobian=ColouredJacobian(block=(patch, patch), radius=0),
    )
