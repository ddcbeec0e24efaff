"""The secant correction: move A's cached state towards B's trajectory for one model evaluation.

Sigma runs from 1 (noise) to 0 (data); ``x0_hat = x - sigma v`` and ``eps_hat = x + (1 - sigma) v``
(docs/conventions.md). Runs of prompts A and B from the same noise ``eps`` differ at sigma ``s``
by about ``(1 - s)(x0_B - x0_A)`` when the flow is straight, so from A's cached state ``x`` the
straight-flow guess of B's state is ``x + delta`` with

    delta = -s (1 - s) (v_B(x) - v_A(x)),

which costs nothing: ``v_A(x)`` was evaluated when A was generated (the cache keeps it) and
``v_B(x)`` is the first evaluation the direct switch makes anyway. The guess is one Newton step
on the noise-consistency residual ``r(y) = eps_hat_B(y) - eps_hat_A(x)`` (B's noise estimate
agrees with the one A's run had there) under the straight-flow Jacobian ``I / s``. Real flows
are not straight, and the step overshoots where B's image departs from A's in size, position or
background. So the planner evaluates B once at the guess, builds the secant model of ``r`` along
``delta`` from the two evaluations, and takes the step length ``beta`` in [0, 1] that minimises
it, per sample: a one-dimensional shooting problem solved with one model evaluation. The state
``x + beta delta`` continues with the secant-interpolated velocity as its first step, then B's
own steps. Cost: one NFE more than the direct switch from the same step.

Safeguard: where the secant model predicts that no step length reduces the residual by
``min_reduction``, the sample continues as the direct switch, bit for bit, and is counted in the
result's ``fallbacks``.

Without the trial (``trial=False``, the strategy "offset") the straight-flow model stands in for
it: B's velocity at ``x + beta delta`` is taken as ``v_B(x) + beta delta / s`` (the Jacobian
``I / s`` of a straight flow) and ``beta`` is ``max_step``. This costs nothing beyond the direct
switch, but is open loop: nothing checks the step, so there is no safeguard.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .._checks import check_real
from ..dynamics import CountedDynamics, check_budget
from ..errors import InvalidArgumentError
from ..status import SolveStatus
from ..sampling import EULER, rk_step
from .base import PhaseClock, TransitionRequest, TransitionResult, check_request, finish_with, merged, planning_counter


@dataclass(frozen=True, eq=False)
class SecantStep:
    """What the secant correction decided at A's cached state ``x`` (sigma ``s``, grid step k).

    Attributes:
        beta: per-sample step length along ``delta``, shape (B, 1, ...); 0 where no correction.
        delta: the straight-flow offset ``-s (1 - s)(v_B(x) - v_A(x))``.
        v_b: ``v_B(x)``, the direct switch's first evaluation.
        v_trial: ``v_B(x + delta)`` (``v_b`` where no trial was made).
        v_a: ``v_A(x)`` (None where the budget allowed no correction).
        status: SOLVED, or BUDGET where the budget allowed no correction.
        message: why, where not SOLVED.
    """

    beta: torch.Tensor
    delta: torch.Tensor
    v_b: torch.Tensor
    v_trial: torch.Tensor
    v_a: torch.Tensor | None
    status: SolveStatus
    message: str = ""

    def state(self, x: torch.Tensor) -> torch.Tensor:
        """The corrected state (``x`` itself, bit for bit, where beta is 0)."""
        return torch.where(self.beta == 0, x, x + self.beta * self.delta)

    def velocity(self) -> torch.Tensor:
        """B's velocity at the corrected state by secant interpolation (``v_b`` where beta is 0)."""
        return torch.where(self.beta == 0, self.v_b, self.v_b + self.beta * (self.v_trial - self.v_b))

    @property
    def fallbacks(self) -> int:
        """Samples the safeguard kept on the direct switch (none counted when no correction was
        attempted)."""
        return int((self.beta == 0).sum()) if self.status is SolveStatus.SOLVED else 0


