"""The caching benchmark (:mod:`flowctl.bench`) on a diffusers transformer of any family.

:func:`transformer_model` wraps a prompt-conditioned transformer dynamics (SD3's MMDiT, FLUX's
DiT) as a :class:`flowctl.bench.runner.BenchModel`: one noise latent per seed, the sampler's
grid for any step count, images from its output (range [-1, 1]; PSNR and SSIM are measured on
them), derivatives under the MATH attention kernel, and latent patch blocks for shooting + MPC.
The families' ``sd3_model`` / ``flux_model`` fill it in from a pipeline.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from flowctl._checks import check_int
from flowctl.bench.runner import BenchModel
from flowctl.dynamics import derivative_mode
from flowctl.jacobians import ColouredJacobian
from flowctl.sampling import SigmaGrid

from flowctl.adapters.common import noise_latents


class _PerSeed:
    """The dynamics with every prompt's condition repeated for the batch of seeds."""

    def __init__(self, dynamics: Any, seeds: int):
        self.dynamics, self.seeds = dynamics, seeds
        self.fingerprint = dynamics.fingerprint

    def condition(self, prompt: str):
        return self.dynamics.condition(prompt).repeat(self.seeds)

    def velocity(self, x: torch.Tensor, t, cond) -> torch.Tensor:
        return self.dynamics.velocity(x, t, cond)

    def derivatives(self):
        return derivative_mode(self.dynamics)


def transformer_model(
    dynamics: Any,
    noise: torch.Tensor,
    grid_for: Callable[[int], SigmaGrid],
    *,
    to_image: Callable[[torch.Tensor], torch.Tensor],
    patch_size: int,
    guidance: float,
    adherence: Callable[[torch.Tensor, str, str], torch.Tensor] | None = None,
    adherence_note: str = "",
) -> BenchModel:
    """The benchmark's view of a transformer ``dynamics`` (``condition(prompt)`` with a
    ``repeat(n)``, ``velocity``, ``fingerprint``): ``noise`` (one row per seed), the sampler's
    grid for a step count, images from its output (derivatives in the dynamics' own mode),
    shooting + MPC's Jacobian in ``patch_size`` x ``patch_size`` blocks of the (B, C, H, W)
    states (the transformer's tokens), and ``guidance`` as the cache key's guidance scale."""
    patch_size = check_int("patch_size", patch_size, minimum=1)
    return BenchModel(
        _PerSeed(dynamics, len(noise)),
        noise,
        grid_for,
        to_image=to_image,
        adherence=adherence,
        adherence_note=adherence_note,
        guidance=guidance,
        mpc_jacobian=ColouredJacobian(block=(patch_size, patch_size), radius=0),
    )


def seed_noise(shape: tuple[int, int, int, int], seeds: int, seed: int, *, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """(seeds, C, H, W): the latents of ``shape`` (batch 1) the pipelines draw for seeds ``seed``
    .. ``seed + seeds - 1``, one row each (:func:`~flowctl.adapters.common.noise_latents`)."""
    return torch.cat([noise_latents(shape, s, dtype=dtype, device=device)[0] for s in range(seed, seed + check_int("seeds", seeds, minimum=1))])
