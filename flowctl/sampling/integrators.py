"""One-step integrators on a grid: Euler (the flow-matching sampler), Heun and RK4.

A stepper maps ``(dynamics, x, t, t_next, cond)`` to the state at ``t_next``; the step
``h = t_next - t`` is signed (negative on a sigma grid, which runs from noise to data).
The update ``x + h * slope`` is computed in at least the grid's precision and cast back to the
state's dtype, as diffusers' FlowMatchEulerDiscreteScheduler does (it upcasts to float32).
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from ..dynamics import Dynamics
from ..errors import ShapeError, UnknownNameError

Stepper = Callable[[Dynamics, torch.Tensor, torch.Tensor, torch.Tensor, Any], torch.Tensor]


def _advance(x: torch.Tensor, h: torch.Tensor, slope: torch.Tensor) -> torch.Tensor:
    if slope.shape != x.shape:
        raise ShapeError("dynamics", f"velocity has shape {tuple(slope.shape)}, state {tuple(x.shape)}")
    return (x.to(torch.promote_types(x.dtype, h.dtype)) + h * slope).to(x.dtype)


def euler_step(dynamics: Dynamics, x: torch.Tensor, t: torch.Tensor, t_next: torch.Tensor, cond: Any) -> torch.Tensor:
    """``x + h v(x, t)``: one evaluation. On a sigma grid this is SD3's sampler."""
    return _advance(x, t_next - t, dynamics.velocity(x, t, cond))


def heun_step(dynamics: Dynamics, x: torch.Tensor, t: torch.Tensor, t_next: torch.Tensor, cond: Any) -> torch.Tensor:
    """Explicit trapezoid (Heun's method), second order: two evaluations."""
    h = t_next - t
    k1 = dynamics.velocity(x, t, cond)
    k2 = dynamics.velocity(_advance(x, h, k1), t_next, cond)
    return _advance(x, h, (k1 + k2) / 2)


def rk4_step(dynamics: Dynamics, x: torch.Tensor, t: torch.Tensor, t_next: torch.Tensor, cond: Any) -> torch.Tensor:
    """Classical fourth-order Runge-Kutta: four evaluations."""
    h = t_next - t
    t_mid = t + h / 2
    k1 = dynamics.velocity(x, t, cond)
    k2 = dynamics.velocity(_advance(x, h / 2, k1), t_mid, cond)
    k3 = dynamics.velocity(_advance(x, h / 2, k2), t_mid, cond)
    k4 = dynamics.velocity(_advance(x, h, k3), t_next, cond)
    return _advance(x, h, (k1 + 2 * k2 + 2 * k3 + k4) / 6)


STEPPERS: dict[str, Stepper] = {"euler": euler_step, "heun": heun_step, "rk4": rk4_step}


def get_stepper(method: str) -> Stepper:
    """The stepper registered under ``method`` ("euler", "heun" or "rk4")."""
    try:
        return STEPPERS[method]
    except (KeyError, TypeError):
        raise UnknownNameError("method", method, list(STEPPERS)) from None
