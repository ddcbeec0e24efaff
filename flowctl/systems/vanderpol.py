"""The Van der Pol oscillator of CasADi's direct-shooting example."""

from __future__ import annotations

from dataclasses import dataclass

from .base import ControlSystem
from .ops import Vector, split, stack


@dataclass(frozen=True)
class VanDerPol(ControlSystem):
    """``x1' = (1 - x2^2) x1 - x2 + u``, ``x2' = x1``, exactly as in CasADi's examples.

    The plant of CasADi's direct-shooting examples (minimise the integral of
    ``x1^2 + x2^2 + u^2`` over 10 s from ``x = (0, 1)`` with ``|u| <= 1``). No ``mu`` parameter.
    """

    state_names = ("x1", "x2")
    control_names = ("u",)

    def f(self, x: Vector, u: Vector, t: float) -> Vector:
        x1, x2 = split(x)
        (u1,) = split(u)
        return stack([(1 - x2**2) * x1 - x2 + u1, x1])
