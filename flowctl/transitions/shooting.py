"""Strategies that plan the transition: single or multiple shooting, and shooting + MPC.

Both solve the transition problem (:func:`flowctl.ocp.transition.transition_problem`, documented
in docs/shooting.md) over the request's horizon with :class:`flowctl.ocp.TorchShooting`, execute
the planned controls, then run prompt B alone to the end. :class:`ShootingMPC` is the seed's
combined algorithm: the shooting plan is executed under a linearising MPC that tracks the
planned states, with a re-plan whenever the state drifts from the plan. Sigma runs from 1
(noise) to 0 (data).

Two models to plan on: "surrogate" (the default) shoots on the straight-flow surrogate of
:mod:`flowctl.transitions.surrogate`, calibrated by one secant evaluation of B, and executes with
B's true field (one evaluation a step, as the direct switch) and A's surrogate one; its MPC
linearises with the surrogate's Jacobian (real-time iteration: one linearisation and one QP a
step, no JVP). "exact" shoots on the model itself, as the seed wrote it: the noise anchor then
integrates B back to the noise, which costs more than a generation.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch

from .._checks import check_int, check_real
from ..dynamics import BlendedDynamics, CountedDynamics, Dynamics, NFECounter, check_budget, derivative_mode
from ..errors import BudgetExceededError, InvalidArgumentError, ShapeError, UnknownNameError
from ..jacobians import ColouredJacobian, DiagonalJacobian, JacobianEstimate
from ..mpc import MPCConfig, StateLayout, StructuredBackend, euler_linearisation
from ..errors import SolverError
from ..ocp import LeastSquaresOptions, SolveResult, TorchOptions, TorchShooting
from ..status import SolveStatus
from ..ocp.problem import TRANSCRIPTIONS
from ..ocp.transition import NoiseAnchor, TransitionWeights, VelocityConsistency, transition_problem
from ..sampling import EULER, rk_step
from ..schedules import BLENDS, make_schedule
from .base import PhaseClock, TransitionRequest, TransitionResult, check_request, finish_with, merged, planning_counter
from .secant import SecantCorrection, SecantStep
from .surrogate import A as SURROGATE_A
from .surrogate import B as SURROGATE_B
from .surrogate import MixedFlow, StraightFlows

TERMINALS = ("noise", "velocity")
MODELS = ("surrogate", "exact")
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
        budget: NFE-equivalents the planner may spend beyond its execution (a finite number
            >= 0; JVPs and VJPs weighed by the request's measured costs), a hard cap: a call
            that would go past it is not made and the status is "budget". On the surrogate the
            plan costs the secant evaluation (1) and no more; below it the surrogate's B field is
            B's straight flow through A's state. On the exact model the noise anchor integrates
            B back to the noise (``segments`` evaluations a residual, several residuals an
            iteration): a plan that does not fit continues as the direct switch.
        model: "surrogate" (plan on the straight-flow surrogate; execute with B's true field
            and A's surrogate one: the direct switch's evaluations plus the secant's one) or
            "exact" (plan and execute on the model; blended steps cost two evaluations).
    """

    transcription: str = "single"
    terminal: str = "noise"
    segments: int = 16
    schedule: str = "sigmoid"
    weights: TransitionWeights = field(default_factory=lambda: TransitionWeights(terminal=1.0, effort=1e-4))
    solver: LeastSquaresOptions = field(default_factory=lambda: LeastSquaresOptions(max_iterations=10, constraint_tol=1e-4))
    budget: float = 1.0
    model: str = "surrogate"

    def __post_init__(self) -> None:
        check_budget("budget", self.budget)
        if self.model not in MODELS:
            raise UnknownNameError("model", self.model, list(MODELS))
        if self.transcription not in TRANSCRIPTIONS:
            raise UnknownNameError("transcription", self.transcription, list(TRANSCRIPTIONS))
        if self.terminal not in TERMINALS:
            raise UnknownNameError("terminal", self.terminal, list(TERMINALS))
        check_int("segments", self.segments, minimum=1)
        if self.schedule not in BLENDS:
            raise UnknownNameError("schedule", self.schedule, list(BLENDS))
        if not isinstance(self.weights, TransitionWeights):
            raise InvalidArgumentError("weights", f"expected TransitionWeights, got {type(self.weights).__name__}")
        for name in ("terminal", "effort", "smoothness"):
            check_real(f"weights.{name}", getattr(self.weights, name), nonnegative=True)
        if not isinstance(self.solver, LeastSquaresOptions):
            raise InvalidArgumentError("solver", f"expected LeastSquaresOptions, got {type(self.solver).__name__}")

    @property
    def differentiates(self) -> bool:
        """Whether it takes derivatives of the model (JVPs, VJPs): only on the exact model."""
        return self.model == "exact"

    @property
    def name(self) -> str:
        anchor = f"noise anchor, {self.segments} seg" if self.terminal == "noise" else "velocity consistency"
        on = ", exact model" if self.model == "exact" else ""
        return f"{self.transcription} shooting ({anchor}{on})"

    def plan(self, request: TransitionRequest, field: _Field, x: torch.Tensor, step: int, horizon: int) -> tuple[SolveResult, TorchShooting] | None:
        """Solve the transition from ``x`` at grid ``step`` over ``horizon`` steps (the blend
        started at the request's step) on ``field``; None when the solve would exceed the
        budget of the field's counter."""
        grid, end = request.grid, step + horizon
        sigma_end, model, counter = float(grid.t(end)), field.model, field.counter
        if self.terminal == "noise":
            terminal = NoiseAnchor(model, field.cond_b, field.noise, sigma_end, self.segments, self.transcription == "multiple")
        else:
            # at the end of the grid (sigma = 0) there is no next step: the residual vanishes
            next_step = float(grid.dt(end)) if end < grid.steps else 0.0
            terminal = VelocityConsistency(model, field.cond_b, sigma_end, next_step)
        problem = transition_problem(
            model, grid, x, step, field.cond_a, field.cond_b, horizon=horizon,
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

    def run(self, request: TransitionRequest) -> TransitionResult:
        with _derivatives(self, check_request(request)):
            return self._run(request)

    def _run(self, request: TransitionRequest) -> TransitionResult:
        clock = PhaseClock()
        with clock.phase("planning"):
            fields = _Fields.of(self, request)
            planned = self.plan(request, fields.planning, request.point.state, request.step, request.horizon)
        with clock.phase("continuation"):
            if planned is None:
                final = finish_with(fields.counted, request.point.state, request, request.step)
            else:
                if self.model == "exact" and self.transcription == "single":
                    end = planned[0].states[-1]  # the plan is a rollout of the model already
                else:
                    end = _rollout(fields.execution, fields.conds, request, planned[0].controls, request.step)
                final = finish_with(fields.counted, end, request, request.step + request.horizon)
        status, message = fields.outcome(planned, self.budget)
        return TransitionResult(self.name, final, fields.nfe, clock.total, clock.phases, status, message, fields.fallbacks)


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

    On the surrogate (the shooting's default ``model``), this is a real-time iteration: plans
    and re-plans are free, each step makes one model evaluation (B's, as the direct switch) and
    linearises with the surrogate's Jacobian ``I / sigma`` (``jacobian`` is not used), one QP a
    step; the whole transition costs the direct switch's evaluations plus the secant's one. On
    the exact model the shooting plan's ``budget`` caps everything spent beyond the blended
    steps (plans, re-plans, each step's JVPs): a plan that does not fit continues as the direct
    switch, and once the budget is spent the remaining steps follow the plan's controls without
    MPC corrections; the status is then "budget".
    """

    shooting: Shooting = field(default_factory=Shooting)
    jacobian: DiagonalJacobian | ColouredJacobian = field(default_factory=lambda: DiagonalJacobian(radius=0))
    horizon: int = 2
    tracking: float = 1.0
    effort: float = 1e-3
    replan_tolerance: float = 0.05
    max_replans: int = 1

    def __post_init__(self) -> None:
        if not isinstance(self.shooting, Shooting):
            raise InvalidArgumentError("shooting", f"expected a Shooting planner, got {type(self.shooting).__name__}")
        check_image_jacobian("jacobian", self.jacobian)
        check_int("horizon", self.horizon, minimum=1)
        check_real("tracking", self.tracking, nonnegative=True)
        check_real("effort", self.effort, positive=True)
        check_real("replan_tolerance", self.replan_tolerance, positive=True)
        check_int("max_replans", self.max_replans, minimum=0)

    @property
    def differentiates(self) -> bool:
        """Whether it takes derivatives of the model: only on the exact model."""
        return self.shooting.differentiates

    @property
    def name(self) -> str:
        return f"shooting + MPC ({self.shooting.name})"

    def run(self, request: TransitionRequest) -> TransitionResult:
        x = check_request(request).point.state
        if self.differentiates:  # the exact model's linearisation estimates image batches
            _check_image_batch(x, self.jacobian)
        with _derivatives(self, request):
            return self._run(request)

    def _run(self, request: TransitionRequest) -> TransitionResult:
        x = request.point.state
        clock = PhaseClock()
        k, horizon, grid = request.step, request.horizon, request.grid
        with clock.phase("planning"):
            fields = _Fields.of(self.shooting, request)
            planned = self.shooting.plan(request, fields.planning, x, k, horizon)
            if planned is None:
                final = finish_with(fields.counted, x, request, k)
                status, message = fields.outcome(None, self.shooting.budget)
                return TransitionResult(self.name, final, fields.nfe, clock.total, clock.phases, status, message)
            plan, solver = planned
            ref = _planned_states(plan, solver, x)
        status, message = fields.outcome(planned, self.shooting.budget)
        controls, first, replans, controlling = plan.controls, 0, 0, True
        backends: dict[tuple, StructuredBackend] = {}
        for i in range(horizon):
            j = k + i
            if controlling and replans < self.max_replans and self._drifted(x, ref[i - first]):
                replans += 1
                with clock.phase("planning"):
                    replanned = self.shooting.plan(request, fields.planning, x, j, horizon - i)
                if replanned is None:
                    controlling, status, message = False, SolveStatus.BUDGET, _over_budget(self.shooting.budget)
                else:
                    plan, solver = replanned
                    ref, controls, first, status, message = _planned_states(plan, solver, x), plan.controls, i, plan.status, plan.message
            with clock.phase("control"):
                sigma, ds = float(grid.t(j)), grid.dt(j)
                v = fields.execution.velocity(x, sigma, fields.conds)
                du = torch.zeros_like(x)
                if controlling:
                    try:
                        jac, np_ = fields.linearisation(self.jacobian, request, x, sigma), min(self.horizon, horizon - i)
                        backend = self._backend(backends, jac, np_, x.numel())
                        du = self._correction(jac, v, x, ref, controls, i - first, j, np_, grid, backend)
                    except BudgetExceededError:
                        controlling, status, message = False, SolveStatus.BUDGET, _over_budget(self.shooting.budget)
                x = x + ds * (v + controls[i - first] + du)
        with clock.phase("continuation"):
            final = finish_with(fields.counted, x, request, k + horizon)
        return TransitionResult(self.name, final, fields.nfe, clock.total, clock.phases, status, message, fields.fallbacks)

    def _backend(self, backends: dict, jac: JacobianEstimate, np_: int, n: int) -> StructuredBackend:
        """The structured QP backend for a horizon and a Jacobian's structure, built once a run."""
        layout = StateLayout.of(jac)
        key = (np_, jac.structure, layout.block_size)
        if key not in backends:
            config = MPCConfig(nx=n, nu=n, horizon=np_, q=self.tracking, r=self.effort)
            backends[key] = StructuredBackend(config, jac.structure, block_size=layout.block_size if jac.structure == "block" else None)
        return backends[key]

    def _drifted(self, x: torch.Tensor, planned: torch.Tensor) -> bool:
        """Whether ``|x - x_plan| / |x_plan|`` exceeds the re-plan tolerance (one host
        synchronisation; asked only while a re-plan is left)."""
        return bool((x - planned).norm() > self.replan_tolerance * planned.norm().clamp_min(1e-30))

    def _correction(self, jac, v, x, ref, controls, i, j, np_, grid, backend: StructuredBackend) -> torch.Tensor:
        """First control of the tracking QP: deviation from the planned control at step i. Its
        data were checked where the transition started: no host synchronisation here."""
        n, layout = x.numel(), StateLayout.of(jac)
        ds = torch.stack([grid.dt(j + m) for m in range(np_)])
        lin = euler_linearisation(jac, ds, v, x, controls[i : i + np_], dtype=x.dtype, validate=False)
        reference = layout.permute(ref[i + 1 : i + 1 + np_].reshape(np_, n))
        start = layout.permute(x.reshape(-1))
        solution = backend.solve(lin, start, reference, torch.zeros_like(start), validate=False)
        return layout.unpermute(solution.controls[0]).reshape(x.shape).to(x)


@dataclass(frozen=True, eq=False)
class _Field:
    """What a plan is solved on: a field counted in ``counter`` under two conditions, and the
    noise anchor's target (None where no anchor is used)."""

    model: Dynamics
    counter: NFECounter
    cond_a: Any
    cond_b: Any
    noise: torch.Tensor | None


@dataclass(frozen=True, eq=False)
class _Fields:
    """The fields of one planned transition: where it plans, how it executes, how it counts.

    Attributes:
        counted: the model, counting the execution's and the continuation's evaluations.
        budgeted: the planner's own evaluations, capped at its budget.
        planning: what plans are solved on.
        execution: the blended field a plan is executed with, under ``conds``.
        secant: the secant step the surrogate was calibrated with (None on the exact model).
    """

    counted: CountedDynamics
    budgeted: NFECounter
    planning: _Field
    execution: BlendedDynamics
    conds: tuple[Any, Any]
    secant: SecantStep | None

    @classmethod
    def of(cls, shooting: Shooting, request: TransitionRequest) -> _Fields:
        counted = CountedDynamics(request.model, NFECounter())
        budgeted = planning_counter(request, shooting.budget)
        schedule, grid, k = make_schedule(shooting.schedule, request.horizon), request.grid, request.step
        if shooting.model == "exact":
            noise = request.noise if shooting.terminal == "noise" else None
            planning = _Field(CountedDynamics(request.model, budgeted), budgeted, request.cond_a, request.cond_b, noise)
            return cls(counted, budgeted, planning, BlendedDynamics(counted, schedule, grid, k), (request.cond_a, request.cond_b), None)
        x = request.point.state
        v_b = counted.velocity(x, grid.t(k), request.cond_b)  # the direct switch's first evaluation
        secant = SecantCorrection(budget=shooting.budget).step(request, v_b, CountedDynamics(request.model, budgeted))
        flows = StraightFlows.at(request, secant)
        mixed = MixedFlow(counted, flows, request.cond_b, x, v_b)
        planning = _Field(flows, NFECounter(), SURROGATE_A, SURROGATE_B, flows.noise)  # surrogate calls are free
        return cls(counted, budgeted, planning, BlendedDynamics(mixed, schedule, grid, k), (SURROGATE_A, SURROGATE_B), secant)

    @property
    def nfe(self) -> dict[str, float]:
        return merged(self.counted.counter, self.budgeted)

    @property
    def fallbacks(self) -> int:
        return 0 if self.secant is None else self.secant.fallbacks

    def outcome(self, planned: tuple[SolveResult, TorchShooting] | None, budget: float) -> tuple[SolveStatus, str]:
        """The transition's status and message."""
        if planned is None:
            return SolveStatus.BUDGET, _over_budget(budget)
        if self.secant is not None and self.secant.status is not SolveStatus.SOLVED:
            return self.secant.status, self.secant.message
        return planned[0].status, planned[0].message

    def linearisation(self, estimator, request: TransitionRequest, x: torch.Tensor, sigma: float) -> JacobianEstimate:
        """The blended field's Jacobian at ``x``: the surrogate's ``I / sigma`` (no model call),
        or on the exact model a structured estimate whose JVPs the budget pays for."""
        if self.secant is None:
            alpha = self.execution.alpha(sigma)
            return _image_batch_estimate(estimator, _fixed_blend(request, sigma, alpha), x, self.budgeted)
        value = self.planning.model.jacobian_diagonal(sigma)
        return JacobianEstimate("diagonal", torch.full((x.numel(),), value, dtype=x.dtype, device=x.device), {})


def _rollout(execution: BlendedDynamics, conds: tuple[Any, Any], request: TransitionRequest, controls: torch.Tensor, start: int) -> torch.Tensor:
    """The state after the planned ``controls`` from the request's state at grid ``start``."""
    grid, x = request.grid, request.point.state
    for i, u in enumerate(controls):
        v = execution.velocity(x, grid.t(start + i), conds) + u
        x, _ = rk_step(EULER, lambda *_: v, x, grid.t(start + i), grid.t(start + i + 1))
    return x


def _planned_states(plan: SolveResult, solver: TorchShooting, x: torch.Tensor) -> torch.Tensor:
    """The plan's states (a multiple-shooting plan's nodes may carry defects, so its controls
    are rolled out on the field it was planned on)."""
    if solver.transcription == "single":
        return plan.states
    with torch.no_grad():
        return solver.rollout(x, plan.controls)


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


def check_image_jacobian(name: str, jacobian: object) -> None:
    """Raise unless ``jacobian`` is an estimator :class:`ShootingMPC` can linearise with."""
    if not isinstance(jacobian, (DiagonalJacobian, ColouredJacobian)) or (isinstance(jacobian, ColouredJacobian) and jacobian.block is None):
        raise InvalidArgumentError(name, f"expected DiagonalJacobian(radius=...) or ColouredJacobian(block=...), got {jacobian!r}")


def _derivatives(strategy: Shooting | ShootingMPC, request: TransitionRequest) -> AbstractContextManager:
    """The model's derivative mode (:func:`flowctl.dynamics.derivative_mode`) where the strategy
    differentiates it (on the exact model), else nothing."""
    return derivative_mode(request.model) if strategy.differentiates else nullcontext()


def _check_image_batch(x: torch.Tensor, jacobian: DiagonalJacobian | ColouredJacobian) -> None:
    """Raise unless ``x`` is an image batch (B, C, H, W) whose (C, B*H, W) layout the estimator's
    blocks tile."""
    if x.dim() != 4:
        raise ShapeError("point.state", f"shooting + MPC on the exact model linearises image batches (B, C, H, W), got {tuple(x.shape)}")
    block = getattr(jacobian, "block", None)
    if block is not None and (x.shape[0] * x.shape[2] % block[0] or x.shape[3] % block[1]):
        raise ShapeError("point.state", f"the Jacobian's blocks {block} do not tile the batch's (B*H, W) = {(x.shape[0] * x.shape[2], x.shape[3])}")


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
