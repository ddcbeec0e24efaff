"""Blending schedules ``alpha(s)``: how far a prompt switch has gone, s grid steps after it.

``alpha = 0`` is the old condition (prompt A), ``alpha = 1`` the new one (prompt B). Every
schedule is 0 before the switch (``s < 0``), rises monotonically over ``length`` steps, and is
exactly 1 from ``s = length`` on (:attr:`end`), so that a blended field stops paying for two
evaluations once the transition is over. ``s`` may be fractional (the inner stages of Heun/RK4).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

from ._checks import check_real
from .errors import InvalidArgumentError, NonFiniteError, UnknownNameError


@dataclass(frozen=True)
class Schedule:
    """``alpha(s) = shape(s / length)`` on ``[0, length)``, 0 before, 1 after.

    Subclasses define :meth:`shape` on ``p`` in ``[0, 1)`` with ``shape(0) = 0``, monotone,
    tending to 1 as ``p -> 1``.

    Attributes:
        length: transition length in grid steps (> 0; 0 only for :class:`StepSchedule`).
    """

    length: float

    def __post_init__(self) -> None:
        check_real("length", self.length, positive=True)

    @property
    def end(self) -> float:
        """First ``s`` at which alpha is exactly 1."""
        return float(self.length)

    def __call__(self, s: float) -> float:
        """alpha at ``s`` grid steps after the switch (a real number; -inf and inf are allowed)."""
        try:
            s = float(s)
        except (TypeError, ValueError):
            raise InvalidArgumentError("s", f"expected a real number of grid steps, got {s!r}") from None
        if s < 0:
            return 0.0
        if s >= self.end:
            return 1.0
        if s != s:  # NaN is neither before nor after the switch
            raise NonFiniteError("s", "is NaN")
        return min(max(self.shape(s / self.length), 0.0), 1.0)

    def shape(self, p: float) -> float:
        raise NotImplementedError


@dataclass(frozen=True)
class StepSchedule(Schedule):
    """Direct switch: alpha jumps from 0 to 1 at ``s = 0``."""

    length: float = 0.0

    def __post_init__(self) -> None:
        check_real("length", self.length, low=0.0, high=0.0)


@dataclass(frozen=True)
class LinearSchedule(Schedule):
    """``alpha = p``."""

    def shape(self, p: float) -> float:
        return p


@dataclass(frozen=True)
class CosineSchedule(Schedule):
    """``alpha = (1 - cos(pi p)) / 2``: zero slope at both ends."""

    def shape(self, p: float) -> float:
        return 0.5 * (1.0 - math.cos(math.pi * p))


@dataclass(frozen=True)
class SigmoidSchedule(Schedule):
    """The seed's logistic ``1 / (1 + exp(-k (p - 1/2)))``, rescaled to be exactly 0 at p = 0
    and 1 at p = 1 (the seed's raw form is 0.0067 and 0.9933 there and never reaches 1).

    Attributes:
        steepness: k (> 0); the seed uses 10.
    """

    steepness: float = 10.0

    def __post_init__(self) -> None:
        super().__post_init__()
        check_real("steepness", self.steepness, positive=True)

    def shape(self, p: float) -> float:
        k = self.steepness
        lo, hi = _logistic(-k / 2), _logistic(k / 2)
        return (_logistic(k * (p - 0.5)) - lo) / (hi - lo)


def _logistic(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z))


# The seed's adaptive buckets: similarity above the threshold -> transition steps.
ADAPTIVE_BUCKETS: tuple[tuple[float, int], ...] = ((0.95, 3), (0.90, 5))
ADAPTIVE_DEFAULT_LENGTH = 8


def adaptive_sigmoid(similarity: float, *, steepness: float = 10.0) -> SigmoidSchedule:
    """The seed's adaptive schedule: a sigmoid over 3 / 5 / 8 steps for prompt similarity
    > 0.95 / > 0.90 / otherwise (cosine similarity of the prompts' text embeddings)."""
    similarity = check_real("similarity", similarity, low=-1.0, high=1.0)
    length = next((n for thr, n in ADAPTIVE_BUCKETS if similarity > thr), ADAPTIVE_DEFAULT_LENGTH)
    return SigmoidSchedule(length, steepness=steepness)


BLENDS = ("linear", "cosine", "sigmoid")
"""The schedules that rise over a transition length: what a blend of two prompts' fields takes."""

SCHEDULES: dict[str, Callable[..., Schedule]] = {
    "step": StepSchedule,
    "linear": LinearSchedule,
    "cosine": CosineSchedule,
    "sigmoid": SigmoidSchedule,
    "adaptive": adaptive_sigmoid,
}


def make_schedule(name: str, *args, **kwargs) -> Schedule:
    """Build a schedule by name: ``make_schedule("linear", 5)``, ``make_schedule("adaptive", 0.93)``.

    Raises:
        UnknownNameError: no schedule of that name.
        InvalidArgumentError: arguments the schedule does not take (``args``), or bad values of
            those it takes (named).
    """
    try:
        factory = SCHEDULES[name]
    except (KeyError, TypeError):
        raise UnknownNameError("name", name, list(SCHEDULES)) from None
    try:
        return factory(*args, **kwargs)
    except TypeError as error:  # a missing or unexpected argument: the checks raise typed errors
        raise InvalidArgumentError("args", f"the {name!r} schedule does not take {args!r}, {kwargs!r}: {error}") from None
