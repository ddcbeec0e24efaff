"""Linearising model predictive control: one QP, several backends, a closed-loop controller."""

from .casadi_backend import CasadiQPBackend, CasadiQPOptions
from .controller import ControllerTiming, LinearModel, MPCController, TimeInvariantModel
from .euler import StateLayout, euler_linearisation
from .nonlinear import NonlinearMPC
from .problem import Linearisation, MPCConfig, MPCSolution, objective, predict
from .osqp_backend import OSQPBackend, OSQPOptions
from .structured import StructuredBackend, StructuredOptions

__all__ = [
    "MPCConfig",
    "Linearisation",
    "euler_linearisation",
    "StateLayout",
    "MPCSolution",
    "objective",
    "predict",
    "MPCController",
    "NonlinearMPC",
    "ControllerTiming",
    "LinearModel",
    "TimeInvariantModel",
    "OSQPBackend",
    "OSQPOptions",
    "CasadiQPBackend",
    "CasadiQPOptions",
    "StructuredBackend",
    "StructuredOptions",
]
