"""How a solve ended, for every solver in flowctl (the optimal-control backends, the MPC QP
backends, the transition planners): one status type, and :func:`finish` to raise
:class:`flowctl.errors.SolverError` for a failed solve when asked to."""

from __future__ import annotations

import enum

from .errors import SolverError


class SolveStatus(str, enum.Enum):
    """How a solve ended."""

    SOLVED = "solved"
    MAX_ITERATIONS = "max_iterations"
    NFE_LIMIT = "nfe_limit"
    BUDGET = "budget"
    INFEASIBLE = "infeasible"
    FAILED = "failed"


def finish(result, raise_on_failure: bool):
    """Return ``result`` (a :class:`flowctl.ocp.SolveResult` or an MPC solution: anything with ``success``,
    ``status`` and ``message``), or raise :class:`SolverError` for a failed one when asked to."""
    if raise_on_failure and not result.success:
        raise SolverError(result)
    return result
