"""The interface every transition strategy shares: a request in, a result with its costs out.

A cache hit gives the state ``x_k`` of prompt A's run at grid step k (a :class:`ResumePoint`
with the run's grid and starting noise) and prompt B. A strategy continues it to the end of the
grid as B and reports the final state, its model evaluations by kind, its wall time and the
time of each phase ("planning" before the first step, "continuation" for the steps).
Sigma runs from 1 (noise) to 0 (data), as everywhere in flowctl.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch

from .._checks import check_dynamics, check_finite, check_int, check_real, check_tensor
from ..dynamics import DEFAULT_COST, Dynamics, NFECounter, check_cost
from ..errors import InvalidArgumentError
from ..status import SolveStatus
from ..sampling import ResumePoint, SigmaGrid, integrate


@dataclass(frozen=True, eq=False)
class TransitionRequest:
    """What a cache hit hands to a strategy.

    Attributes:
        model: the flow model (uncounted; each strategy counts its own calls).
        point: A's state at the resume step, batched (B, ...), with its grid (a
            :class:`SigmaGrid`: from sigma_0 down to exactly 0), method and starting noise.
        cond_a, cond_b: the conditions of the cached prompt A and the new prompt B (checked by
            the model, at its first evaluation).
        horizon: transition length H in grid steps (>= 1), cut to the steps that remain.
        similarity: the prompts' similarity, if known (some strategies adapt to it).
        cost: the model's cost of a call by kind relative to a forward call (``{"forward": 1,
            "jvp": ..., "vjp": ...}``, measured on the model), which planners' budgets are
            counted in; kinds it leaves out take :data:`flowctl.dynamics.DEFAULT_COST`'s.
    """

    model: Dynamics
    point: ResumePoint
    cond_a: Any
    cond_b: Any
    horizon: int = 3
    similarity: float | None = None
    cost: Mapping[str, float] | None = None

    def __post_init__(self) -> None:
        check_dynamics("model", self.model)
        if not isinstance(self.point, ResumePoint):
            raise InvalidArgumentError("point", f"expected a ResumePoint, got {type(self.point).__name__}")
        if not isinstance(self.point.grid, SigmaGrid):
            raise InvalidArgumentError("point", "a transition runs on a SigmaGrid (sigma from 1 to 0)")
        if self.point.step >= self.point.grid.steps:
            raise InvalidArgumentError("point", f"resume step {self.point.step} leaves no step to run")
        check_int("horizon", self.horizon, minimum=1)
        object.__setattr__(self, "horizon", min(self.horizon, self.point.remaining_steps))
        if self.similarity is not None:
            object.__setattr__(self, "similarity", check_real("similarity", self.similarity, low=-1.0, high=1.0))
        # the point checked shapes and dtypes when it was made; a batch axis and finiteness here
        check_tensor("point.state", self.point.state, ndim_min=2, finite=False)
        check_finite(*((f"point.{name}", x) for name in ("state", "noise", "velocity") if (x := getattr(self.point, name)) is not None))
        object.__setattr__(self, "cost", {**DEFAULT_COST, **({} if self.cost is None else check_cost("cost", self.cost))})

    @property
    def grid(self) -> SigmaGrid:
        return self.point.grid

    @property
    def step(self) -> int:
        """The resume step k."""
        return self.point.step

    @property
    def noise(self) -> torch.Tensor:
        """The run's starting noise (at sigma = 1); strategies that anchor on it need it."""
        if self.point.noise is None:
            raise InvalidArgumentError("point", "this strategy needs the run's starting noise; the resume point has none")
        return self.point.noise


@dataclass(frozen=True, eq=False)
class TransitionResult:
    """A finished continuation.

    Attributes:
        strategy: the strategy's name.
        final: the state at sigma = 0 (the sample).
        nfe: model evaluations by kind ("forward", "jvp", "vjp"), counted as calls; weigh them by
            their measured cost with :meth:`nfe_equivalents`.
        seconds: wall time of the whole continuation.
        phases: wall seconds by phase ("planning", "continuation").
        status: SOLVED where no solver ran or the solver converged; BUDGET where a planner
            stopped at its budget of NFE-equivalents (the plan reached is used); the solver's
            status where it stopped for another reason.
        message: the planner's words, if any.
        fallbacks: samples of the batch on which a safeguarded planner judged its correction
            harmful by its own residual and continued as the direct switch.
    """

    strategy: str
    final: torch.Tensor
    nfe: Mapping[str, float]
    seconds: float
    phases: Mapping[str, float]
    status: SolveStatus = SolveStatus.SOLVED
    message: str = ""
    fallbacks: int = 0

    def nfe_equivalents(self, cost: Mapping[str, float]) -> float:
        """Evaluations weighted by the cost of each kind relative to a forward call (e.g.
        ``{"forward": 1, "jvp": 2.7, "vjp": 3.1}`` as measured on the model)."""
        missing = set(self.nfe) - set(cost)
        if missing:
            raise InvalidArgumentError("cost", f"has no figure for {sorted(missing)}")
        return float(sum(n * cost[kind] for kind, n in self.nfe.items()))


@runtime_checkable
class Strategy(Protocol):
    """A transition strategy: ``run(request) -> TransitionResult``; ``name`` labels its figures."""

    @property
    def name(self) -> str: ...

    def run(self, request: TransitionRequest) -> TransitionResult: ...


@dataclass
class PhaseClock:
    """Wall time per phase of one continuation."""

    phases: dict[str, float] = field(default_factory=dict)
    started: float = field(default_factory=time.perf_counter)

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.phases[name] = self.phases.get(name, 0.0) + time.perf_counter() - start

    @property
    def total(self) -> float:
        return time.perf_counter() - self.started


def planning_counter(request: TransitionRequest, budget: float) -> NFECounter:
    """A counter for a planner's own evaluations, capped at ``budget`` NFE-equivalents weighed
    by the request's measured costs."""
    return NFECounter(budget=budget, cost=request.cost)


def merged(*counters: NFECounter) -> dict[str, float]:
    """Evaluations by kind over several counters."""
    return dict(sum((c.by_kind for c in counters), Counter()))


def check_request(request: object) -> TransitionRequest:
    """Return ``request`` if it is a :class:`TransitionRequest` (checked when it was made)."""
    if not isinstance(request, TransitionRequest):
        raise InvalidArgumentError("request", f"expected a TransitionRequest, got {type(request).__name__}")
    return request


def finish_with(model: Dynamics, x: torch.Tensor, request: TransitionRequest, step: int) -> torch.Tensor:
    """Run B from ``x`` at grid ``step`` to the end of the grid (Euler, as the sampler)."""
    return integrate(model, x, request.grid, request.cond_b, method=request.point.method, start=step, keep="final").final
