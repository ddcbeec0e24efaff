"""The transition problem (docs/shooting.md): continue prompt A's state as prompt B under a control.

A cache hit gives ``x_k`` on A's trajectory at grid step k, the run's noise ``eps`` and prompt
B. Over H grid steps the state follows the blended field plus a control,
``x_{i+1} = x_i + dsigma_i (v_alpha(x_i) + u_i)``, and the cost is
``w_T |r(x_{k+H})|^2 + lambda sum |u_i|^2 + gamma sum |u_{i+1} - u_i|^2``. Two terminal
residuals ``r`` are offered (sigma = 1 is noise, 0 is data):

- :class:`VelocityConsistency` (the seed's): B's velocity at the end of the transition stays the
  same along its own straight-line continuation, as on a straight trajectory of B.
- :class:`NoiseAnchor`: B's flow run back from the end of the transition to sigma = 1 returns
  the known noise. With one segment this is ``x + (1 - sigma) v(x, sigma, B) - eps`` (exact for
  a straight flow); more segments rely less on straightness and can be shot with unknown nodes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from .._checks import check_int, check_real, check_tensor
from ..dynamics import BlendedDynamics, Dynamics
from ..errors import InvalidArgumentError
from ..sampling import Grid, SigmaGrid
from ..schedules import Schedule
from .problem import OptimalControlProblem


@dataclass(frozen=True, eq=False)
class NoiseAnchor:
    """Terminal residual ``Phi_B(x; sigma -> 1) - eps`` over ``segments`` Euler steps.

    Attributes:
        model: the flow model (wrap it in the counter the solver reports).
        cond: prompt B's condition.
        noise: the run's noise ``eps`` (the state at sigma = 1).
        sigma: sigma at the end of the transition, where the residual is evaluated.
        segments: equal sigma segments from ``sigma`` up to 1.
        multiple_shooting: make the segment nodes unknowns with continuity defects (torch
            backend) instead of shooting through all segments in one rollout.
    """

    model: Dynamics
    cond: Any
    noise: torch.Tensor
    sigma: float
    segments: int = 1
    multiple_shooting: bool = False

    def __post_init__(self) -> None:
        check_tensor("noise", self.noise)
        object.__setattr__(self, "sigma", check_real("sigma", self.sigma, low=0.0, high=1.0))
        check_int("segments", self.segments, minimum=1)

    def _sigmas(self) -> torch.Tensor:
        return torch.linspace(self.sigma, 1.0, self.segments + 1, dtype=torch.float64)

    def _segment(self, x: torch.Tensor, i: int) -> torch.Tensor:
        s = self._sigmas()
        return x + float(s[i + 1] - s[i]) * self.model.velocity(x, float(s[i]), self.cond)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        for i in range(self.segments):
            x = self._segment(x, i)
        return x - self.noise

    def initial_nodes(self, x: torch.Tensor) -> list[torch.Tensor]:
        if not self.multiple_shooting:
            return []
        nodes = []
        for i in range(self.segments - 1):
            x = self._segment(x, i)
            nodes.append(x.detach().clone())
        return nodes

    def residuals(self, x: torch.Tensor, nodes: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        if not self.multiple_shooting:
            return self(x), []
        starts = [x] + list(nodes)
        defects = [self._segment(starts[i], i) - nodes[i] for i in range(self.segments - 1)]
        return self._segment(starts[-1], self.segments - 1) - self.noise, defects


@dataclass(frozen=True, eq=False)
class VelocityConsistency:
    """Terminal residual ``v_B(x + h v_B(x), sigma + h) - v_B(x, sigma)``: B's velocity does not
    change along one straight step ``h`` (the next grid step, negative) from the end state.

    Attributes:
        model: the flow model.
        cond: prompt B's condition.
        sigma: sigma at the end of the transition.
        step: the signed step to the next grid sigma (``sigma_{k+H+1} - sigma_{k+H}``).
    """

    model: Dynamics
    cond: Any
    sigma: float
    step: float

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        v = self.model.velocity(x, self.sigma, self.cond)
        return self.model.velocity(x + self.step * v, self.sigma + self.step, self.cond) - v


@dataclass(frozen=True)
class TransitionWeights:
    """Weights of the transition cost (all >= 0).

    Attributes:
        terminal: w_T, on the terminal residual.
        effort: lambda, on ``sum |u_i|^2``.
        smoothness: gamma, on ``sum |u_{i+1} - u_i|^2``.
    """

    terminal: float = 1.0
    effort: float = 1e-3
    smoothness: float = 0.0


def transition_problem(
    model: Dynamics,
    grid: SigmaGrid,
    state: torch.Tensor,
    step: int,
    cond_a: Any,
    cond_b: Any,
    *,
    horizon: int,
    schedule: Schedule,
    terminal: NoiseAnchor | VelocityConsistency | None,
    weights: TransitionWeights = TransitionWeights(),
    switch_step: int | None = None,
) -> OptimalControlProblem:
    """The controlled transition from ``state`` at grid ``step`` over ``horizon`` Euler steps.

    The dynamics is ``BlendedDynamics(model, schedule, grid, switch_step)`` with condition
    ``(cond_a, cond_b)`` plus an additive control; ``terminal`` is evaluated at grid step
    ``step + horizon`` (build it with that sigma). ``switch_step`` is where the blend began
    (default ``step``; later when re-planning in the middle of a transition).
    """
    step = check_int("step", step, minimum=0)
    switch_step = step if switch_step is None else check_int("switch_step", switch_step, minimum=0)
    horizon = check_int("horizon", horizon, minimum=1)
    if step + horizon > grid.steps:
        raise InvalidArgumentError("horizon", f"step + horizon = {step + horizon} exceeds the grid's {grid.steps} steps")
    return OptimalControlProblem(
        dynamics=BlendedDynamics(model, schedule, grid, switch_step),
        grid=Grid(grid.values[step : step + horizon + 1]),
        x0=state,
        control="additive",
        cond=(cond_a, cond_b),
        terminal_residual=terminal,
        terminal_weight=weights.terminal,
        control_weight=weights.effort,
        control_rate_weight=weights.smoothness,
        method="euler",
    )
