"""Typed errors of the SD3 adapter; each derives from :class:`flowctl.errors.FlowctlError`."""

from __future__ import annotations

from flowctl.errors import FlowctlError


class MissingTextEncoderError(FlowctlError):
    """A prompt was given as text, but the pipeline was loaded without its CLIP text encoders
    and tokenizers: pass the embeddings (an :class:`SD3Condition`) instead."""


class UnsupportedSchedulerError(FlowctlError):
    """The pipeline's scheduler is not a FlowMatchEulerDiscreteScheduler, or uses an option the
    adapter's sigma grid does not reproduce (Karras, exponential or beta sigmas, a shift
    terminal, inverted sigmas, stochastic sampling)."""


class CheckpointError(FlowctlError):
    """A checkpoint directory could not be loaded."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """The checkpoint path does not exist or is not a directory."""


class NotSD3CheckpointError(CheckpointError, ValueError):
    """The directory is not a diffusers StableDiffusion3Pipeline checkpoint (its
    ``model_index.json`` is missing, unreadable or names another pipeline class)."""


class DeviceMemoryError(CheckpointError, MemoryError):
    """The device ran out of memory while the checkpoint was loaded or moved onto it."""
