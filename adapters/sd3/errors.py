"""Typed errors of the SD3 adapter; each derives from :class:`flowctl.errors.FlowctlError`."""

from __future__ import annotations

from flowctl.errors import FlowctlError


class CheckpointError(FlowctlError):
    """A checkpoint directory could not be loaded."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """The checkpoint path does not exist or is not a directory."""


class NotSD3CheckpointError(CheckpointError, ValueError):
    """The directory is not a diffusers StableDiffusion3Pipeline checkpoint (its
    ``model_index.json`` is missing, unreadable or names another pipeline class)."""


class DeviceMemoryError(CheckpointError, MemoryError):
    """The device ran out of memory while the checkpoint was loaded or moved onto it."""
