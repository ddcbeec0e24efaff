"""Linear time-invariant systems ``x' = A x + B u``."""

from __future__ import annotations

import torch

from .._checks import check_real_values
from ..errors import NonFiniteError, ShapeError
from .base import ControlSystem
from .ops import Vector, matvec


def _as_matrix(name: str, value: object) -> torch.Tensor:
    """``value`` (real numbers, integers included) as a finite 2-D float64 CPU tensor, detached
    and copied."""
    matrix = check_real_values(name, value).to(torch.float64)
    if matrix.dim() != 2:
        raise ShapeError(name, f"expected a 2-D matrix, got shape {tuple(matrix.shape)}")
    if not bool(torch.isfinite(matrix).all()):
        raise NonFiniteError(name, "contains NaN or Inf")
    return matrix.detach().to("cpu").clone()


class LinearSystem(ControlSystem):
    """``x' = A x + B u`` with constant matrices.

    Args:
        A: ``(n, n)`` state matrix, ``n >= 1``; array-like, stored as a float64 tensor.
        B: ``(n, m)`` input matrix, or ``None`` for a system without input: then ``B`` is
            stored as an ``(n, 0)`` matrix, ``n_control == 0``, and ``u`` must be ``None`` or
            have last axis 0.

    States are named ``x1 .. xn`` and inputs ``u1 .. um``.
    """

    def __init__(self, A: object, B: object = None):
        self.A = _as_matrix("A", A)
        n = self.A.shape[0]
        if n == 0 or self.A.shape[1] != n:
            raise ShapeError("A", f"expected a non-empty square matrix, got {tuple(self.A.shape)}")
        self.B = torch.zeros(n, 0, dtype=torch.float64) if B is None else _as_matrix("B", B)
        if self.B.shape[0] != n:
            raise ShapeError("B", f"expected {n} rows to match A, got shape {tuple(self.B.shape)}")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(n_state={self.n_state}, n_control={self.n_control})"

    @property
    def state_names(self) -> tuple[str, ...]:
        return tuple(f"x{i + 1}" for i in range(self.A.shape[0]))

    @property
    def control_names(self) -> tuple[str, ...]:
        return tuple(f"u{i + 1}" for i in range(self.B.shape[1]))

    def f(self, x: Vector, u: Vector, t: float) -> Vector:
        return matvec(self.A, x) + matvec(self.B, u)


class DoubleIntegrator(LinearSystem):
    """A unit mass on a line pushed by a force: state (position, velocity), input force."""

    state_names = ("position", "velocity")
    control_names = ("force",)

    def __init__(self) -> None:
        super().__init__([[0.0, 1.0], [0.0, 0.0]], [[0.0], [1.0]])
