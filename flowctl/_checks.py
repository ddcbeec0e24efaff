"""Argument checks shared by all modules; each raises a typed error naming the argument."""

from __future__ import annotations

import math
import numbers

import torch

from .errors import InvalidArgumentError, NonFiniteError, ShapeError


def check_tensor(name: str, x: object, *, ndim_min: int = 0, finite: bool = True) -> torch.Tensor:
    """Return ``x`` if it is a floating-point tensor with at least ``ndim_min`` axes, finite
    unless ``finite=False`` (the finiteness check synchronises with the device)."""
    if not isinstance(x, torch.Tensor):
        raise InvalidArgumentError(name, f"expected a torch.Tensor, got {type(x).__name__}")
    if not (x.is_floating_point() or x.is_complex()):
        raise InvalidArgumentError(name, f"expected a floating-point tensor, got dtype {x.dtype}")
    if x.dim() < ndim_min:
        raise ShapeError(name, f"expected at least {ndim_min} axes, got shape {tuple(x.shape)}")
    # A finite sum proves every entry finite (NaN and Inf propagate); only a non-finite sum,
    # which may be mere overflow, needs the exact elementwise check.
    if finite and not bool(torch.isfinite(x.sum())) and not bool(torch.isfinite(x).all()):
        raise NonFiniteError(name, "contains NaN or Inf")
    return x


def check_same_shape(name: str, x: torch.Tensor, ref_name: str, ref: torch.Tensor) -> None:
    if x.shape != ref.shape:
        raise ShapeError(
            name, f"shape {tuple(x.shape)} does not match {ref_name}'s shape {tuple(ref.shape)}"
        )


def check_int(name: str, value: object, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise InvalidArgumentError(name, f"expected an integer, got {value!r}")
    if value < minimum:
        raise InvalidArgumentError(name, f"must be >= {minimum}, got {value}")
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
    """Return ``value`` as a float if it is a finite real number within the stated bounds."""
    if isinstance(value, torch.Tensor) and value.numel() == 1:
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
