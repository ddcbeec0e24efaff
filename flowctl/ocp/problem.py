"""Optimal-control problem description and solve results, shared by every backend.

A problem is a least-squares optimal-control problem over piecewise-constant controls on a
grid of N intervals, each integrated with ``substeps`` steps of an explicit RK method::

    minimise   sum_k  integral over interval k of |stage_residual(x, u_k, t)|^2 dt
             + control_weight      * sum_k |u_k|^2
             + control_rate_weight * sum_k |u_{k+1} - u_k|^2
             + terminal_weight     * |terminal_residual(x_N)|^2
    subject to the dynamics, x(t_0) = x0,
               u_lower <= u_k <= u_upper,   x_lower <= x_k <= x_upper at nodes k = 1..N.

The integral uses the RK method's own quadrature at its stage points, so every backend
discretises costs and dynamics identically. Costs are sums of squares so that Gauss-Newton
applies; a quadratic cost is always of this form. On a descending sigma grid the step is
negative and the quadrature uses |h|.

How the control enters:
- ``control="input"``: ``dx/dt = dynamics.velocity(x, t, u)`` (a :class:`ControlSystem`).
- ``control="additive"``: ``dx/dt = dynamics.velocity(x, t, cond) + u`` (a flow model steered
  by an additive velocity, the transition problem of docs/shooting.md); ``u`` has the state's shape.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, runtime_checkable

import torch

from .._checks import check_dynamics, check_int, check_real, check_real_values, check_tensor
from ..dynamics import Dynamics
from ..errors import InvalidArgumentError, ShapeError
from ..sampling import Grid, get_tableau
from ..status import SolveStatus
from ..systems import ControlSystem

CONTROL_MODES = ("input", "additive")
TRANSCRIPTIONS = ("single", "multiple")


@dataclass(frozen=True, eq=False)
class OptimalControlProblem:
    """A least-squares optimal-control problem (see the module docstring for the formula).

    Attributes:
        dynamics: the vector field.
        grid: control intervals ``t_0 .. t_N``; the control is constant on each. Any
            :class:`~flowctl.sampling.Grid`: ordinary time, or a piece of a sigma grid (a
            transition's horizon), which need not end at sigma = 0.
        x0: initial state at ``t_0`` (a torch tensor; a control system's is ``(n_state,)``).
        control: "input" (``velocity(x, t, u)``) or "additive" (``velocity(x, t, cond) + u``).
        cond: the condition passed to the dynamics with additive control.
        stage_residual: ``r(x, u, t)``, integrated as ``|r|^2 dt``; written with
            :mod:`flowctl.systems.ops` to serve the CasADi backend too. None for no running cost.
        terminal_residual: ``r(x_N)``, costing ``terminal_weight |r|^2``. None for none.
        terminal_weight: weight of the terminal residual (>= 0).
        control_weight: lambda, weight of ``sum |u_k|^2`` (>= 0).
        control_rate_weight: gamma, weight of ``sum |u_{k+1} - u_k|^2`` (>= 0).
        u_lower, u_upper: control bounds, numbers or tensors broadcasting to the control shape.
        x_lower, x_upper: state bounds at the nodes 1..N, broadcasting to the state shape; use
            -inf / inf for unbounded components.
        method: integrator, "euler", "heun" or "rk4".
        substeps: integrator steps per control interval.
    """

    dynamics: Dynamics
    grid: Grid
    x0: torch.Tensor
    control: str = "input"
    cond: Any = None
    stage_residual: Callable[[Any, Any, Any], Any] | None = None
    terminal_residual: Callable[[Any], Any] | None = None
    terminal_weight: float = 1.0
    control_weight: float = 0.0
    control_rate_weight: float = 0.0
    u_lower: float | torch.Tensor | None = None
    u_upper: float | torch.Tensor | None = None
    x_lower: float | torch.Tensor | None = None
    x_upper: float | torch.Tensor | None = None
    method: str = "rk4"
    substeps: int = 1
    control_shape: tuple[int, ...] = field(init=False)

    def __post_init__(self) -> None:
        check_dynamics("dynamics", self.dynamics)
        if not isinstance(self.grid, Grid):
            raise InvalidArgumentError("grid", f"expected a flowctl Grid, got {type(self.grid).__name__}")
        check_tensor("x0", self.x0, ndim_min=1)
        if not isinstance(self.control, str) or self.control not in CONTROL_MODES:
            raise InvalidArgumentError("control", f"expected one of {CONTROL_MODES}, got {self.control!r}")
        if self.control == "input":
            if not isinstance(self.dynamics, ControlSystem):
                raise InvalidArgumentError("dynamics", "control='input' needs a ControlSystem (it defines n_control)")
            if self.x0.shape[-1] != self.dynamics.n_state:
                raise ShapeError("x0", f"expected shape (..., {self.dynamics.n_state}) for {type(self.dynamics).__name__}, got {tuple(self.x0.shape)}")
            shape: tuple[int, ...] = (self.dynamics.n_control,)
        else:
            shape = tuple(self.x0.shape)
        object.__setattr__(self, "control_shape", shape)
        for name in ("terminal_weight", "control_weight", "control_rate_weight"):
            check_real(name, getattr(self, name), nonnegative=True)
        get_tableau(self.method)
        check_int("substeps", self.substeps, minimum=1)
        for name, like in (("u_lower", shape), ("u_upper", shape), ("x_lower", self.x0.shape), ("x_upper", self.x0.shape)):
            value = getattr(self, name)
            if value is not None:
                bound = check_real_values(name, value).to(self.x0.dtype)
                if bool(torch.isnan(bound).any()):
                    raise InvalidArgumentError(name, "contains NaN")
                try:
                    torch.broadcast_to(bound, like)
                except RuntimeError:
                    raise InvalidArgumentError(name, f"shape {tuple(bound.shape)} does not broadcast to {like}") from None
        if self.u_lower is not None and self.u_upper is not None:
            if bool((torch.as_tensor(self.u_lower) > torch.as_tensor(self.u_upper)).any()):
                raise InvalidArgumentError("u_lower", "exceeds u_upper: the control bounds are infeasible")
        if self.x_lower is not None and self.x_upper is not None:
            if bool((torch.as_tensor(self.x_lower) > torch.as_tensor(self.x_upper)).any()):
                raise InvalidArgumentError("x_lower", "exceeds x_upper: the state bounds are infeasible")

    @property
    def intervals(self) -> int:
        """Number of control intervals N."""
        return self.grid.steps


@runtime_checkable
class ShootingTerminal(Protocol):
    """A terminal residual that is itself shot over segments with unknown nodes (torch backend).

    ``initial_nodes(x_N)`` gives a first guess of the segment nodes; ``residuals(x_N, nodes)``
    returns the terminal residual and the continuity defects of the segments. It is also
    callable as a plain terminal residual ``r(x_N)``, shooting its segments in one rollout.
    """

    def __call__(self, x: torch.Tensor) -> torch.Tensor: ...

    def initial_nodes(self, x: torch.Tensor) -> list[torch.Tensor]: ...

    def residuals(self, x: torch.Tensor, nodes: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]: ...


def substep_times(t0: Any, t1: Any, substeps: int) -> list[Any]:
    """The ``substeps + 1`` times splitting ``[t0, t1]`` into equal steps, ending exactly at t1
    (torch tensors or CasADi symbols): the one rule every backend integrates an interval by."""
    return [t0 + (t1 - t0) * (j / substeps) for j in range(substeps)] + [t1]


@dataclass(frozen=True, eq=False)
class SolveResult:
    """What a solve returns.

    Attributes:
        status: how it ended; :attr:`success` is True only for SOLVED.
        controls: ``(N, *control_shape)`` optimal controls.
        states: ``(N + 1, *state_shape)`` states at the grid nodes.
        objective: the problem's objective at the solution.
        constraint_violation: largest violation of any constraint (continuity defects, bounds).
        iterations: outer iterations of the solver (IPOPT iterations, Gauss-Newton steps).
        nfe: model evaluations by kind ("forward", "jvp", "vjp"); symbolic backends report none.
        wall_time: seconds spent in the solve (building excluded).
        message: the solver's own words on how it ended.
    """

    status: SolveStatus
    controls: torch.Tensor
    states: torch.Tensor
    objective: float
    constraint_violation: float
    iterations: int
    nfe: dict[str, float]
    wall_time: float
    message: str = ""

    @property
    def success(self) -> bool:
        return self.status is SolveStatus.SOLVED
