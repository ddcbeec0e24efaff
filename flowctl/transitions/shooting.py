"""Strategies that plan the transition: single or multiple shooting, and shooting + MPC.

Both solve DESIGN.md's transition problem (:func:`flowctl.ocp.transition.transition_problem`)
over the request's horizon with :class:`flowctl.ocp.TorchShooting`, execute the planned controls,
then run prompt B alone to the end. :class:`ShootingMPC` is the seed's combined algorithm: the
shooting plan is executed under a linearising MPC that tracks the planned states, with a
re-plan whenever the state drifts from the plan. Sigma runs from 1 (noise) to 0 (data).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .._checks import check_int, check_real
from ..dynamics import BlendedDynamics, CountedDynamics, Dynamics, NFECounter, check_budget
from ..errors import BudgetExceededError, InvalidArgumentError, ShapeError, UnknownNameError
from ..jacobians import ColouredJacobian, DiagonalJacobian, JacobianEstimate
from ..mpc import MPCConfig, StateLayout, StructuredBackend, euler_linearisation
from ..ocp import LeastSquaresOptions, SolveResult, SolverError, SolveStatus, TorchOptions, TorchShooting
from ..ocp.problem import TRANSCRIPTIONS
from ..ocp.transition import NoiseAnchor, TransitionWeights, VelocityConsistency, transition_problem
from ..schedules import make_schedule
from .base import PhaseClock, TransitionRequest, TransitionResult, finish_with, merged, planning_counter

TERMINALS = ("noise", "velocity")
_FATAL = (SolveStatus.FAILED, SolveStatus.INFEASIBLE)


@dataclass(frozen=True)
class Shooting:
    """Plan the transition by shooting, then execute the plan.

    Attributes:
        transcription: "single" (controls are the unknowns) or "multiple" (segment states too,
            and the noise anchor's segment nodes).
        terminal: "noise" (:class:`NoiseAnchor`: B's flow from the end of the transition back to
            sigma = 1 returns the run's noise) or "velocity" (the seed's velocity consistency).
        segments: Euler segments of the noise anchor over [sigma_end, 1]. The anchor's own
            discretisation error bounds what it can recover: on the benchmark's flow 4 segments
            lose to a direct switch at high similarity and 16 beat it by 3-6 dB.
        schedule: the blend of the two prompts' fields over the horizon ("linear", "cosine",
            "sigmoid").
        weights: terminal, effort and smoothness weights of the transition cost.
        solver: Levenberg-Marquardt settings. A plan that stops at ``max_iterations`` is
            executed as reached (its status is reported); a failed one raises
            :class:`flowctl.ocp.SolverError`.
        budget: NFE-equivalents the plan may spend (a finite number >= 0; JVPs and VJPs weighed
            by the request's measured costs), a hard cap: a solve that would go past it stops
            before the call, and the transition continues as the direct switch with status
            "budget". The noise anchor integrates B's flow back to the noise, so one residual
            costs ``segments`` evaluations and one iteration several times that: at the default
            budget of one evaluation the plan stops before its first residual.
    """

    transcription: str = "single"
    terminal: str = "noise"
    segments: int = 16
    schedule: str = "sigmoid"
    weights: TransitionWeights = field(default_factory=lambda: TransitionWeights(terminal=1.0, effort=1e-4))
    solver: LeastSquaresOptions = field(default_factory=lambda: LeastSquaresOptions(max_iterations=10, constraint_tol=1e-4))
    budget: float = 1.0

    def __post_init__(self) -> None:
        check_budget("budget", self.budget)
        if self.transcription not in TRANSCRIPTIONS:
            raise UnknownNameError("transcription", self.transcription, list(TRANSCRIPTIONS))
        if self.terminal not in TERMINALS:
            raise UnknownNameError("terminal", self.terminal, list(TERMINALS))
        check_int("segments", self.segments, minimum=1)
        make_schedule(self.schedule, 1)

    @property
    def name(self) -> str:
        anchor = f"noise anchor, {self.segments} seg" if self.terminal == "noise" else "velocity consistency"
        return f"{self.transcription} shooting ({anchor})"

    def plan(self, request: TransitionRequest, model: Dynamics, counter: NFECounter, x: torch.Tensor, step: int, horizon: int) -> tuple[SolveResult, TorchShooting] | None:
        """Solve the transition from ``x`` at grid ``step`` over ``horizon`` steps (the blend
        started at the request's step). ``model`` must report to ``counter``, whose budget caps
        the solve: None when the solve would exceed it."""
        grid, end = request.grid, step + horizon
        sigma_end = float(grid.t(end))
        if self.terminal == "noise":
            terminal = NoiseAnchor(model, request.cond_b, request.noise, sigma_end, self.segments, self.transcription == "multiple")
        else:
            # at the end of the grid (sigma = 0) there is no next step: the residual vanishes
            next_step = float(grid.dt(end)) if end < grid.steps else 0.0
            terminal = VelocityConsistency(model, request.cond_b, sigma_end, next_step)
        problem = transition_problem(
            model, grid, x, step, request.cond_a, request.cond_b, horizon=horizon,
            schedule=make_schedule(self.schedule, request.horizon), terminal=terminal,
            weights=self.weights, switch_step=request.step,
        )
        solver = TorchShooting(problem, self.transcription, TorchOptions(self.solver, warm_start=False), counter=counter)
        try:
            result = solver.solve(raise_on_failure=False)
        except BudgetExceededError:
            return None
        if result.status in _FATAL:
            raise SolverError(result)
        return result, solver

    def execute(self, plan: SolveResult, solver: TorchShooting, x: torch.Tensor) -> torch.Tensor:
        """States under the planned controls (a multiple-shooting plan's nodes may carry defects,
        so its controls are rolled out; a single-shooting plan is a rollout already)."""
        if self.transcription == "single":
            return plan.states
        with torch.no_grad():
            return solver.rollout(x, plan.controls)

    def run(self, request: TransitionRequest) -> TransitionResult:
        counter, budgeted = NFECounter(), planning_counter(request, self.budget)
        model = CountedDynamics(request.model, counter)
        clock = PhaseClock()
        x = request.point.state
        with clock.phase("planning"):
            planned = self.plan(request, CountedDynamics(request.model, budgeted), budgeted, x, request.step, request.horizon)
        with clock.phase("continuation"):
            if planned is None:
                final = finish_with(model, x, request, request.step)
            else:
                plan, solver = planned
                final = finish_with(model, self.execute(plan, solver, x)[-1], request, request.step + request.horizon)
        status, message = (SolveStatus.BUDGET, _over_budget(self.budget)) if planned is None else (planned[0].status, planned[0].message)
        return TransitionResult(self.name, final, merged(counter, budgeted), clock.total, clock.phases, status, message)


@dataclass(frozen=True)
class ShootingMPC:
    """The seed's combined algorithm: a shooting plan executed under MPC, re-planned on drift.

    At each transition step the blended field is linearised at the current state with a
    structured Jacobian estimate of the image batch (B, C, H, W) (samples are independent, so one
    coloured estimate serves the whole batch), the QP tracks the plan's next ``horizon`` states
    with the deviation from the planned control as its input (:func:`flowctl.mpc.euler_linearisation`
    on the structured Riccati backend), and its first control is applied. If the state drifts from the plan by more than ``replan_tolerance`` (relative
    norm), the remaining transition is re-planned by shooting from the current state, at most
    ``max_replans`` times.

    Attributes:
        shooting: the planner.
        jacobian: a diagonal or block estimator of an image's Jacobian: ``DiagonalJacobian(radius=r)``
            (C (r+1)^2 JVPs; r = 0 for pixel-space fields) or ``ColouredJacobian(block=(p, p))``
            (per latent patch, for a patch-p transformer such as SD3's MMDiT).
        horizon: MPC prediction horizon Np (cut to the steps left in the transition).
        tracking: Q, weight on the distance to the planned states.
        effort: R, weight on the deviation from the planned control (> 0).
        replan_tolerance: relative drift ``|x - x_plan| / |x_plan|`` that triggers a re-plan.
        max_replans: re-plans at most (each costs a shooting solve).

    The shooting plan's ``budget`` caps everything the algorithm spends beyond its blended
    steps (plans, re-plans and the JVPs of each step's linearisation): a plan that does not fit
    continues as the direct switch, and once the budget is spent the remaining steps follow
    the plan's controls without MPC corrections; the status is then "budget".
    """

    shooting: Shooting = field(default_factory=Shooting)
    jacobian: DiagonalJacobian | ColouredJacobian = field(default_factory=lambda: DiagonalJacobian(radius=0))
    horizon: int = 2
    tracking: float = 1.0
    effort: float = 1e-3
    replan_tolerance: float = 0.05
    max_replans: int = 1

    def __post_init__(self) -> None:
        if not isinstance(self.jacobian, (DiagonalJacobian, ColouredJacobian)) or (
            isinstance(self.jacobian, ColouredJacobian) and self.jacobian.block is None
        ):
            raise InvalidArgumentError("jacobian", "expected DiagonalJacobian(radius=...) or ColouredJacobian(block=...)")
        check_int("horizon", self.horizon, minimum=1)
        check_real("tracking", self.tracking, nonnegative=True)
        check_real("effort", self.effort, positive=True)
        check_real("replan_tolerance", self.replan_tolerance, positive=True)
        check_int("max_replans", self.max_replans, minimum=0)

    @property
    def name(self) -> str:
        return f"shooting + MPC ({self.shooting.name})"

    def run(self, request: TransitionRequest) -> TransitionResult:
        counter, budgeted = NFECounter(), planning_counter(request, self.shooting.budget)
        model, planner = CountedDynamics(request.model, counter), CountedDynamics(request.model, budgeted)
        clock = PhaseClock()
        k, horizon, grid = request.step, request.horizon, request.grid
        schedule = make_schedule(self.shooting.schedule, horizon)
        conds = (request.cond_a, request.cond_b)
        counted = BlendedDynamics(model, schedule, grid, k)
        x = request.point.state
        with clock.phase("planning"):
            planned = self.shooting.plan(request, planner, budgeted, x, k, horizon)
            if planned is None:
                final = finish_with(model, x, request, k)
                return TransitionResult(self.name, final, merged(counter, budgeted), clock.total, clock.phases,
                                        SolveStatus.BUDGET, _over_budget(self.shooting.budget))
            plan, solver = planned
            ref = self.shooting.execute(plan, solver, x)
        controls, first, status, replans, message = plan.controls, 0, plan.status, 0, plan.message
        backends: dict[tuple, StructuredBackend] = {}
        controlling = True
        for i in range(horizon):
            j = k + i
            drift = float((x - ref[i - first]).norm()) / max(float(ref[i - first].norm()), 1e-30)
            if controlling and drift > self.replan_tolerance and replans < self.max_replans:
                replans += 1
                with clock.phase("planning"):
                    replanned = self.shooting.plan(request, planner, budgeted, x, j, horizon - i)
                if replanned is None:
                    controlling, status, message = False, SolveStatus.BUDGET, _over_budget(self.shooting.budget)
                else:
                    plan, solver = replanned
                    ref, controls, first, status, message = self.shooting.execute(plan, solver, x), plan.controls, i, plan.status, plan.message
            with clock.phase("control"):
                sigma, ds = float(grid.t(j)), grid.dt(j)
                v = counted.velocity(x, sigma, conds)
                du = torch.zeros_like(x)
                if controlling:
                    try:
                        jac = _image_batch_estimate(self.jacobian, _fixed_blend(request, sigma, counted.alpha(sigma)), x, budgeted)
                        du = self._correction(jac, v, x, ref, controls, i - first, j, min(self.horizon, horizon - i), grid, backends)
                    except BudgetExceededError:
                        controlling, status, message = False, SolveStatus.BUDGET, _over_budget(self.shooting.budget)
                x = x + ds * (v + controls[i - first] + du)
        with clock.phase("continuation"):
            final = finish_with(model, x, request, k + horizon)
        return TransitionResult(self.name, final, merged(counter, budgeted), clock.total, clock.phases, status, message)

    def _correction(self, jac, v, x, ref, controls, i, j, np_, grid, backends) -> torch.Tensor:
        """First control of the tracking QP: deviation from the planned control at step i."""
        n, layout = x.numel(), StateLayout.of(jac)
        key = (np_, jac.structure, layout.block_size)
        if key not in backends:
            config = MPCConfig(nx=n, nu=n, horizon=np_, q=self.tracking, r=self.effort)
            backends[key] = StructuredBackend(config, jac.structure, block_size=layout.block_size if jac.structure == "block" else None)
        ds = torch.stack([grid.dt(j + m) for m in range(np_)])
        lin = euler_linearisation(jac, ds, v, x, controls[i : i + np_], dtype=x.dtype)
        reference = layout.permute(ref[i + 1 : i + 1 + np_].reshape(np_, n))
        start = layout.permute(x.reshape(-1))
        solution = backends[key].solve(lin, start, reference, torch.zeros_like(start))
        return layout.unpermute(solution.controls[0]).reshape(x.shape).to(x)


def _over_budget(budget: float) -> str:
    return f"the plan did not fit the budget of {budget:g} NFE-equivalents: continued without it"


def _fixed_blend(request: TransitionRequest, sigma: float, alpha: float):
    """``x -> (1 - alpha) v_A(x) + alpha v_B(x)`` at one sigma (uncounted), and its sides."""
    model, a, b = request.model, request.cond_a, request.cond_b
    if alpha <= 0.0:
        return (lambda y: model.velocity(y, sigma, a)), 1
    if alpha >= 1.0:
        return (lambda y: model.velocity(y, sigma, b)), 1
    return (lambda y: torch.lerp(model.velocity(y, sigma, a), model.velocity(y, sigma, b), alpha)), 2


class _Scaled(NFECounter):
    """Counts ``sides`` model calls in ``counter`` for every call of a field with that many sides."""

    def __init__(self, counter: NFECounter, sides: int):
        super().__init__()
        self.counter, self.sides = counter, sides

    def add(self, n: float = 1.0, *, kind: str | None = None) -> None:
        self.counter.add(n * self.sides, kind=kind)
        super().add(n, kind=kind)


def _image_batch_estimate(estimator, field, x: torch.Tensor, counter: NFECounter) -> JacobianEstimate:
    """A diagonal or block estimate of a field on an image batch (B, C, H, W), in the batch's flat
    row-major order.

    The batch is laid out as one (C, B*H, W) image, so one coloured set of JVPs serves every
    sample (samples do not interact; H must be a multiple of a block's height). Each JVP of a
    blended field with two sides costs two model JVPs, counted in ``counter`` before it is made.
    """
    f, sides = field
    if x.dim() != 4:
        raise ShapeError("x", f"shooting + MPC linearises image batches (B, C, H, W), got {tuple(x.shape)}")
    b, c, h, w = x.shape
    to_image = lambda y: y.permute(1, 0, 2, 3).reshape(c, b * h, w)  # noqa: E731
    from_image = lambda z: z.reshape(c, b, h, w).permute(1, 0, 2, 3)  # noqa: E731
    estimate = estimator.estimate(lambda z: to_image(f(from_image(z))), to_image(x), _Scaled(counter, sides))
    # image position s holds batch entry order[s]
    order = to_image(torch.arange(x.numel(), device=x.device).reshape(x.shape)).reshape(-1)
    if estimate.structure == "block":
        return JacobianEstimate("block", estimate.data, estimate.cost, order[estimate.index])
    diagonal = torch.empty_like(estimate.data)
    diagonal[order] = estimate.data
    return JacobianEstimate("diagonal", diagonal, estimate.cost)
