"""Torch backend: single and multiple shooting as least squares.

For flow models at latent scale (and any torch dynamics). Single shooting: the controls are
the unknowns and the states a rollout. Multiple shooting: the node states ``x_1 .. x_N`` are
unknowns too, tied by continuity defects ``F(x_k, u_k) - x_{k+1} = 0``. Both are solved by
:func:`flowctl.ocp.least_squares.solve_least_squares` (Levenberg-Marquardt; bounds and defects
through an augmented Lagrangian): matrix-free on JVP/VJP products with conjugate gradients, so
memory stays linear in the state size, or, for few unknowns, on the Jacobian formed with a direct
solve (``LeastSquaresOptions.linear_solver``). Model evaluations are counted by kind: forward,
jvp, vjp.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from dataclasses import dataclass, field

import torch

from .._checks import check_tensor
from ..dynamics import CountedDynamics, NFECounter
from ..errors import ShapeError, UnknownNameError
from ..sampling import get_tableau, rk_step
from ..systems import ControlSystem
from .least_squares import LeastSquaresOptions, Residuals, solve_least_squares
from .problem import TRANSCRIPTIONS, OptimalControlProblem, ShootingTerminal, SolveResult, SolveStatus, finish, substep_times

_STATUS = {
    "solved": SolveStatus.SOLVED,
    "max_iterations": SolveStatus.MAX_ITERATIONS,
    "nfe_limit": SolveStatus.NFE_LIMIT,
    "failed": SolveStatus.FAILED,
}


@dataclass(frozen=True)
class TorchOptions:
    """Settings of :class:`TorchShooting`.

    Attributes:
        least_squares: the Levenberg-Marquardt / augmented-Lagrangian settings (tolerances,
            the linear solver, dense or CG, and the bound on model evaluations).
        warm_start: start the next solve from the previous solution.
    """

    least_squares: LeastSquaresOptions = field(default_factory=LeastSquaresOptions)
    warm_start: bool = True


class TorchShooting:
    """Single or multiple shooting of an :class:`OptimalControlProblem` in torch.

    Args:
        problem: the problem; any torch dynamics, "input" or "additive" control.
        transcription: "single" or "multiple".
        options: solver settings.
        counter: the counter the problem's model(s) already report to (wrap the *model* in
            :class:`CountedDynamics` with it, so that a blended step counts two evaluations and
            model calls inside the terminal residual count too). None: the backend counts calls
            of ``problem.dynamics`` itself.

    A terminal residual with ``initial_nodes``/``residuals`` methods (a :class:`ShootingTerminal`,
    such as :class:`flowctl.ocp.transition.NoiseAnchor` with several segments) contributes its
    segment nodes as unknowns and their continuity defects as constraints.

    With ``control="input"`` and no ``counter``, the backend calls the :class:`ControlSystem`'s
    ``f`` directly (its definition, which the CasADi backend calls too) and counts each call:
    ``velocity``'s per-call argument checks, each a host sync, are redundant on the states and
    inputs the backend builds itself.
    """

    def __init__(
        self,
        problem: OptimalControlProblem,
        transcription: str = "multiple",
        options: TorchOptions = TorchOptions(),
        counter: NFECounter | None = None,
    ):
        if transcription not in TRANSCRIPTIONS:
            raise UnknownNameError("transcription", transcription, list(TRANSCRIPTIONS))
        self.problem = problem
        self.transcription = transcription
        self.options = options
        self.counter = counter if counter is not None else NFECounter()
        if counter is not None:
            self._model = problem.dynamics
        elif problem.control == "input":
            n_state = problem.dynamics.n_state
            if problem.x0.shape[-1] != n_state:
                raise ShapeError("x0", f"expected shape (..., {n_state}), got {tuple(problem.x0.shape)}")
            self._model = _CountedSystem(problem.dynamics, self.counter)
        else:
            self._model = CountedDynamics(problem.dynamics, self.counter)
        self._tableau = get_tableau(problem.method)
        self._steps = [_substeps(problem, k) for k in range(problem.intervals)]
        self._bounds = _bounds(problem)
        term = problem.terminal_residual
        self._terminal = term if isinstance(term, ShootingTerminal) else None
        self._previous: SolveResult | None = None

    def rollout(self, x0: torch.Tensor, controls: torch.Tensor) -> torch.Tensor:
        """States at the N + 1 nodes under ``controls`` (N, *control_shape), from ``x0``."""
        states = [x0]
        for k in range(self.problem.intervals):
            states.append(self._interval(states[-1], controls[k], k)[0])
        return torch.stack(states)

    def solve(self, x0: torch.Tensor | None = None, *, raise_on_failure: bool = True) -> SolveResult:
        """Solve from ``x0`` (default: the problem's); warm-started from the previous solve."""
        p = self.problem
        x0 = p.x0 if x0 is None else check_tensor("x0", x0)
        if x0.shape != p.x0.shape:
            raise ShapeError("x0", f"expected shape {tuple(p.x0.shape)}, got {tuple(x0.shape)}")
        counted_before = Counter(self.counter.by_kind)
        start = time.perf_counter()
        controls = self._initial_controls(x0)
        z0 = [controls]
        if self.transcription == "multiple" or self._terminal is not None:  # a first guess of the states
            with torch.no_grad():
                states = self._previous.states if self._warm else self.rollout(x0, controls)
                if self.transcription == "multiple":
                    z0.append(states[1:].clone())
                if self._terminal is not None:
                    z0 += list(self._terminal.initial_nodes(states[-1]))
        outcome = solve_least_squares(lambda z: self._residuals(x0, z), z0, self.options.least_squares, self.counter)
        result = SolveResult(
            status=_STATUS[outcome.status],
            controls=outcome.z[0],
            states=outcome.aux.detach(),
            objective=outcome.objective,
            constraint_violation=outcome.violation,
            iterations=outcome.iterations,
            nfe=dict(self.counter.by_kind - counted_before),
            wall_time=time.perf_counter() - start,
            message=outcome.message,
        )
        if result.success:
            self._previous = result
        return finish(result, raise_on_failure)

    @property
    def _warm(self) -> bool:
        return self.options.warm_start and self._previous is not None

    def _initial_controls(self, x0: torch.Tensor) -> torch.Tensor:
        if self._warm:
            return self._previous.controls.clone()
        return torch.zeros((self.problem.intervals, *self.problem.control_shape), dtype=x0.dtype, device=x0.device)

    def _interval(self, x: torch.Tensor, u: torch.Tensor, k: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Integrate interval k under control u; also the weighted stage-cost residuals."""
        p = self.problem
        if p.control == "input":
            f = lambda y, t: self._model.velocity(y, t, u)  # noqa: E731
        else:
            f = lambda y, t: self._model.velocity(y, t, p.cond) + u  # noqa: E731
        residuals = []
        for ta, tb, h in self._steps[k]:
            x, stages = rk_step(self._tableau, f, x, ta, tb)
            if p.stage_residual is not None:
                residuals += [math.sqrt(s.weight * h) * p.stage_residual(s.x, u, s.t) for s in stages]
        return x, residuals

    def _residuals(self, x0: torch.Tensor, z: list[torch.Tensor]) -> Residuals:
        """The residual blocks at the unknowns ``z``; ``aux`` is the states at the N + 1 nodes."""
        p = self.problem
        controls = z[0]
        objective: list[torch.Tensor] = []
        defects: list[torch.Tensor] = []
        nodes = [x0]
        for k in range(p.intervals):
            x_end, stage = self._interval(nodes[-1], controls[k], k)
            objective += stage
            if self.transcription == "single":
                nodes.append(x_end)
            else:
                nodes.append(z[1][k])
                defects.append(x_end - z[1][k])
        if p.control_weight > 0:
            objective.append(math.sqrt(p.control_weight) * controls)
        if p.control_rate_weight > 0 and p.intervals > 1:
            objective.append(math.sqrt(p.control_rate_weight) * (controls[1:] - controls[:-1]))
        if self._terminal is not None:
            first = 1 if self.transcription == "single" else 2
            r, terminal_defects = self._terminal.residuals(nodes[-1], z[first:])
            objective.append(math.sqrt(p.terminal_weight) * r)
            defects += terminal_defects
        elif p.terminal_residual is not None and p.terminal_weight > 0:
            objective.append(math.sqrt(p.terminal_weight) * p.terminal_residual(nodes[-1]))
        states = torch.stack(nodes)
        return Residuals(objective, defects, _bound_violations(self._bounds, controls, states[1:]), aux=states)


class _CountedSystem:
    """A :class:`ControlSystem` as dynamics with the input as condition: ``f`` called directly,
    each call counted as one evaluation."""

    def __init__(self, system: ControlSystem, counter: NFECounter):
        self.system, self.counter = system, counter

    def velocity(self, x: torch.Tensor, t: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        self.counter.add(1)
        return self.system.f(x, u, t)


def _substeps(p: OptimalControlProblem, k: int) -> list[tuple[torch.Tensor, torch.Tensor, float]]:
    """Interval k's integrator steps as ``(start time, end time, |step|)``; times are 0-dim tensors."""
    times = substep_times(p.grid.t(k), p.grid.t(k + 1), p.substeps)
    return [(ta, tb, abs(float(tb - ta))) for ta, tb in zip(times[:-1], times[1:])]


def _bounds(p: OptimalControlProblem) -> list[tuple[int, float, torch.Tensor, torch.Tensor]]:
    """The finite bounds as ``(which, sign, index, value)``: ``which`` is 0 for the controls and
    1 for the states, ``index`` the flat components bounded, and ``sign * (v[index] - value) <= 0``."""
    out = []
    sides = ((p.u_lower, p.u_upper, p.control_shape), (p.x_lower, p.x_upper, p.x0.shape))
    for which, (lower, upper, shape) in enumerate(sides):
        for bound, sign in ((lower, -1.0), (upper, 1.0)):
            if bound is None:
                continue
            b = torch.as_tensor(bound, dtype=p.x0.dtype, device=p.x0.device).expand(shape).reshape(-1)
            index = torch.isfinite(b).nonzero().squeeze(1)
            if index.numel():
                out.append((which, sign, index, b[index]))
    return out


def _bound_violations(bounds: list, controls: torch.Tensor, states: torch.Tensor) -> list[torch.Tensor]:
    """``g <= 0`` for every finite bound: ``lower - v`` and ``v - upper``, one row per node."""
    values = (controls.flatten(1), states.flatten(1))
    return [sign * (values[which][:, index] - b) for which, sign, index, b in bounds]
