"""SD3's denoising loop on flowctl's sampler, equal to ``StableDiffusion3Pipeline`` bit for bit.

``pipe(latents=x, ..., num_inference_steps=N, output_type="latent")`` and
``denoise(dynamics, x, cond, pipeline_grid(pipe, N, x))`` return the same tensor, for any shift,
with dynamic shifting, with and without guidance (tests/test_sd3_adapter.py). Why they agree:

- the grid: :meth:`flowctl.sampling.SigmaGrid.create` reproduces the scheduler's
  ``set_timesteps`` to the last float32 bit; :func:`scheduler_grid` feeds it the scheduler's
  config, and the pipeline's ``mu`` (from the latents' sequence length) with dynamic shifting,
  and puts it on the latents' device, where the pipeline puts its sigmas;
- the velocity: :class:`SD3Dynamics` calls the transformer with the pipeline's arguments and
  guidance layout, timestep ``sigma * 1000`` in float32 (the scheduler's ``timesteps`` are its
  float32 ``sigmas * 1000``);
- the step: the scheduler's ``step()`` upcasts the sample to float32, computes
  ``sample + (sigma_next - sigma) * model_output`` (the product in the model output's dtype, a
  0-dim float32 step times the output) and casts the sum back to the output's dtype. flowctl's
  Euler step (:func:`flowctl.sampling.rk_step`) computes ``x.to(promote(x, h)) + h * v`` with
  the same 0-dim float32 ``h`` and casts back to x's dtype, which :class:`SD3Dynamics` requires
  to be the transformer's (the output's) dtype: the same operations on the same operands, so no
  stepping function of the adapter's own is needed.

A resumed run (:func:`flowctl.sampling.resume` on a point of a run) continues on the run's own
grid: nothing is rebuilt (no ``set_timesteps``), and from step k on it executes the same
operations as the uninterrupted run, so it equals it bit for bit. Sigma = 1 is noise, 0 is data.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import torch

from flowctl._checks import check_int, check_tensor
from flowctl.dynamics import Dynamics
from flowctl.errors import InvalidArgumentError, ShapeError
from flowctl.sampling import SigmaGrid, Trajectory, integrate

from flowctl.adapters.common import UnsupportedSchedulerError, check_grid_on, pixel_latent_shape

UNSUPPORTED = ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas", "invert_sigmas", "shift_terminal", "stochastic_sampling")
"""Scheduler options the adapter's grid does not reproduce."""


def calculate_shift(image_seq_len: int, base_seq_len: int = 256, max_seq_len: int = 4096, base_shift: float = 0.5, max_shift: float = 1.15) -> float:
    """The dynamic shift ``mu`` for an image of ``image_seq_len`` patches, as the SD3 pipeline
    computes it (the same float operations in the same order)."""
    m = (max_shift - base_shift) / (max_seq_len - base_seq_len)
    b = base_shift - m * base_seq_len
    return image_seq_len * m + b


