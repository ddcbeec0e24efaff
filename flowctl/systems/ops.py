"""Vector operations that work on batched torch tensors and on CasADi columns alike.

Dynamics and costs written with these (and plain arithmetic) evaluate on torch tensors
(components along the last axis) and on CasADi ``SX``/``MX``/``DM`` column vectors, so one
definition serves the torch and the CasADi backends.
"""

from __future__ import annotations

from collections.abc import Sequence

import casadi
import torch

Vector = torch.Tensor | casadi.SX | casadi.MX | casadi.DM
"""A state or input: a batched torch tensor (last axis the vector) or a CasADi column."""


def split(v: Vector) -> tuple:
    """Components of ``v``: slices along a tensor's last axis, or the rows of a CasADi column."""
    if isinstance(v, torch.Tensor):
        return v.unbind(-1)
    return tuple(casadi.vertsplit(v))


def stack(parts: Sequence) -> Vector:
    """Inverse of :func:`split`; torch components are broadcast against each other first."""
    if isinstance(parts[0], torch.Tensor):
        return torch.stack(torch.broadcast_tensors(*parts), dim=-1)
    return casadi.vertcat(*parts)


def sin(v):
    return torch.sin(v) if isinstance(v, torch.Tensor) else casadi.sin(v)


def cos(v):
    return torch.cos(v) if isinstance(v, torch.Tensor) else casadi.cos(v)


def matvec(matrix: torch.Tensor, v: Vector) -> Vector:
    """``matrix @ v`` for a 2-D float64 ``matrix``: ``v @ matrix.T`` on torch's last axis (in
    ``v``'s dtype and device), ``casadi.mtimes`` with a numpy copy for CasADi."""
    if isinstance(v, torch.Tensor):
        return v @ matrix.to(dtype=v.dtype, device=v.device).T
    return casadi.mtimes(matrix.numpy(), v)


def concat(*vectors: Vector) -> Vector:
    """Concatenate vectors along the component axis (torch: last axis, broadcasting the rest)."""
    return stack([c for v in vectors for c in split(v)])
