"""flowctl: control theory for flow-matching generative models.

Conventions (docs/conventions.md): time is SD3's sigma, ``sigma = 1`` is pure noise and
``sigma = 0`` is data; ``x_sigma = (1 - sigma) x0 + sigma eps`` and a model predicts
``v = eps - x0``. Every model evaluation is counted (NFE).

The public API is what this module exports; the submodules ``cache``, ``jacobians``, ``metrics``,
``mpc``, ``ocp``, ``schedules``, ``systems``, ``text`` and ``transitions`` are part of it
(``bench`` is the benchmark behind ``flowctl bench``).
"""

from . import cache, jacobians, metrics, mpc, ocp, schedules, systems, text, transitions
from .dynamics import (
    BlendedDynamics,
    ControlInput,
    ControlledDynamics,
    CountedDynamics,
    Dynamics,
    NFECounter,
)
from .errors import (
    FlowctlError,
    IntegrationError,
    InvalidArgumentError,
    NonFiniteError,
    ShapeError,
    SolverError,
    UnknownNameError,
)
from .sampling import Grid, ResumePoint, SigmaGrid, Trajectory, integrate, resume
from .status import SolveStatus
from .systems import GaussianMixtureFlow

__version__ = "0.1.0"

__all__ = [
    "cache",
    "text",
    "transitions",
    "jacobians",
    "metrics",
    "mpc",
    "ocp",
    "schedules",
    "systems",
    "Dynamics",
    "NFECounter",
    "CountedDynamics",
    "ControlInput",
    "ControlledDynamics",
    "BlendedDynamics",
    "Grid",
    "SigmaGrid",
    "Trajectory",
    "ResumePoint",
    "integrate",
    "resume",
    "GaussianMixtureFlow",
    "SolveStatus",
    "FlowctlError",
    "InvalidArgumentError",
    "NonFiniteError",
    "ShapeError",
    "UnknownNameError",
    "IntegrationError",
    "SolverError",
]