def scheduler_grid(
    scheduler: Any,
    steps: int,
    *,
    latent_shape: tuple[int, ...],
    patch_size: int,
    mu: float | None = None,
    device: torch.device | str | None = None,
) -> SigmaGrid:
    """The sigma grid a ``FlowMatchEulerDiscreteScheduler`` builds for a pipeline run.

    Args:
        scheduler: the pipeline's scheduler; its config sets shift, dynamic shifting (and its
            base/max shift and sequence lengths), time shift type and training timesteps.
        steps: denoising steps N.
        latent_shape: (B, C, H, W) of the latents; with dynamic shifting, ``mu`` is computed from
            the sequence length ``(H // patch_size) * (W // patch_size)`` as the pipeline does.
        patch_size: the transformer's patch size.
        mu: an explicit dynamic shift (only with dynamic shifting, as ``pipe(mu=...)``).
        device: where the sigmas live; the pipeline keeps them on the latents' device.

    Raises:
        UnsupportedSchedulerError: another scheduler class or an option the grid does not
            reproduce (see :data:`UNSUPPORTED`), or a shift changed by ``set_shift``.
    """
    config = getattr(scheduler, "config", None)
    if type(scheduler).__name__ != "FlowMatchEulerDiscreteScheduler" or config is None:
        raise UnsupportedSchedulerError(f"expected a FlowMatchEulerDiscreteScheduler, got {type(scheduler).__name__}")
    used = [name for name in UNSUPPORTED if config.get(name)]
    if used:
        raise UnsupportedSchedulerError(f"scheduler options {used} are not supported by the adapter's sigma grid")
    if scheduler.shift != config.shift:
        raise UnsupportedSchedulerError(f"the scheduler's shift {scheduler.shift} was changed from its config's {config.shift} by set_shift")
    if len(latent_shape) != 4:
        raise ShapeError("latent_shape", f"expected (batch, channels, height, width), got {tuple(latent_shape)}")
    patch_size = check_int("patch_size", patch_size, minimum=1)
    if config.get("use_dynamic_shifting", None):
        if mu is None:
            _, _, height, width = latent_shape
            mu = calculate_shift(
                (height // patch_size) * (width // patch_size),
                config.get("base_image_seq_len", 256),
                config.get("max_image_seq_len", 4096),
                config.get("base_shift", 0.5),
                config.get("max_shift", 1.16),
            )
    elif mu is not None:
        raise InvalidArgumentError("mu", "the scheduler does not use dynamic shifting (the pipeline would ignore mu)")
    return SigmaGrid.create(
        steps, config.shift, mu=mu, time_shift=config.get("time_shift_type", "exponential"),
        num_train_timesteps=config.num_train_timesteps, device=device,
    )


def pipeline_grid(pipeline: Any, steps: int, latents: torch.Tensor, *, mu: float | None = None) -> SigmaGrid:
    """:func:`scheduler_grid` for ``pipe(latents=latents, num_inference_steps=steps)``."""
    latents = check_tensor("latents", latents)
    return scheduler_grid(
        pipeline.scheduler, steps, latent_shape=tuple(latents.shape),
        patch_size=pipeline.transformer.config.patch_size, mu=mu, device=latents.device,
    )


def latent_shape(pipeline: Any, height: int | None = None, width: int | None = None, *, batch: int = 1) -> tuple[int, int, int, int]:
    """(batch, C, h, w) latents of ``height`` x ``width`` pixel images (the pipeline's default
    size when None), which must be multiples of the VAE's scale factor times the patch size."""
    config = pipeline.transformer.config
    return pixel_latent_shape(pipeline, height, width, batch=batch, channels=config.in_channels,
                              multiple=pipeline.vae_scale_factor * config.patch_size, why="VAE scale x patch size")


def denoise(
    dynamics: Dynamics,
    latents: torch.Tensor,
    condition: Any,
    grid: SigmaGrid,
    *,
    keep: str | Iterable[int] = "final",
    generator_state: torch.Tensor | None = None,
) -> Trajectory:
    """Denoise ``latents`` (the noise at sigma = 1) over ``grid`` with Euler, as the pipeline does.

    ``dynamics`` is an :class:`SD3Dynamics` (or a wrapper of one, e.g. a counter); ``keep``
    chooses the states recorded for resuming ("all", "final" or step indices); continue a run
    with :func:`flowctl.sampling.resume`. The grid must be on the latents' device (so that its
    step sizes enter the update as the scheduler's do).
    """
    latents = check_tensor("latents", latents)
    check_grid_on(grid, latents)
    return integrate(dynamics, latents, grid, condition, keep=keep, generator_state=generator_state)


def decode(vae: Any, latents: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1], (B, 3, H, W), from latents at sigma = 0, as the pipeline decodes them:
    ``vae.decode(latents / scaling_factor + shift_factor)``, clamped to [-1, 1] (the pipeline's
    post-processing clamps the same range)."""
    latents = check_tensor("latents", latents)
    if latents.dim() != 4:
        raise ShapeError("latents", f"expected (batch, channels, height, width), got {tuple(latents.shape)}")
    if latents.dtype != vae.dtype or latents.device != vae.device:
        raise InvalidArgumentError("latents", f"are {latents.dtype} on {latents.device}, the VAE {vae.dtype} on {vae.device}")
    config = vae.config
    with torch.no_grad():
        image = vae.decode(latents / config.scaling_factor + config.shift_factor, return_dict=False)[0]
    return image.clamp(-1, 1)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(B, H, W, 3) uint8 from images in [-1, 1], rounded as diffusers' image processor rounds."""
    images = check_tensor("images", images)
    if images.dim() != 4:
        raise ShapeError("images", f"expected (batch, channels, height, width), got {tuple(images.shape)}")
    unit = (images / 2 + 0.5).clamp(0, 1)
    return (unit.cpu().permute(0, 2, 3, 1).float().numpy() * 255).round().astype("uint8")


def to_pil(images: torch.Tensor) -> list:
    """PIL images from images in [-1, 1] (what ``pipe(..., output_type="pil")`` returns)."""
    from PIL import Image

    return [Image.fromarray(array) for array in to_uint8(images)]
