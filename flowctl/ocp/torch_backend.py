"""Torch backend: single and multiple shooting as least squares.

For flow models at latent scale (and any torch dynamics). Single shooting: the controls are
the unknowns and the states a rollout. Multiple shooting: the node states ``x_1 .. x_N`` are
unknowns too, tied by continuity defects ``F(x_k, u_k) - x_{k+1} = 0``. Both are solved by
:func:`flowctl.ocp.least_squares.solve_least_squares` (Levenberg-Marquardt; bounds and defects
through an augmented Lagrangian): matrix-free on JVP/VJP products with conjugate gradients, so
memory stays linear in the state size, or, for few unknowns, on the Jacobian formed with a direct
solve (``LeastSquaresOptions.linear_solver``). Multiple shooting of a control system integrates
all intervals as one batch and, for dense steps, forms that Jacobian from per-interval blocks
propagated forward through the RK stages (sensitivities), without recording the pass. Model
evaluations are counted by kind: forward, jvp, vjp.
"""

from __future__ import annotations

import functools
import math
import time
from collections import Counter
from dataclasses import dataclass, field

import torch

from .._checks import check_tensor
from ..dynamics import CountedDynamics, NFECounter
from ..errors import InvalidArgumentError, ShapeError, UnknownNameError
from ..sampling import get_tableau, rk_step
from ..systems import ControlSystem
from ..status import SolveStatus, finish
from .least_squares import LeastSquaresOptions, Residuals, _cat, _grad, solve_least_squares
from .problem import TRANSCRIPTIONS, OptimalControlProblem, ShootingTerminal, SolveResult, substep_times

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
    from per-interval forward sensitivities (:meth:`_batched_jacobian`), for dense steps.
    """

    def __init__(
        self,
        problem: OptimalControlProblem,
        transcription: str = "multiple",
        options: TorchOptions = TorchOptions(),
        counter: NFECounter | None = None,
    ):
        if not isinstance(problem, OptimalControlProblem):
            raise InvalidArgumentError("problem", f"expected an OptimalControlProblem, got {type(problem).__name__}")
        if transcription not in TRANSCRIPTIONS:
            raise UnknownNameError("transcription", transcription, list(TRANSCRIPTIONS))
        if not isinstance(options, TorchOptions):
            raise InvalidArgumentError("options", f"expected TorchOptions, got {type(options).__name__}")
        if counter is not None and not isinstance(counter, NFECounter):
            raise InvalidArgumentError("counter", f"expected an NFECounter or None, got {type(counter).__name__}")
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
            self._step_times = [torch.cat(ts) for ts in zip(*(step[:2] for step in self._batch_steps))]  # (M N, 1) each
            self._interval_columns = _interval_columns(problem.intervals, problem.x0.shape[0], problem.control_shape[0]).to(problem.x0.device)
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
        # dense steps take the batched intervals' Jacobian from sensitivities: no pass to record
        record = self.options.least_squares.linear_solver_for(sum(t.numel() for t in z0)) == "cg"
        outcome = solve_least_squares(lambda z: self._residuals(x0, z, record), z0, self.options.least_squares, self.counter)
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

    def _batched_interval(
        self, x: torch.Tensor, u: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """:meth:`_interval` on all intervals at once (``x`` and ``u`` stacked, interval k in row
        k): the end states, the weighted stage costs as one ``(N, S R)`` tensor, stage s's in
        columns ``s R .. (s + 1) R``, and the ``S`` stages' states and times stacked (``(S N, .)``,
        stage s's in rows ``s N .. (s + 1) N``). The stage residual is called once, on those
        stacked states (its rows elementwise those of one call per stage): fewer operations."""
        p = self.problem
        f = lambda y, t: self._model.velocity(y, t, u)  # noqa: E731
        points = []
        for ta, tb, _ in self._batch_steps:
            x, stages = rk_step(self._tableau, f, x, ta, tb)
            points += stages
        rows, S = x.shape[0], len(points)
        ys, ts = torch.cat([s.x for s in points]), torch.cat([s.t for s in points])
        if p.stage_residual is None:
            return x, x.new_zeros(rows, 0), ys, ts
        r = p.stage_residual(ys, torch.cat([u] * S), ts)
        return x, (self._stage_weights * r).view(S, rows, -1).transpose(0, 1).reshape(rows, -1), ys, ts

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

    def _residuals(self, x0: torch.Tensor, z: list[torch.Tensor], record: bool = True) -> Residuals:
        """The residual blocks at the unknowns ``z``; ``aux`` is the states at the N + 1 nodes.
        ``record``: record the batched intervals' pass for Jacobian products; False where dense
        steps take their Jacobian from :meth:`_batched_jacobian` alone (the other paths always
        record)."""
        if self._batch_steps is not None:
            return self._batched_residuals(x0, z, record)
        controls = z[0]
        states, objective, defects = self._shoot(x0, controls, z[1] if self.transcription == "multiple" else None)
        terminal, terminal_defects = self._terminal_residuals(states[-1], z)
        bounds = _bound_violations(self._bounds, controls, states[1:])
        return Residuals(objective + self._penalties(controls) + terminal, defects + terminal_defects, bounds, aux=states)

    def _batched_residuals(self, x0: torch.Tensor, z: list[torch.Tensor], record: bool) -> Residuals:
        """:meth:`_residuals` with all intervals integrated as one batch (recorded only with
        ``record``). Their outputs come first in their blocks, interval k's in row k: the stage
        costs as one ``(N, S R)`` tensor and the defects as one ``(N, n_state)`` tensor. The
        residuals carry their Jacobian."""
        controls, nodes = z[0], z[1]
        states = torch.cat([x0[None], nodes])
        calls = self.counter.by_kind["forward"]
        with torch.set_grad_enabled(record):
            x_end, stage, ys, ts = self._batched_interval(states[:-1], controls)
        interval_calls = self.counter.by_kind["forward"] - calls
        terminal = self._terminal_residuals(states[-1], z)
        terminal_calls = self.counter.by_kind["forward"] - calls - interval_calls
        penalties, bounds = self._penalties(controls), _bound_violations(self._bounds, controls, states[1:])

        @functools.cache
        def linearised() -> tuple[torch.Tensor, list[torch.Tensor]]:  # once, for J and J_o'J_o
            blocks = self._interval_sensitivities(controls.detach(), ys.detach(), ts, stage.shape[1])
            return self._linearise(z, blocks, interval_calls, terminal, terminal_calls, penalties, bounds)

        return Residuals(
            [stage] + penalties + terminal[0], [x_end - nodes] + terminal[1], bounds, aux=states,
            jacobian=lambda: self._batched_jacobian(*linearised()),
            objective_gram=lambda: self._objective_gram(*linearised()),
        )

    def _interval_sensitivities(self, u: torch.Tensor, ys: torch.Tensor, ts: torch.Tensor, costs: int) -> torch.Tensor:
        """The derivatives of every interval's outputs, its end state and its ``costs`` weighted
        stage costs (as :meth:`_batched_interval` returns them), in its start state and control:
        ``(N, n_state + costs, n_state + n_control)``, interval k's in row k.

        Forward sensitivities: ``f``'s Jacobian at every stage point (``ys``, ``ts``; one call of
        ``f`` on them stacked, :func:`_rowwise_jacobians`) drives the variational equation
        ``d(x, u)' = [df/d(x, u); 0] d(x, u)``, integrated by the same RK steps, which is the
        exact derivative of the discrete map. Linear, it is integrated from the identity over
        every substep at once, and the substeps' maps are then chained; the stage costs' rows
        follow from the stage residual's Jacobian at the same points."""
        p = self.problem
        (N, n_control), n_state = u.shape, ys.shape[1]
        S, M, P = ys.shape[0] // N, len(self._batch_steps), n_state + n_control  # S = M x stages
        us = torch.cat([u] * S)
        outputs = [(self._model.system.f, n_state)] + ([] if p.stage_residual is None else [(p.stage_residual, costs // S)])
        f_jac, *r_jac = _rowwise_jacobians(outputs, ys, us, ts)  # rows (substep, stage, interval)
        slopes = f_jac.new_zeros(S // M, M, N, P, P)  # (stage, substep, interval): [df/d(x, u); 0]
        slopes[..., :n_state, :] = f_jac.view(M, S // M, N, n_state, P).transpose(0, 1)
        stage = iter(slopes.view(S // M, M * N, P, P))
        variational = lambda d, t: (next(stage) @ d.view(-1, P, P)).flatten(1)  # noqa: E731
        identity = torch.eye(P, dtype=u.dtype, device=u.device)
        maps, points = rk_step(self._tableau, variational, identity.expand(M * N, P, P).reshape(M * N, P * P), *self._step_times)
        starts = [identity.expand(N, P, P)]  # the derivative at each substep's start: the maps chained
        for step_map in maps.view(M, N, P, P):
            starts.append(step_map @ starts[-1])
        blocks = [starts[-1][:, :n_state]]
        if p.stage_residual is not None:
            at_stages = torch.stack([s.x for s in points]).view(S // M, M, N, P, P) @ torch.stack(starts[:-1])
            r_jac = r_jac[0].view(M, S // M, N, costs // S, P)
            d_costs = (self._stage_weights.view(M, S // M, N, 1, 1) * r_jac) @ at_stages.transpose(0, 1)
            blocks.append(d_costs.flatten(0, 1).transpose(0, 1).reshape(N, costs, P))
        return torch.cat(blocks, dim=1)

    def _linearise(
        self, z: list[torch.Tensor], blocks: torch.Tensor, interval_calls: float,
        terminal: tuple[list[torch.Tensor], list[torch.Tensor]], terminal_calls: float,
        penalties: list[torch.Tensor], bounds: list[torch.Tensor],
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The pieces of :meth:`_batched_residuals`'s ``J``: the intervals' sensitivity
        ``blocks`` (:meth:`_interval_sensitivities`), passed through, and the rows of the
        terminal residual and of its defects, from one reverse product each; the rows of the
        penalties and bounds, linear in ``z``, are formed on the first call and kept. Counted:
        ``f``'s Jacobian at the stage points as ``n_state`` VJPs of each of the pass's calls (one
        reverse product per state component, through a re-evaluation of ``f`` at the same points
        that they include, as a VJP's cost does); a reverse product as a VJP of every model call
        it goes through."""
        n, n_state = sum(t.numel() for t in z), z[1].shape[1]
        terminal_jac = [_rows_jacobian(rows, z, n) for rows in terminal]
        if self._linear_jacobian is None:
            self._linear_jacobian = _rows_jacobian(penalties, z, n), _rows_jacobian(bounds, z, n)
        self.counter.add(n_state * interval_calls + sum(len(j) for j in terminal_jac) * terminal_calls, kind="vjp")
        blocks[0, :, :n_state] = 0.0  # interval 0 starts at the fixed x0: these columns (see _interval_columns) add 0
        return blocks, terminal_jac

    def _batched_jacobian(self, blocks: torch.Tensor, terminal_jac: list[torch.Tensor]) -> torch.Tensor:
        """``J`` of :meth:`_batched_residuals`, rows in its order, from :meth:`_linearise`'s
        pieces: interval k's block in the rows of its outputs and the columns of its unknowns
        (:attr:`_interval_columns`), and the defects' ``-x_{k+1}``."""
        penalty_jac, bound_jac = self._linear_jacobian
        (N, C, _), n, n_state = blocks.shape, bound_jac.shape[1], self.problem.x0.shape[0]
        pieces = [N * (C - n_state), penalty_jac, terminal_jac[0], N * n_state, terminal_jac[1], bound_jac]  # in row order
        sizes = [p if isinstance(p, int) else len(p) for p in pieces]
        jac = blocks.new_zeros(sum(sizes), n)
        for part, piece in zip(jac.split(sizes), pieces):
            if not isinstance(piece, int):
                part.copy_(piece)
        defects = sum(sizes[:3]) + torch.arange(N * n_state, device=jac.device)
        rows = torch.cat([defects.view(N, n_state), torch.arange(N * (C - n_state), device=jac.device).view(N, -1)], dim=1)
        columns = self._interval_columns
        jac.index_put_((rows[:, :, None], columns[:, None, :]), blocks, accumulate=True)  # accumulate: see _linearise
        n_control = blocks.shape[2] - n_state
        jac[defects, N * n_control + torch.arange(N * n_state, device=jac.device)] = -1.0
        return jac

    def _objective_gram(self, blocks: torch.Tensor, terminal_jac: list[torch.Tensor]) -> torch.Tensor:
        """``J_o'J_o`` of the objective rows of :meth:`_batched_jacobian`'s ``J`` (stage costs,
        penalties, terminal residual): a sum over those row groups, the stage costs' from each
        interval's ``P x P`` product of its block, added at its unknowns."""
        penalty_jac, _ = self._linear_jacobian
        costs = blocks[:, self.problem.x0.shape[0]:]
        gram = penalty_jac.T @ penalty_jac + terminal_jac[0].T @ terminal_jac[0]
        columns = self._interval_columns
        return gram.index_put_((columns[:, :, None], columns[:, None, :]), costs.transpose(1, 2) @ costs, accumulate=True)

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


def _interval_columns(N: int, n_state: int, n_control: int) -> torch.Tensor:
    """``(N, n_state + n_control)``: the columns of interval k's start state and control among the
    unknowns flattened (the controls, then the nodes, then any others): its start node is
    ``nodes[k - 1]``, its control ``controls[k]``. Interval 0 starts at the fixed x0, which has no
    column: its state entries point at column 0 and must carry zeros (added, not written)."""
    k, i = torch.arange(N)[:, None], torch.arange(n_state)
    nodes = torch.where(k > 0, N * n_control + (k - 1) * n_state + i, 0)
    return torch.cat([nodes, k * n_control + torch.arange(n_control)], dim=1)


def _rowwise_jacobians(fns: list[tuple], x: torch.Tensor, u: torch.Tensor, t: torch.Tensor) -> list[torch.Tensor]:
    """For each ``(fn, m)``: ``d fn(x, u, t)[i] / d(x[i], u[i])`` at every row i,
    ``(rows, m, n_x + n_u)``, for an ``fn`` with ``m`` outputs whose rows depend only on the same
    rows of its arguments (``f``, a stage residual). One call of each on ``m`` copies of the rows,
    copy j seeded with the j-th unit vector, and one reverse pass for all."""
    rows, leaves, outputs, seeds = x.shape[0], [], [], []
    with torch.enable_grad():
        for fn, m in fns:
            xs, us = (torch.cat([a] * m).requires_grad_(True) for a in (x, u))
            outputs.append(fn(xs, us, torch.cat([t] * m)))
            seeds.append(torch.eye(m, dtype=x.dtype, device=x.device).repeat_interleave(rows, dim=0))
            leaves += [xs, us]
        grads = _grad(outputs, leaves, seeds)
    return [torch.cat(grads[2 * j : 2 * j + 2], dim=1).view(m, rows, -1).transpose(0, 1) for j, (_, m) in enumerate(fns)]


def _rows_jacobian(rows: list[torch.Tensor], z: list[torch.Tensor], n: int) -> torch.Tensor:
    """The Jacobian ``(m, n)`` of ``rows`` (flattened and concatenated) in ``z``: one reverse
    product per row, in one vectorised pass."""
    if not rows:
        return z[0].new_zeros(0, n)
    r = _cat(rows)
    m = r.numel()
    return _cat(_grad([r], z, [torch.eye(m, dtype=r.dtype, device=r.device)], batch=m), (m,))
