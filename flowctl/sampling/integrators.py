"""Explicit Runge-Kutta steps on a grid: Euler (the flow-matching sampler), Heun and RK4.

One step goes from ``t`` to ``t_next`` with the signed step ``h = t_next - t`` (negative on a
sigma grid, which runs from noise to data). The same code steps torch tensors and CasADi
symbols, so a discretisation is identical in every backend. On torch tensors the update
``x + h * slope`` is computed in at least the grid's precision and cast back to the state's
dtype, as diffusers' FlowMatchEulerDiscreteScheduler does (it upcasts to float32).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

from ..errors import ShapeError, UnknownNameError

Velocity = Callable[[Any, Any], Any]
"""``f(x, t) -> dx/dt`` on torch tensors or CasADi columns."""


@dataclass(frozen=True)
class Tableau:
    """Butcher tableau of an explicit Runge-Kutta method.

    Attributes:
        a: strictly lower-triangular stage coefficients, one row per stage.
        b: quadrature weights of the stages (sum to 1).
        c: stage times as fractions of the step.
    """

    a: tuple[tuple[float, ...], ...]
    b: tuple[float, ...]
    c: tuple[float, ...]

    @property
    def stages(self) -> int:
        return len(self.b)


EULER = Tableau(a=((),), b=(1.0,), c=(0.0,))
HEUN = Tableau(a=((), (1.0,)), b=(0.5, 0.5), c=(0.0, 1.0))
RK4 = Tableau(a=((), (0.5,), (0.0, 0.5), (0.0, 0.0, 1.0)), b=(1 / 6, 1 / 3, 1 / 3, 1 / 6), c=(0.0, 0.5, 0.5, 1.0))

TABLEAUS: dict[str, Tableau] = {"euler": EULER, "heun": HEUN, "rk4": RK4}


def get_tableau(method: str) -> Tableau:
    """The tableau registered under ``method`` ("euler", "heun" or "rk4")."""
    try:
        return TABLEAUS[method]
    except (KeyError, TypeError):
        raise UnknownNameError("method", method, list(TABLEAUS)) from None


@dataclass(frozen=True)
class StagePoint:
    """A point where a step evaluated the field: state, time and quadrature weight ``b_s``."""

    x: Any
    t: Any
    weight: float


def rk_step(tableau: Tableau, f: Velocity, x: Any, t: Any, t_next: Any) -> tuple[Any, list[StagePoint]]:
    """One explicit RK step of ``dx/dt = f(x, t)``; returns the new state and the stage points.

    ``sum_s weight_s * g(stage_s.x, stage_s.t) * h`` is the method's quadrature of ``g`` over
    the step, which is how running costs are integrated consistently with the dynamics.
    """
    h = t_next - t
    ks: list[Any] = []
    points: list[StagePoint] = []
    for a_row, b_s, c_s in zip(tableau.a, tableau.b, tableau.c):
        terms = [a * k for a, k in zip(a_row, ks) if a != 0.0]
        x_s = x if not terms else _advance(x, h, _sum(terms))
        t_s = t if c_s == 0.0 else (t_next if c_s == 1.0 else t + c_s * h)
        points.append(StagePoint(x_s, t_s, b_s))
        ks.append(f(x_s, t_s))
    slope = ks[0] if tableau.b == (1.0,) else _sum([b * k for b, k in zip(tableau.b, ks)])
    return _advance(x, h, slope), points


def _sum(terms: list[Any]) -> Any:
    total = terms[0]
    for term in terms[1:]:
        total = total + term
    return total


def _advance(x: Any, h: Any, slope: Any) -> Any:
    if not isinstance(x, torch.Tensor):
        return x + h * slope
    if slope.shape != x.shape:
        raise ShapeError("dynamics", f"velocity has shape {tuple(slope.shape)}, state {tuple(x.shape)}")
    return (x.to(torch.promote_types(x.dtype, h.dtype)) + h * slope).to(x.dtype)
