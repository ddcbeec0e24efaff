"""Loading a local FLUX.1 checkpoint directory (diffusers layout) with typed errors.

Nothing is ever fetched from a model hub: the directory must hold the whole pipeline
(``model_index.json`` naming ``FluxPipeline``, and one folder per component), as
``save_pretrained`` or a hub snapshot writes it. The loading itself (dtypes, devices, memory
errors) is the SD3 adapter's :func:`~flowctl.adapters.sd3.checkpoint.load_checked`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from flowctl.adapters.sd3.checkpoint import check_checkpoint as check_pipeline_class
from flowctl.adapters.sd3.checkpoint import load_checked

from .errors import NotFluxCheckpointError

PIPELINE_CLASS = "FluxPipeline"


def check_checkpoint(path: str | os.PathLike[str]) -> tuple[Path, dict[str, Any]]:
    """The checkpoint directory and its ``model_index.json``, after checking that it names a
    FLUX pipeline.

    Raises:
        CheckpointNotFoundError: ``path`` does not exist or is not a directory.
        NotFluxCheckpointError: no readable ``model_index.json``, or another ``_class_name``.
    """
    return check_pipeline_class(path, PIPELINE_CLASS, NotFluxCheckpointError)


def load_pipeline(path: str | os.PathLike[str], *, dtype: str = "float32", device: str | torch.device = "cpu") -> Any:
    """A ``FluxPipeline`` from a local checkpoint directory, offline, on ``device``; every
    module in eval mode with ``requires_grad`` off (derivatives are taken with respect to
    latents only).

    Args:
        path: the checkpoint directory (``model_index.json`` naming ``FluxPipeline``).
        dtype: "float32", "float16" (not on the CPU) or "bfloat16" (FLUX.1's own).
        device: where the pipeline runs ("cpu", "cuda", "cuda:1", ...).

    Raises:
        CheckpointNotFoundError, NotFluxCheckpointError: see :func:`check_checkpoint`.
        InvalidArgumentError: an unknown dtype, float16 on the CPU, a device that is missing.
        DeviceMemoryError: the device ran out of memory while loading or moving the weights.
        CheckpointError: diffusers could not load the directory (a missing or damaged file).
        MissingDependencyError: diffusers is not installed (the ``sd3`` extra).
    """
    directory, index = check_checkpoint(path)
    return load_checked(directory, index, dtype=dtype, device=device)
