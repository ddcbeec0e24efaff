"""Optimal control: problem description, single and multiple shooting on CasADi and torch."""

from .casadi_backend import CasadiOptions, CasadiShooting
from .examples import VAN_DER_POL_OPTIMUM, van_der_pol_problem
from .least_squares import LeastSquaresOptions
from ..errors import SolverError
from ..status import SolveStatus
from .problem import OptimalControlProblem, SolveResult
from .torch_backend import TorchOptions, TorchShooting

__all__ = [
    "OptimalControlProblem",
    "SolveResult",
    "SolveStatus",
    "SolverError",
    "CasadiShooting",
    "CasadiOptions",
    "TorchShooting",
    "TorchOptions",
    "LeastSquaresOptions",
    "van_der_pol_problem",
    "VAN_DER_POL_OPTIMUM",
]
