"""Linearising model predictive control: one QP, several backends, a closed-loop controller."""

from .controller import ControllerTiming, LinearModel, MPCController, TimeInvariantModel
from .nonlinear import NonlinearMPC
from .problem import Linearisation, MPCConfig, MPCSolution, objective, predict
from .structured import StructuredBackend, StructuredOptions

__all__ = [
    "MPCConfig",
    "Linearisation",
    "MPCSolution",
    "objective",
    "predict",
    "MPCController",
    "NonlinearMPC",
    "ControllerTiming",
    "LinearModel",
    "TimeInvariantModel",
    "StructuredBackend",
    "StructuredOptions",
]