@dataclass(frozen=True)
class SecantCorrection:
    """Correct A's cached state along the straight-flow offset, its length set by one secant step.

    Attributes:
        budget: NFE-equivalents the planner may spend beyond the direct switch (a finite number
            >= 0): the trial evaluation costs 1, and A's velocity 1 more where the cache did not
            keep it. Below what it needs it continues as the direct switch with status "budget".
        max_step: the largest step length ``beta`` (1 is the full straight-flow offset); without
            the trial, the step length.
        min_reduction: the relative reduction of the residual the secant model must predict for
            the correction to be applied; below it the sample falls back to the direct switch.
        trial: whether to evaluate B at the offset state and choose the length by the secant
            (one forward, safeguarded); False: the straight-flow model instead (no evaluation,
            no safeguard; the strategy "offset").
    """

    budget: float = 1.0
    max_step: float = 1.0
    min_reduction: float = 0.0
    trial: bool = True

    def __post_init__(self) -> None:
        check_budget("budget", self.budget)
        check_real("max_step", self.max_step, positive=True)
        check_real("min_reduction", self.min_reduction, low=0.0, high=1.0)
        if not isinstance(self.trial, bool):
            raise InvalidArgumentError("trial", f"expected True or False, got {self.trial!r}")

    @property
    def name(self) -> str:
        return "secant correction" if self.trial else "straight-flow offset"

    def step(self, request: TransitionRequest, v_b: torch.Tensor, planner: CountedDynamics) -> SecantStep:
        """The correction at the request's state, given ``v_b = v_B(x)``; ``planner`` counts (and
        caps) the evaluations it makes beyond that one."""
        x, sigma = request.point.state, request.grid.t(request.step)
        none = torch.zeros((x.shape[0],) + (1,) * (x.dim() - 1), dtype=x.dtype, device=x.device)
        v_a = request.point.velocity
        needed = request.cost["forward"] * (self.trial + (v_a is None))
        if needed > self.budget:
            message = f"needs {needed:g} NFE-equivalents, the budget is {self.budget:g}: continued as the direct switch"
            return SecantStep(none, torch.zeros_like(x), v_b, v_b, None, SolveStatus.BUDGET, message)
        if v_a is None:
            v_a = planner.velocity(x, sigma, request.cond_a)
        delta = -sigma * (1 - sigma) * (v_b - v_a)
        if not self.trial:
            return SecantStep(none + self.max_step, delta, v_b, v_b + delta / sigma, v_a, SolveStatus.SOLVED)
        v_trial = planner.velocity(x + delta, sigma, request.cond_b)
        beta = self._step_length((1 - sigma) * (v_b - v_a), delta + (1 - sigma) * (v_trial - v_b)).to(x.dtype)
        return SecantStep(beta, delta, v_b, v_trial, v_a, SolveStatus.SOLVED)

    def run(self, request: TransitionRequest) -> TransitionResult:
        if check_request(request).point.method != "euler":
            raise InvalidArgumentError("point", f"the secant correction continues Euler runs, not {request.point.method!r}")
        model = CountedDynamics(request.model)
        planner = CountedDynamics(request.model, planning_counter(request, self.budget))
        clock = PhaseClock()
        grid, k, x = request.grid, request.step, request.point.state
        with clock.phase("planning"):
            step = self.step(request, model.velocity(x, grid.t(k), request.cond_b), planner)  # the direct switch's first evaluation
        with clock.phase("continuation"):
            v = step.velocity()
            x_next, _ = rk_step(EULER, lambda *_: v, step.state(x), grid.t(k), grid.t(k + 1))
            final = finish_with(model, x_next, request, k + 1)
        nfe = merged(model.counter, planner.counter)
        return TransitionResult(self.name, final, nfe, clock.total, clock.phases, step.status, step.message, step.fallbacks)

    def _step_length(self, r0: torch.Tensor, dr: torch.Tensor) -> torch.Tensor:
        """Per sample, the ``beta`` in [0, max_step] minimising ``|r0 + beta dr|`` (the secant
        model of the residual along the offset), or 0 where it predicts too little reduction."""
        shape = (-1,) + (1,) * (r0.dim() - 1)
        r0, dr = r0.flatten(1).double(), dr.flatten(1).double()
        rr, dd = (r0 * r0).sum(1), (dr * dr).sum(1)
        beta = torch.nan_to_num(-(r0 * dr).sum(1) / dd, nan=0.0, posinf=0.0, neginf=0.0).clamp(0.0, self.max_step)
        predicted = (r0 + beta[:, None] * dr).pow(2).sum(1)
        enough = predicted <= (1 - self.min_reduction) ** 2 * rr
        beta = torch.where(enough & (rr > 0), beta, torch.zeros_like(beta))
        return beta.reshape(shape)
