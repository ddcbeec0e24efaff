"""Control systems ``dx/dt = f(x, u, t)`` whose ``f`` is written once for torch and CasADi.

``f`` takes either torch tensors batched on leading axes (``x``: ``(..., n_state)``, ``u``:
``(..., n_control)``, leading axes broadcast) or CasADi column vectors (``SX``/``MX``/``DM`` of
shape ``(n_state, 1)`` and ``(n_control, 1)``). Systems write ``f`` with :mod:`flowctl.systems.ops`
and plain arithmetic, which both libraries share.
Time is in seconds and angles in radians throughout.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import casadi
import torch

from .._checks import check_real, check_tensor
from ..errors import ShapeError
from .ops import Vector


class ControlSystem(ABC):
    """A time-invariant control system ``dx/dt = f(x, u, t)``.

    Subclasses set ``state_names`` and ``control_names`` (tuples of str, whose lengths give
    ``n_state`` and ``n_control``) and implement :meth:`f` once for both backends.
    """

    state_names: tuple[str, ...]
    control_names: tuple[str, ...]

    @property
    def n_state(self) -> int:
        return len(self.state_names)

    @property
    def n_control(self) -> int:
        return len(self.control_names)

    @abstractmethod
    def f(self, x: Vector, u: Vector, t: float) -> Vector:
        """Return ``dx/dt``, of ``x``'s kind: a tensor ``(..., n_state)`` or a CasADi column."""

    def velocity(
        self, x: torch.Tensor, t: float | torch.Tensor, cond: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The :class:`~flowctl.dynamics.Dynamics` protocol: ``f(x, cond, t)`` on torch tensors.

        ``cond`` is the input ``u``, shape ``(..., n_control)`` broadcasting to ``x``'s leading
        axes and cast to ``x``'s dtype and device; ``None`` means zero input. Returns a tensor
        of ``x``'s shape.
        """
        check_tensor("x", x, ndim_min=1)
        check_real("t", t)
        if x.shape[-1] != self.n_state:
            raise ShapeError("x", f"expected shape (..., {self.n_state}), got {tuple(x.shape)}")
        if cond is None:
            u = x.new_zeros((*x.shape[:-1], self.n_control))
        else:
            check_tensor("cond", cond, ndim_min=1)
            leading = x.shape[:-1]
            if cond.shape[-1] != self.n_control or not _broadcasts_to(cond.shape[:-1], leading):
                raise ShapeError(
                    "cond",
                    f"expected shape (..., {self.n_control}) broadcasting to x's leading axes "
                    f"{tuple(leading)}, got {tuple(cond.shape)}",
                )
            u = cond.to(dtype=x.dtype, device=x.device)
        return self.f(x, u, t)

    def casadi_function(self) -> casadi.Function:
        """``casadi.Function("f", [x, u], [f(x, u, 0)])`` on SX symbols, outputs ``xdot``."""
        x = casadi.SX.sym("x", self.n_state)
        u = casadi.SX.sym("u", self.n_control)
        return casadi.Function("f", [x, u], [self.f(x, u, 0.0)], ["x", "u"], ["xdot"])


def _broadcasts_to(shape: torch.Size, target: torch.Size) -> bool:
    try:
        return torch.broadcast_shapes(shape, target) == target
    except RuntimeError:
        return False
