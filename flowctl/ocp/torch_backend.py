"""Torch backend: single and multiple shooting as least squares.

For flow models at latent scale (and any torch dynamics). Single shooting: the controls are
the unknowns and the states a rollout. Multiple shooting: the node states ``x_1 .. x_N`` are
unknowns too, tied by continuity defects ``F(x_k, u_k) - x_{k+1} = 0``. Both are solved by
:func:`flowctl.ocp.least_squares.solve_least_squares` (Levenberg-Marquardt; bounds and defects
through an augmented Lagrangian): matrix-free on JVP/VJP products with conjugate gradients, so
memory stays linear in the state size, or, for few unknowns, on the Jacobian formed with a direct
solve (``LeastSquaresOptions.linear_solver``). Multiple shooting of a control system integrates
all intervals as one batch and forms that Jacobian from per-interval blocks. Model evaluations
are counted by kind: forward, jvp, vjp.
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
from .least_squares import LeastSquaresOptions, Residuals, _cat, _grad, solve_least_squares
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
        batch_intervals: in multiple shooting of a :class:`ControlSystem` (``control="input"``,
            ``x0`` of shape ``(n_state,)``, no ``counter``), integrate all intervals as one batch:
            each RK stage is one call of ``f`` (and of the stage residual) on the ``(N, n_state)``
            states and ``(N, n_control)`` inputs of every interval, with their times as an
            ``(N, 1)`` column. False: interval by interval, each call on one state at a 0-dim
            time (for an ``f`` that needs ``t`` as a number).
    """

    least_squares: LeastSquaresOptions = field(default_factory=LeastSquaresOptions)
    warm_start: bool = True
    batch_intervals: bool = True


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
    inputs the backend builds itself. In multiple shooting it then integrates all intervals as
    one batch (``TorchOptions.batch_intervals``), and the residuals carry their Jacobian, built
    from per-interval blocks (:meth:`_batched_jacobian`), for dense steps.
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
        batched = options.batch_intervals and transcription == "multiple" and isinstance(self._model, _CountedSystem)
        self._batch_steps = _substeps(problem) if batched and problem.x0.dim() == 1 else None  # all intervals'
        self._bounds = _bounds(problem)
        term = problem.terminal_residual
        self._terminal = term if isinstance(term, ShootingTerminal) else None
        self._linear_jacobian: tuple[torch.Tensor, torch.Tensor] | None = None  # of the penalties and bounds
        if self._batch_steps is not None:  # every stage's weights, stacked in stage order: (S N, 1)
            self._stage_weights = torch.cat([w for _, _, weights in self._batch_steps for w in weights])
        self._previous: SolveResult | None = None

    def rollout(self, x0: torch.Tensor, controls: torch.Tensor) -> torch.Tensor:
        """States at the N + 1 nodes under ``controls`` (N, *control_shape), from ``x0``."""
        return self._shoot(x0, controls, None, costs=False)[0]

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

    def _interval(
        self, x: torch.Tensor, u: torch.Tensor, steps: list[Step], costs: bool = True
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Integrate from ``x`` under control ``u`` over ``steps`` (one interval's, or all
        intervals' at once with ``x`` and ``u`` stacked); also, with ``costs``, the weighted
        stage-cost residuals."""
        p = self.problem
        if p.control == "input":
            f = lambda y, t: self._model.velocity(y, t, u)  # noqa: E731
        else:
            f = lambda y, t: self._model.velocity(y, t, p.cond) + u  # noqa: E731
        residuals = []
        for ta, tb, weights in steps:
            x, stages = rk_step(self._tableau, f, x, ta, tb)
            if costs and p.stage_residual is not None:
                residuals += [w * p.stage_residual(s.x, u, s.t) for w, s in zip(weights, stages)]
        return x, residuals

    def _batched_interval(self, x: torch.Tensor, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`_interval` on all intervals at once (``x`` and ``u`` stacked, interval k in row
        k): the end states and the weighted stage costs as one ``(N, S R)`` tensor, stage s's in
        columns ``s R .. (s + 1) R``. The stage residual is called once, on the ``S`` stages'
        states stacked (``(S N, .)``; its rows elementwise those of one call per stage): fewer
        operations to record and to differentiate."""
        p = self.problem
        f = lambda y, t: self._model.velocity(y, t, u)  # noqa: E731
        points = []
        for ta, tb, _ in self._batch_steps:
            x, stages = rk_step(self._tableau, f, x, ta, tb)
            points += stages
        if p.stage_residual is None:
            return x, x.new_zeros(x.shape[0], 0)
        rows, S = x.shape[0], len(points)
        r = p.stage_residual(torch.cat([s.x for s in points]), u.repeat(S, 1), torch.cat([s.t for s in points]))
        return x, (self._stage_weights * r).view(S, rows, -1).transpose(0, 1).reshape(rows, -1)

    def _shoot(
        self, x0: torch.Tensor, controls: torch.Tensor, nodes: torch.Tensor | None, costs: bool = True
    ) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
        """The states at the N + 1 grid nodes, the stage-cost residuals (with ``costs``) and the
        continuity defects, interval by interval. Single shooting (``nodes`` None) rolls the
        states out from ``x0``; multiple shooting integrates every interval from its start node."""
        if nodes is None:
            states, objective = [x0], []
            for k, steps in enumerate(self._steps):
                x_end, stage = self._interval(states[-1], controls[k], steps, costs)
                states.append(x_end)
                objective += stage
            return torch.stack(states), objective, []
        states = torch.cat([x0[None], nodes])
        objective, defects = [], []
        for k, steps in enumerate(self._steps):
            x_end, stage = self._interval(states[k], controls[k], steps)
            objective += stage
            defects.append(x_end - nodes[k])
        return states, objective, defects

    def _residuals(self, x0: torch.Tensor, z: list[torch.Tensor]) -> Residuals:
        """The residual blocks at the unknowns ``z``; ``aux`` is the states at the N + 1 nodes."""
        if self._batch_steps is not None:
            return self._batched_residuals(x0, z)
        controls = z[0]
        states, objective, defects = self._shoot(x0, controls, z[1] if self.transcription == "multiple" else None)
        terminal, terminal_defects = self._terminal_residuals(states[-1], z)
        bounds = _bound_violations(self._bounds, controls, states[1:])
        return Residuals(objective + self._penalties(controls) + terminal, defects + terminal_defects, bounds, aux=states)

    def _batched_residuals(self, x0: torch.Tensor, z: list[torch.Tensor]) -> Residuals:
        """:meth:`_residuals` with all intervals integrated as one batch. Their outputs come
        first in their blocks, interval k's in row k: the stage costs as one ``(N, R)`` tensor
        and the defects as one ``(N, n_state)`` tensor. The residuals carry their Jacobian."""
        controls, nodes = z[0], z[1]
        states = torch.cat([x0[None], nodes])
        calls = self.counter.by_kind["forward"]
        x_end, stage = self._batched_interval(states[:-1], controls)
        outputs = torch.cat([x_end, stage], dim=1)  # interval k's end state and stage costs in row k
        interval_calls = self.counter.by_kind["forward"] - calls
        terminal = self._terminal_residuals(states[-1], z)
        terminal_calls = self.counter.by_kind["forward"] - calls - interval_calls
        penalties, bounds = self._penalties(controls), _bound_violations(self._bounds, controls, states[1:])
        n_state = nodes.shape[1]

        def jacobian() -> torch.Tensor:
            return self._batched_jacobian(z, outputs, interval_calls, terminal, terminal_calls, penalties, bounds)

        return Residuals(
            [outputs[:, n_state:]] + penalties + terminal[0], [outputs[:, :n_state] - nodes] + terminal[1], bounds,
            aux=states, jacobian=jacobian,
        )

    def _batched_jacobian(
        self, z: list[torch.Tensor], outputs: torch.Tensor, interval_calls: float,
        terminal: tuple[list[torch.Tensor], list[torch.Tensor]], terminal_calls: float,
        penalties: list[torch.Tensor], bounds: list[torch.Tensor],
    ) -> torch.Tensor:
        """``J`` of :meth:`_batched_residuals`, rows in its order. The intervals' rows come from
        one reverse product per output component (:func:`_interval_jacobian`), the defects'
        ``-x_{k+1}`` added; the terminal residual's and defects' from one reverse product each;
        the penalties and bounds, linear in ``z``, have a constant Jacobian, formed on the first
        call. Each product counts as a VJP of every model call it goes through."""
        n = sum(t.numel() for t in z)
        (N, n_state), n_control = z[1].shape, z[0].shape[1]
        jac = _interval_jacobian(outputs, z[0], z[1], n)
        k, i = torch.arange(N, device=jac.device)[:, None], torch.arange(n_state, device=jac.device)
        jac[k, i, N * n_control + k * n_state + i] -= 1.0
        terminal_jac = [_rows_jacobian(rows, z, n) for rows in terminal]
        if self._linear_jacobian is None:
            self._linear_jacobian = _rows_jacobian(penalties, z, n), _rows_jacobian(bounds, z, n)
        products = outputs.shape[1] * interval_calls + sum(len(j) for j in terminal_jac) * terminal_calls
        self.counter.add(products, kind="vjp")
        penalty_jac, bound_jac = self._linear_jacobian
        return torch.cat([
            jac[:, n_state:].flatten(0, 1), penalty_jac, terminal_jac[0],
            jac[:, :n_state].flatten(0, 1), terminal_jac[1], bound_jac,
        ])

    def _penalties(self, controls: torch.Tensor) -> list[torch.Tensor]:
        """The weighted control and control-rate residuals."""
        p = self.problem
        out = []
        if p.control_weight > 0:
            out.append(math.sqrt(p.control_weight) * controls)
        if p.control_rate_weight > 0 and p.intervals > 1:
            out.append(math.sqrt(p.control_rate_weight) * (controls[1:] - controls[:-1]))
        return out

    def _terminal_residuals(self, x_n: torch.Tensor, z: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """The weighted terminal residual at the last state ``x_n``, and a
        :class:`ShootingTerminal`'s segment defects (its nodes: the unknowns after the controls,
        and the states in multiple shooting)."""
        p = self.problem
        if self._terminal is not None:
            first = 1 if self.transcription == "single" else 2
            r, defects = self._terminal.residuals(x_n, z[first:])
            return [math.sqrt(p.terminal_weight) * r], list(defects)
        if p.terminal_residual is not None and p.terminal_weight > 0:
            return [math.sqrt(p.terminal_weight) * p.terminal_residual(x_n)], []
        return [], []


class _CountedSystem:
    """A :class:`ControlSystem` as dynamics with the input as condition: ``f`` called directly,
    each call counted as one evaluation."""

    def __init__(self, system: ControlSystem, counter: NFECounter):
        self.system, self.counter = system, counter

    def velocity(self, x: torch.Tensor, t: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        self.counter.add(1)
        return self.system.f(x, u, t)


Step = tuple[torch.Tensor, torch.Tensor, list]
"""One integrator step: ``(start time, end time, weights)``, ``weights`` the stage costs'
factors ``sqrt(b_s |step|)``."""


def _substeps(p: OptimalControlProblem, k: int | None = None) -> list[Step]:
    """Interval k's integrator steps, times 0-dim tensors and weights floats; k None: those of
    all intervals at once, times and weights ``(N, 1)`` columns (weights in ``x0``'s dtype)."""
    b = get_tableau(p.method).b
    t = p.grid.values
    if k is not None:
        times = substep_times(t[k], t[k + 1], p.substeps)
        return [(ta, tb, [math.sqrt(b_s * abs(float(tb - ta))) for b_s in b]) for ta, tb in zip(times[:-1], times[1:])]
    times = substep_times(t[:-1, None], t[1:, None], p.substeps)
    return [(ta, tb, [(b_s * (tb - ta).abs()).sqrt().to(p.x0.dtype) for b_s in b]) for ta, tb in zip(times[:-1], times[1:])]


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


def _interval_jacobian(outputs: torch.Tensor, controls: torch.Tensor, nodes: torch.Tensor, n: int) -> torch.Tensor:
    """The Jacobian ``(N, C, n)`` of ``outputs`` ``(N, C)`` in the unknowns flattened (the
    controls, then the nodes, then any others). Row k is interval k's, which depends only on its
    control ``controls[k]`` and start node (``nodes[k - 1]``; interval 0 starts at the fixed x0).

    One reverse product per output component c, seeded in every interval at once, in one
    vectorised pass: no two intervals share an unknown, so the gradient's entries for interval k
    are its row c.
    """
    N, C = outputs.shape
    seeds = torch.eye(C, dtype=outputs.dtype, device=outputs.device)[:, None, :].expand(C, N, C)
    d_u, d_x = (g.transpose(0, 1) for g in _grad([outputs], [controls, nodes], [seeds], batch=C))
    n_control, n_state = controls.shape[1], nodes.shape[1]
    jac = outputs.new_zeros(N, C, n)
    k = torch.arange(N, device=outputs.device)
    jac[..., : N * n_control].unflatten(-1, (N, n_control))[k, :, k] = d_u
    jac[1:, :, N * n_control : N * (n_control + n_state)].unflatten(-1, (N, n_state))[k[:-1], :, k[:-1]] = d_x[:-1]
    return jac


def _rows_jacobian(rows: list[torch.Tensor], z: list[torch.Tensor], n: int) -> torch.Tensor:
    """The Jacobian ``(m, n)`` of ``rows`` (flattened and concatenated) in ``z``: one reverse
    product per row, in one vectorised pass."""
    if not rows:
        return z[0].new_zeros(0, n)
    r = _cat(rows)
    m = r.numel()
    return _cat(_grad([r], z, [torch.eye(m, dtype=r.dtype, device=r.device)], batch=m), (m,))
