"""Argument checks shared by all modules; each raises a typed error naming the argument.

Checks run once, where a call enters flowctl, never inside its loops. Metadata checks (type,
dtype, shape, device) cost no host synchronisation; a finiteness check costs one, however many
tensors it covers.
"""

from __future__ import annotations

import math
import numbers

import numpy as np
import torch

from .errors import InvalidArgumentError, NonFiniteError, ShapeError


def check_tensor(name: str, x: object, *, ndim_min: int = 0, finite: bool = True) -> torch.Tensor:
    """Return ``x`` if it is a real floating-point tensor holding data (not a meta tensor) with at
    least ``ndim_min`` axes, finite unless ``finite=False`` (that check synchronises once with
    the device)."""
    if not isinstance(x, torch.Tensor):
        raise InvalidArgumentError(name, f"expected a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise InvalidArgumentError(name, f"expected a real floating-point tensor, got dtype {x.dtype}")
    if x.is_meta:
        raise InvalidArgumentError(name, "is a meta tensor: it holds no values")
    if x.dim() < ndim_min:
        raise ShapeError(name, f"expected at least {ndim_min} axes, got shape {tuple(x.shape)}")
    if finite:
        check_finite((name, x))
    return x


def check_finite(*named: tuple[str, torch.Tensor]) -> None:
    """Raise :class:`NonFiniteError` naming the first of the ``(name, tensor)`` pairs that holds
    NaN or Inf (one host synchronisation when none does)."""
    name = first_non_finite(*named)
    if name is not None:
        raise NonFiniteError(name, "contains NaN or Inf")


def first_non_finite(*named: tuple[object, torch.Tensor]) -> object | None:
    """The name of the first ``(name, tensor)`` pair holding NaN or Inf, or None. One host
    synchronisation covers them all: a finite sum of their sums proves every entry finite (NaN
    and Inf propagate); only a non-finite one, which may be mere overflow, needs the exact
    elementwise checks."""
    if not named:
        return None
    total = named[0][1].sum()
    for _, x in named[1:]:
        total = total + x.sum()
    if bool(torch.isfinite(total)):
        return None
    return next((name for name, x in named if not bool(torch.isfinite(x).all())), None)


def check_real_values(name: str, value: object) -> torch.Tensor:
    """``value`` (a number, a nested sequence of numbers or a tensor: real, integers included) as
    a tensor; complex, bool and meta tensors and anything that is not numbers raise. Values are
    not checked (NaN and Inf pass)."""
    try:  # through numpy, so that Python floats stay float64
        values = value if isinstance(value, torch.Tensor) else torch.as_tensor(np.asarray(value))
    except (TypeError, ValueError, RuntimeError):
        raise InvalidArgumentError(name, f"expected real numbers, got {value!r}") from None
    if values.is_complex() or values.dtype == torch.bool or values.is_meta:
        raise InvalidArgumentError(name, f"expected real numbers holding values, got a {values.dtype} tensor on {values.device}")
    return values


def check_items(name: str, value: object, what: str, *, error: type[InvalidArgumentError] = InvalidArgumentError) -> list:
    """The items of ``value`` as a list if it is a collection of them (a list, tuple, set, range,
    generator, 1-D tensor, ...), not a string or a 0-dim tensor; ``what`` says what was expected."""
    if isinstance(value, (str, bytes)):
        raise error(name, f"expected {what}, got {value!r}")
    try:
        return list(value)
    except TypeError:
        raise error(name, f"expected {what}, got {value!r}") from None


def check_same_shape(name: str, x: torch.Tensor, ref_name: str, ref: torch.Tensor) -> None:
    """Raise unless ``x`` has ``ref``'s shape and sits on ``ref``'s device (tensors combined
    elementwise, with no broadcasting)."""
    if x.shape != ref.shape:
        raise ShapeError(
            name, f"shape {tuple(x.shape)} does not match {ref_name}'s shape {tuple(ref.shape)}"
        )
    if x.device != ref.device:
        raise InvalidArgumentError(name, f"is on {x.device}, {ref_name} on {ref.device}")


def check_int(name: str, value: object, *, minimum: int, maximum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise InvalidArgumentError(name, f"expected an integer, got {value!r}")
    if value < minimum:
        raise InvalidArgumentError(name, f"must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise InvalidArgumentError(name, f"must be <= {maximum}, got {value}")
    return int(value)


def check_real(
    name: str,
    value: object,
    *,
    positive: bool = False,
    nonnegative: bool = False,
    low: float | None = None,
    high: float | None = None,
) -> float:
    """Return ``value`` as a float if it is a finite real number within the stated bounds (a
    one-element real tensor counts as its number)."""
    if isinstance(value, torch.Tensor) and value.numel() == 1 and not value.is_meta:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InvalidArgumentError(name, f"expected a real number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise NonFiniteError(name, f"must be finite, got {value}")
    if positive and value <= 0:
        raise InvalidArgumentError(name, f"must be > 0, got {value}")
    if nonnegative and value < 0:
        raise InvalidArgumentError(name, f"must be >= 0, got {value}")
    if low is not None and value < low:
        raise InvalidArgumentError(name, f"must be >= {low}, got {value}")
    if high is not None and value > high:
        raise InvalidArgumentError(name, f"must be <= {high}, got {value}")
    return value


def check_device(name: str, device: object) -> torch.device:
    """Return ``device`` as a :class:`torch.device` if this machine has it: the CPU, or an
    available accelerator ("cuda", "cuda:1", "mps", ...) whose index exists (a device type torch
    has no availability query for is taken on trust). The meta device holds no values and is
    refused."""
    if not isinstance(device, (str, torch.device)):
        raise InvalidArgumentError(name, f"expected a device such as 'cpu' or 'cuda:0', got {device!r}")
    try:
        device = torch.device(device)
    except (RuntimeError, ValueError) as error:
        raise InvalidArgumentError(name, f"{device!r} is not a device: {error}") from None
    if device.type == "cpu":
        return device
    if device.type == "meta":
        raise InvalidArgumentError(name, "the meta device holds no values")
    backend = getattr(torch, device.type, None)
    available, count = getattr(backend, "is_available", None), getattr(backend, "device_count", None)
    if callable(available) and not available():
        raise InvalidArgumentError(name, f"{device} is not available on this machine")
    if device.index is not None and callable(count) and device.index >= count():
        raise InvalidArgumentError(name, f"{device} does not exist: this machine has {count()} {device.type} device(s)")
    return device


def check_dynamics(name: str, dynamics: object) -> object:
    """Return ``dynamics`` if it has a callable ``velocity(x, t, cond)``."""
    if not callable(getattr(dynamics, "velocity", None)):
        raise InvalidArgumentError(name, f"expected a dynamics with velocity(x, t, cond), got {type(dynamics).__name__}")
    return dynamics


def check_generator_state(name: str, state: object) -> torch.Tensor | None:
    """Return ``state`` if it is None or what ``torch.Generator.get_state()`` gives (a 1-D CPU
    uint8 tensor)."""
    if state is not None and not (
        isinstance(state, torch.Tensor) and state.dtype == torch.uint8 and state.dim() == 1 and state.device.type == "cpu"
    ):
        raise InvalidArgumentError(name, "expected None or a 1-D CPU uint8 tensor from Generator.get_state()")
    return state
