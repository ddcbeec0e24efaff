"""The closed-form controller in the style of RF-Inversion (ICLR 2025): no extra model calls.

RF-Inversion steers a rectified flow with ``v_hat = v + eta (v_cond - v)``, where ``v_cond`` is
the straight-line velocity towards a target and eta is non-zero only inside a window of steps.
Here the target is the one boundary value a cache hit knows exactly, the run's noise ``eps`` at
sigma = 1: ``v_cond = (eps - x) / (1 - sigma)`` is the velocity of the straight line through
``eps`` and ``x`` (sigma = 1 is noise, 0 is data), so the controller holds the state on a path
consistent with the known noise while B's field takes over.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from .._checks import check_int, check_real
from ..dynamics import CountedDynamics, Dynamics
from ..sampling import Grid, integrate
from .base import PhaseClock, TransitionRequest, TransitionResult, check_request

SIGMA_GAP = 1e-6  # v_cond is undefined at sigma = 1; the controller is off there


@dataclass(frozen=True, eq=False)
class NoiseConsistencyField:
    """``v + eta (v_cond - v)`` on grid steps ``[start, stop)``, ``v`` elsewhere.

    Attributes:
        model: the flow model; its condition is passed through.
        noise: the run's noise ``eps``.
        eta: controller strength in [0, 1].
        grid: the sampler's grid (to place t among the steps).
        start, stop: the window of grid steps where the controller acts.
    """

    model: Dynamics
    noise: torch.Tensor
    eta: float
    grid: Grid
    start: int
    stop: int

    def velocity(self, x: torch.Tensor, t: float | torch.Tensor, cond: Any = None) -> torch.Tensor:
        v = self.model.velocity(x, t, cond)
        sigma = float(t)
        if not (self.start <= self.grid.position(t) < self.stop) or 1.0 - sigma < SIGMA_GAP:
            return v
        v_cond = (self.noise - x) / (1.0 - sigma)
        return torch.lerp(v, v_cond, self.eta)


@dataclass(frozen=True)
class ClosedFormController:
    """RF-Inversion-style control towards the known noise over a window after the resume step.

    Attributes:
        eta: controller strength in [0, 1] (RF-Inversion's default 0.9).
        window: steps the controller acts for after the resume step; None for the request's
            transition horizon.
    """

    eta: float = 0.9
    window: int | None = None

    def __post_init__(self) -> None:
        check_real("eta", self.eta, low=0.0, high=1.0)
        if self.window is not None:
            check_int("window", self.window, minimum=1)

    @property
    def name(self) -> str:
        return f"closed-form controller (eta {self.eta:g})"

    def run(self, request: TransitionRequest) -> TransitionResult:
        model = CountedDynamics(check_request(request).model)
        k = request.step
        window = request.horizon if self.window is None else self.window
        field = NoiseConsistencyField(model, request.noise, self.eta, request.grid, k, k + window)
        clock = PhaseClock()
        with clock.phase("continuation"):
            final = integrate(field, request.point.state, request.grid, request.cond_b, method=request.point.method, start=k, keep="final").final
        return TransitionResult(self.name, final, dict(model.counter.by_kind), clock.total, clock.phases)
