"""FLUX.1's denoising loop on flowctl's sampler, equal to ``FluxPipeline`` bit for bit.

``pipe(latents=pack_latents(x), ..., num_inference_steps=N, output_type="latent")`` returns
``pack_latents(denoise(dynamics, x, cond, pipeline_grid(pipe, N, x)).final)`` (the pipeline
returns packed latents; flowctl's states are unpacked), with and without the embedded guidance,
with true CFG (tests/test_flux_adapter.py). Why they agree:

- the grid: FluxPipeline does not use the scheduler's default grid. It passes custom sigmas
  ``np.linspace(1.0, 1 / N, N)``, which ``set_timesteps`` casts to float32 and shifts in
  float32 numpy arithmetic (with dynamic shifting by ``mu = calculate_shift(image_seq_len, ...)``
  from the scheduler's config, else by its static ``shift``). That is not
  :meth:`flowctl.sampling.SigmaGrid.create`'s grid (float64 over the training timesteps, from
  1 to 1/1000), so :func:`flux_sigmas` repeats the scheduler's operations and :func:`flux_grid`
  wraps them in a :class:`SigmaGrid` (same fields, other values: a FLUX grid is not rebuilt by
  ``SigmaGrid.create(steps, shift, mu=mu)``);
- the velocity: :class:`FluxDynamics` (see its module);
- the step: the scheduler's ``sample.float() + (sigma_next - sigma) * output`` cast back to the
  output's dtype is flowctl's Euler step (see :mod:`flowctl.adapters.sd3.loop`); that the
  pipeline steps packed latents and flowctl unpacked ones changes nothing (elementwise).

A resumed run (:func:`flowctl.sampling.resume`) continues on the run's own grid and equals the
uninterrupted run bit for bit. Sigma = 1 is noise, 0 is data.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch

from flowctl._checks import check_int, check_real, check_tensor
from flowctl.dynamics import Dynamics
from flowctl.errors import InvalidArgumentError, ShapeError
from flowctl.sampling import SigmaGrid, Trajectory, integrate
from flowctl.sampling.grid import TIME_SHIFTS

from flowctl.adapters.common import UnsupportedSchedulerError, check_grid_on, pixel_latent_shape

UNSUPPORTED = (
    "use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas", "invert_sigmas", "shift_terminal",
    "stochastic_sampling", "use_flow_sigmas",
)
"""Scheduler options the adapter's grid does not reproduce."""


def calculate_shift(image_seq_len: int, base_seq_len: int = 256, max_seq_len: int = 4096, base_shift: float = 0.5, max_shift: float = 1.15) -> float:
    """The dynamic shift ``mu`` for ``image_seq_len`` patch tokens, as FluxPipeline computes it
    (the same float operations in the same order)."""
    m = (max_shift - base_shift) / (max_seq_len - base_seq_len)
    b = base_shift - m * base_seq_len
    return image_seq_len * m + b


