"""Typed errors of the FLUX adapter's checkpoint loading; each derives from the SD3 adapter's
:class:`~flowctl.adapters.sd3.errors.CheckpointError` (and so from :class:`flowctl.errors.FlowctlError`)."""

from __future__ import annotations

from flowctl.adapters.sd3.errors import CheckpointError


class NotFluxCheckpointError(CheckpointError, ValueError):
    """The directory is not a diffusers FluxPipeline checkpoint (its ``model_index.json`` is
    missing, unreadable or names another pipeline class)."""
