"""Transition strategies: continue a cached state of prompt A as prompt B, one interface.

Each strategy takes a :class:`TransitionRequest` and returns a :class:`TransitionResult` with
the final state, model evaluations by kind, wall time and per-phase timings.
"""

from .base import Strategy, TransitionRequest, TransitionResult
from .blends import Blend, DirectSwitch
from .closed_form import ClosedFormController
from .registry import STRATEGY_NAMES, make_strategy
from .secant import SecantCorrection
from .shooting import Shooting, ShootingMPC

__all__ = [
    "Strategy",
    "TransitionRequest",
    "TransitionResult",
    "DirectSwitch",
    "Blend",
    "ClosedFormController",
    "SecantCorrection",
    "Shooting",
    "ShootingMPC",
    "STRATEGY_NAMES",
    "make_strategy",
]