def flux_sigmas(
    steps: int,
    *,
    mu: float | None,
    shift: float = 1.0,
    time_shift: str = "exponential",
    sigmas: Sequence[float] | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """The N + 1 float32 sigmas ``set_timesteps(sigmas=..., mu=mu)`` builds from FluxPipeline's
    custom sigmas (``np.linspace(1.0, 1 / steps, steps)``, or ``sigmas``), with the terminal 0.

    ``mu`` is the dynamic shift (None: the static ``shift``, the scheduler without dynamic
    shifting, e.g. FLUX.1-schnell's)."""
    steps = check_int("steps", steps, minimum=1)
    if time_shift not in TIME_SHIFTS:
        raise InvalidArgumentError("time_shift", f"expected one of {TIME_SHIFTS}, got {time_shift!r}")
    if sigmas is None:
        base = np.linspace(1.0, 1 / steps, steps)
    else:
        base = np.asarray(sigmas, dtype=np.float64)
        if base.ndim != 1 or len(base) != steps:
            raise ShapeError("sigmas", f"expected {steps} sigmas, got shape {base.shape}")
        if not (np.isfinite(base).all() and (base > 0).all()):
            raise InvalidArgumentError("sigmas", "must be finite and > 0")
    # set_timesteps: float32, then the shift in float32 numpy arithmetic (python scalars are weak).
    sig = np.array(base).astype(np.float32)
    if mu is not None:
        mu = check_real("mu", mu)
        sig = math.exp(mu) / (math.exp(mu) + (1 / sig - 1) ** 1.0) if time_shift == "exponential" else mu / (mu + (1 / sig - 1) ** 1.0)
    else:
        shift = check_real("shift", shift, positive=True)
        sig = shift * sig / (1 + (shift - 1) * sig)
    values = torch.from_numpy(sig).to(dtype=torch.float32, device=device)
    return torch.cat([values, torch.zeros(1, device=values.device)])


def flux_grid(
    source: Any,
    steps: int,
    image_seq_len: int,
    *,
    sigmas: Sequence[float] | None = None,
    device: torch.device | str | None = None,
) -> SigmaGrid:
    """The sigma grid a ``FluxPipeline`` run samples on.

    Args:
        source: the pipeline, or its ``FlowMatchEulerDiscreteScheduler``; the scheduler's config
            sets dynamic shifting (and its base/max shift and sequence lengths), the static shift,
            the time shift type and the training timesteps.
        steps: denoising steps N (``num_inference_steps``).
        image_seq_len: patch tokens per image, ``(H / 2) * (W / 2)`` for (B, C, H, W) latents;
            sets ``mu`` as the pipeline's ``calculate_shift`` does.
        sigmas: the pipeline's ``sigmas`` argument, if one was given (N values).
        device: where the sigmas live; the pipeline keeps them on the latents' device.

    Raises:
        UnsupportedSchedulerError: another scheduler class or an option the grid does not
            reproduce (see :data:`UNSUPPORTED`), or a shift changed by ``set_shift``.
    """
    scheduler = getattr(source, "scheduler", source)
    config = getattr(scheduler, "config", None)
    if type(scheduler).__name__ != "FlowMatchEulerDiscreteScheduler" or config is None:
        raise UnsupportedSchedulerError(f"expected a FlowMatchEulerDiscreteScheduler, got {type(scheduler).__name__}")
    used = [name for name in UNSUPPORTED if config.get(name)]
    if used:
        raise UnsupportedSchedulerError(f"scheduler options {used} are not supported by the adapter's sigma grid")
    if scheduler.shift != config.shift:
        raise UnsupportedSchedulerError(f"the scheduler's shift {scheduler.shift} was changed from its config's {config.shift} by set_shift")
    image_seq_len = check_int("image_seq_len", image_seq_len, minimum=1)
    mu = None
    if config.get("use_dynamic_shifting", None):
        mu = calculate_shift(
            image_seq_len,
            config.get("base_image_seq_len", 256),
            config.get("max_image_seq_len", 4096),
            config.get("base_shift", 0.5),
            config.get("max_shift", 1.15),
        )
    time_shift = config.get("time_shift_type", "exponential")
    values = flux_sigmas(steps, mu=mu, shift=scheduler.shift, time_shift=time_shift, sigmas=sigmas, device=device)
    return SigmaGrid(values, shift=float(config.shift), mu=mu, time_shift=time_shift, num_train_timesteps=config.num_train_timesteps)


def pipeline_grid(pipeline: Any, steps: int, latents: torch.Tensor, *, sigmas: Sequence[float] | None = None) -> SigmaGrid:
    """:func:`flux_grid` for ``pipe(latents=pack_latents(latents), num_inference_steps=steps)``:
    the sequence length from the (B, C, H, W) latents, the sigmas on their device."""
    latents = check_tensor("latents", latents, finite=False)
    if latents.dim() != 4 or latents.shape[2] % 2 or latents.shape[3] % 2:
        raise ShapeError("latents", f"expected unpacked latents (batch, channels, height, width) of even sides, got {tuple(latents.shape)}")
    seq_len = (latents.shape[2] // 2) * (latents.shape[3] // 2)
    return flux_grid(pipeline, steps, seq_len, sigmas=sigmas, device=latents.device)


def latent_shape(pipeline: Any, height: int | None = None, width: int | None = None, *, batch: int = 1) -> tuple[int, int, int, int]:
    """(batch, C, h, w) unpacked latents of ``height`` x ``width`` pixel images (the pipeline's
    default size when None), which must be multiples of twice the VAE's scale factor (the
    pipeline would round them down, with a warning)."""
    return pixel_latent_shape(pipeline, height, width, batch=batch, channels=pipeline.transformer.config.in_channels // 4,
                              multiple=2 * pipeline.vae_scale_factor, why="2 x the VAE's scale factor")


def denoise(
    dynamics: Dynamics,
    latents: torch.Tensor,
    condition: Any,
    grid: SigmaGrid,
    *,
    keep: str | Iterable[int] = "final",
    generator_state: torch.Tensor | None = None,
) -> Trajectory:
    """Denoise unpacked ``latents`` (the noise at sigma = 1) over ``grid`` with Euler, as the
    pipeline does.

    ``dynamics`` is a :class:`FluxDynamics` (or a wrapper of one, e.g. a counter); ``keep``
    chooses the states recorded for resuming ("all", "final" or step indices); continue a run
    with :func:`flowctl.sampling.resume`. The grid must be on the latents' device.
    """
    latents = check_tensor("latents", latents)
    if latents.dim() != 4 or latents.shape[2] % 2 or latents.shape[3] % 2:
        raise ShapeError("latents", f"expected unpacked latents (batch, channels, height, width) of even sides, got {tuple(latents.shape)}")
    check_grid_on(grid, latents)
    return integrate(dynamics, latents, grid, condition, keep=keep, generator_state=generator_state)
