"""Stable Diffusion 3 / 3.5 through diffusers, as flowctl dynamics (``flowctl.adapters.sd3``).

- :class:`SD3Dynamics`, :class:`SD3Condition`: the MMDiT's guided velocity, exactly as the
  pipeline computes it; :func:`math_attention` for derivatives through it.
- :func:`pipeline_grid`, :func:`scheduler_grid`, :func:`latent_shape`, :func:`noise_latents`,
  :func:`denoise`, :func:`decode`: the denoising
  loop on flowctl's sampler, equal to ``pipe(..., output_type="latent")`` bit for bit and
  resumable at any step (:func:`flowctl.sampling.resume`).
- :class:`SD3PromptEncoder`, :class:`SD3PooledEncoder`: prompts to conditions, and SD3's pooled
  CLIP embedding as the cache's similarity key.
- :func:`load_pipeline`: a local checkpoint directory, offline, with typed errors.
- :func:`make_strategy`: flowctl's transition strategies by name, shooting + MPC linearised per
  latent patch (derivatives run in :meth:`SD3Dynamics.derivatives`, the MATH attention kernel).

Sigma = 1 is noise, 0 is data; the transformer's timestep is ``sigma * 1000``. See docs/sd3.md.
diffusers is imported only where a pipeline is loaded; the rest works on the objects given.
"""

from .checkpoint import DTYPES, check_checkpoint, load_pipeline
from flowctl.adapters.common import MissingTextEncoderError, UnsupportedSchedulerError, make_strategy, math_attention, noise_latents, weight_checksum
from flowctl.transitions import STRATEGY_NAMES

from .condition import SD3Condition
from .dynamics import SD3Dynamics
from .encoding import SD3PooledEncoder, SD3PromptEncoder, has_text_encoders
from .errors import (
    CheckpointError,
    CheckpointNotFoundError,
    DeviceMemoryError,
    NotSD3CheckpointError,
)
from .recording import TrajectoryRecorder, identity_shift, resume_kwargs
from .loop import calculate_shift, decode, denoise, latent_shape, pipeline_grid, scheduler_grid, to_pil, to_uint8

__all__ = [
    "CachedStableDiffusion3Pipeline",
    "TrajectoryRecorder",
    "identity_shift",
    "resume_kwargs",
    "SD3Condition",
    "SD3Dynamics",
    "math_attention",
    "weight_checksum",
    "SD3PromptEncoder",
    "SD3PooledEncoder",
    "has_text_encoders",
    "calculate_shift",
    "scheduler_grid",
    "pipeline_grid",
    "latent_shape",
    "noise_latents",
    "denoise",
    "decode",
    "to_uint8",
    "to_pil",
    "load_pipeline",
    "check_checkpoint",
    "DTYPES",
    "make_strategy",
    "STRATEGY_NAMES",
    "CheckpointError",
    "CheckpointNotFoundError",
    "NotSD3CheckpointError",
    "DeviceMemoryError",
    "MissingTextEncoderError",
    "UnsupportedSchedulerError",
]


def __getattr__(name: str):
    # The cached pipeline subclasses diffusers' output class: imported (with diffusers) on first use.
    if name == "CachedStableDiffusion3Pipeline":
        from .pipeline import CachedStableDiffusion3Pipeline

        return CachedStableDiffusion3Pipeline
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
