"""Typed errors. Every error flowctl raises on bad input derives from :class:`FlowctlError`.

Argument errors also derive from :class:`ValueError` (so ``except ValueError`` keeps working)
and carry ``argument``: the name of the offending parameter, which the message starts with.
"""

from __future__ import annotations


class FlowctlError(Exception):
    """Base class of every error raised by flowctl."""


class InvalidArgumentError(FlowctlError, ValueError):
    """An argument has a value flowctl cannot use.

    Attributes:
        argument: name of the offending parameter, as the caller spelled it.
    """

    def __init__(self, argument: str, message: str):
        self.argument = argument
        super().__init__(f"{argument}: {message}")


class NonFiniteError(InvalidArgumentError):
    """A tensor that must be finite holds NaN or Inf."""


class ShapeError(InvalidArgumentError):
    """A tensor has the wrong shape, or two tensors that must agree in shape do not."""


class UnknownNameError(InvalidArgumentError):
    """A name looked up in a registry (schedule, integrator, ...) does not exist."""

    def __init__(self, argument: str, name: object, known: list[str]):
        self.name = name
        self.known = sorted(known)
        super().__init__(argument, f"unknown name {name!r}; known: {', '.join(self.known)}")


class MissingDependencyError(FlowctlError, ImportError):
    """An optional dependency (an extra of the flowctl package) is not installed."""


class IntegrationError(FlowctlError):
    """An integration produced a non-finite state (the dynamics diverged or returned NaN)."""


class BudgetExceededError(FlowctlError):
    """A counted model evaluation would take a planner past its budget of NFE-equivalents; the
    evaluation was not made. Planners catch it, stop with status ``budget`` and say so."""


class CacheStorageError(FlowctlError):
    """A cache store could not be read or written (an OS error, or its database server is down
    or refused); what was already stored is unchanged and nothing was deleted. Often transient:
    retrying may succeed."""


class CacheFullError(CacheStorageError):
    """A cache store has no space left for a new entry (the disk or the database is full); the
    store still opens, lists, inspects and clears."""


class SolverError(FlowctlError):
    """A solve did not succeed; ``result`` holds what it reached (a
    :class:`flowctl.ocp.SolveResult`, or a :class:`flowctl.mpc.MPCSolution` from an MPC backend)."""

    def __init__(self, result):
        self.result = result
        super().__init__(f"solve ended with status {result.status.value}: {result.message}")
