"""Strategies without a solver: the direct switch and the blends of the two prompts' fields."""

from __future__ import annotations

from dataclasses import dataclass

from ..dynamics import BlendedDynamics, CountedDynamics
from ..schedules import BLENDS, make_schedule
from ..errors import UnknownNameError
from ..sampling import resume
from .base import PhaseClock, TransitionRequest, TransitionResult, check_request


@dataclass(frozen=True)
class DirectSwitch:
    """Continue A's state with prompt B alone from the resume step (NIRVANA's method, with the
    sampler's grid and position kept right)."""

    @property
    def name(self) -> str:
        return "direct switch"

    def run(self, request: TransitionRequest) -> TransitionResult:
        model = CountedDynamics(check_request(request).model)
        clock = PhaseClock()
        with clock.phase("continuation"):
            final = resume(model, request.point, request.cond_b, keep="final").final
        return TransitionResult(self.name, final, dict(model.counter.by_kind), clock.total, clock.phases)


@dataclass(frozen=True)
class Blend:
    """``v_alpha = (1 - alpha) v_A + alpha v_B`` with alpha rising over the request's horizon.

    Attributes:
        schedule: "linear", "cosine" or "sigmoid" (the seed's, whose adaptive length 3 / 5 / 8
            comes from the policy's horizon); steps with 0 < alpha < 1 cost two evaluations.
    """

    schedule: str = "linear"

    def __post_init__(self) -> None:
        if self.schedule not in BLENDS:
            raise UnknownNameError("schedule", self.schedule, list(BLENDS))

    @property
    def name(self) -> str:
        return f"{self.schedule} blend"

    def run(self, request: TransitionRequest) -> TransitionResult:
        model = CountedDynamics(check_request(request).model)
        blended = BlendedDynamics(model, make_schedule(self.schedule, request.horizon), request.grid, request.step)
        clock = PhaseClock()
        with clock.phase("continuation"):
            final = resume(blended, request.point, (request.cond_a, request.cond_b), keep="final").final
        return TransitionResult(self.name, final, dict(model.counter.by_kind), clock.total, clock.phases)
