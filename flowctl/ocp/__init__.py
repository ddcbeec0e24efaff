"""Optimal control: problem description, single and multiple shooting on CasADi and torch."""

from .examples import VAN_DER_POL_OPTIMUM, van_der_pol_problem
from .problem import OptimalControlProblem, SolveResult, SolverError, SolveStatus

__all__ = [
    "OptimalControlProblem",
    "SolveResult",
    "SolveStatus",
    "SolverError",
    "van_der_pol_problem",
    "VAN_DER_POL_OPTIMUM",
]
