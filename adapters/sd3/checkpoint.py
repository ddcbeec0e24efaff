"""Loading a local SD3 / SD3.5 checkpoint directory (diffusers layout) with typed errors.

Nothing is ever fetched from a model hub: the directory must hold the whole pipeline
(``model_index.json`` and one folder per component), as ``save_pretrained`` or a hub snapshot
writes it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from flowctl.errors import InvalidArgumentError, UnknownNameError
from flowctl.errors import MissingDependencyError

from .errors import CheckpointError, CheckpointNotFoundError, DeviceMemoryError, NotSD3CheckpointError

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
PIPELINE_CLASS = "StableDiffusion3Pipeline"


def check_checkpoint(
    path: str | os.PathLike[str], pipeline_class: str = PIPELINE_CLASS, error: type[CheckpointError] = NotSD3CheckpointError,
) -> tuple[Path, dict[str, Any]]:
    """The checkpoint directory and its ``model_index.json``, after checking that it names
    ``pipeline_class`` (SD3's by default; the FLUX adapter passes its own class and error).

    Raises:
        CheckpointNotFoundError: ``path`` does not exist or is not a directory.
        error: no readable ``model_index.json``, or another ``_class_name``.
    """
    directory = Path(path).expanduser()
    if not directory.is_dir():
        raise CheckpointNotFoundError(f"{directory}: " + ("not a directory" if directory.exists() else "no such checkpoint directory"))
    index = directory / "model_index.json"
    try:
        with index.open(encoding="utf-8") as f:
            content = json.load(f)
        class_name = content.get("_class_name")
    except FileNotFoundError:
        raise error(f"{directory}: no model_index.json; not a diffusers pipeline directory") from None
    except (OSError, ValueError, AttributeError) as exc:
        raise error(f"{index}: unreadable ({exc})") from exc
    if class_name != pipeline_class:
        raise error(f"{directory}: model_index.json names {class_name!r}, not {pipeline_class!r}")
    return directory, content


def torch_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """The torch dtype named ``dtype`` ("float32", "float16", "bfloat16"); float16 is refused on
    the CPU (slow, and some of its kernels are missing there: use bfloat16 or float32)."""
    if dtype not in DTYPES:
        raise UnknownNameError("dtype", dtype, list(DTYPES))
    if dtype == "float16" and device.type == "cpu":
        raise InvalidArgumentError("dtype", "float16 is not supported on the CPU; use bfloat16 or float32")
    return DTYPES[dtype]


def parse_device(device: str | torch.device) -> torch.device:
    """``device`` as a torch.device that exists on this machine."""
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise InvalidArgumentError("device", str(exc)) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InvalidArgumentError("device", "CUDA is not available on this machine")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise InvalidArgumentError("device", "MPS is not available on this machine")
    return device


def load_pipeline(path: str | os.PathLike[str], *, dtype: str = "float32", device: str | torch.device = "cpu", t5: bool = True) -> Any:
    """A ``StableDiffusion3Pipeline`` from a local checkpoint directory, offline, on ``device``.

    Every module is put in eval mode with ``requires_grad`` off (derivatives are taken with
    respect to latents only).

    Args:
        path: the checkpoint directory (``model_index.json`` naming ``StableDiffusion3Pipeline``).
        dtype: "float32", "float16" (not on the CPU) or "bfloat16".
        device: where the pipeline runs ("cpu", "cuda", "cuda:1", ...).
        t5: load the T5 encoder; without it the pipeline uses zeros for T5's tokens (SD3's
            documented memory saver; prompts then lose T5's detail).

    Raises:
        CheckpointNotFoundError, NotSD3CheckpointError: see :func:`check_checkpoint`.
        InvalidArgumentError: an unknown dtype, float16 on the CPU, a device that is missing.
        DeviceMemoryError: the device ran out of memory while loading or moving the weights.
        CheckpointError: diffusers could not load the directory (a missing or damaged file).
        MissingDependencyError: diffusers is not installed (the ``sd3`` extra).
    """
    directory, index = check_checkpoint(path)
    return load_checked(directory, index, dtype=dtype, device=device, left_out=() if t5 else ("text_encoder_3", "tokenizer_3"))


def load_checked(
    directory: Path, index: dict[str, Any], *, dtype: str = "float32", device: str | torch.device = "cpu", left_out: tuple[str, ...] = (),
) -> Any:
    """The pipeline of a directory :func:`check_checkpoint` passed (the diffusers class its
    ``index`` names), offline, on ``device``, with the components ``left_out`` as None; modules
    in eval mode with ``requires_grad`` off. Raises as :func:`load_pipeline`."""
    device = parse_device(device)
    dtype_ = torch_dtype(dtype, device)
    try:
        import diffusers
    except ImportError as exc:
        raise MissingDependencyError(f"load_pipeline needs the 'sd3' extra: pip install flowctl[sd3] ({exc})") from exc

    # Components saved as [null, null] (left out when the checkpoint was written) must be
    # passed as None, or diffusers refuses to build the pipeline.
    absent = {name: None for name, value in index.items() if not name.startswith("_") and value in (None, [None, None])}
    absent |= dict.fromkeys(left_out)
    try:
        pipeline = getattr(diffusers, index["_class_name"]).from_pretrained(directory, local_files_only=True, dtype=dtype_, **absent)
        pipeline = pipeline.to(device)
    except (torch.OutOfMemoryError, MemoryError) as exc:
        raise DeviceMemoryError(f"{directory}: out of memory on {device} loading the {dtype} weights ({exc})") from exc
    except RuntimeError as exc:
        if "out of memory" in str(exc).lower() or "can't allocate memory" in str(exc).lower():
            raise DeviceMemoryError(f"{directory}: out of memory on {device} loading the {dtype} weights ({exc})") from exc
        raise
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{directory}: could not load the pipeline ({exc})") from exc
    for component in pipeline.components.values():
        if not isinstance(component, torch.nn.Module):
            continue
        # diffusers 0.42.1 without accelerate leaves a float32 file's SD3Transformer2DModel in
        # float32 whatever the dtype asked; cast a module that came out wholly float32 (modules
        # that keep some layers in float32 on purpose come out mixed and are left as they are).
        floats = {p.dtype for p in component.parameters() if p.is_floating_point()}
        if dtype_ != torch.float32 and floats == {torch.float32}:
            torch.nn.Module.to(component, dtype_)  # not ModelMixin.to, which warns for nothing here
        component.eval().requires_grad_(False)
    return pipeline
