"""Nonlinear MPC for small symbolic systems: multiple shooting on IPOPT at every step."""

from __future__ import annotations

import time

import casadi
import torch

from .._checks import check_real
from ..ocp.casadi_backend import CasadiOptions, CasadiShooting
from ..ocp.problem import OptimalControlProblem
from ..sampling import Grid
from ..systems import ControlSystem
from .controller import ControllerTiming, StepTimer


class NonlinearMPC:
    """Track ``target`` with a :class:`ControlSystem` by re-solving the nonlinear problem.

    Each step solves, from the measured state, ``min integral |x - target|^2_q + |u|^2_r dt``
    over ``horizon`` seconds in ``intervals`` piecewise-constant controls (the system's own
    nonlinear dynamics, RK4 with ``substeps`` per interval, box bounds), by multiple shooting on
    IPOPT warm-started from the previous step, and applies the first control.

    Args:
        system: the plant.
        target: (n_state,) state to track.
        horizon: prediction horizon in seconds (> 0).
        intervals: control intervals over the horizon.
        q, r: diagonal weights of state error and control (numbers or vectors, >= 0).
        u_lower, u_upper, x_lower, x_upper: box bounds (None for none).
        substeps: RK4 steps per interval.
        options: IPOPT settings.
    """

    def __init__(
        self,
        system: ControlSystem,
        target: torch.Tensor,
        *,
        horizon: float,
        intervals: int,
        q: float | torch.Tensor = 1.0,
        r: float | torch.Tensor = 1.0,
        u_lower=None,
        u_upper=None,
        x_lower=None,
        x_upper=None,
        substeps: int = 1,
        options: CasadiOptions = CasadiOptions(tol=1e-8),
    ):
        horizon = check_real("horizon", horizon, positive=True)
        sq = casadi.DM(torch.as_tensor(q, dtype=torch.float64).expand(system.n_state).sqrt().numpy())
        sr = casadi.DM(torch.as_tensor(r, dtype=torch.float64).expand(system.n_control).sqrt().numpy())
        goal = casadi.DM(torch.as_tensor(target, dtype=torch.float64).numpy())
        problem = OptimalControlProblem(
            dynamics=system,
            grid=Grid.uniform(0.0, horizon, intervals),
            x0=torch.as_tensor(target, dtype=torch.float64).clone(),
            stage_residual=lambda x, u, t: casadi.vertcat(sq * (x - goal), sr * u),
            u_lower=u_lower, u_upper=u_upper, x_lower=x_lower, x_upper=x_upper,
            method="rk4", substeps=substeps,
        )
        self.solver = CasadiShooting(problem, "multiple", options)
        self.dt = horizon / intervals
        self._timer = StepTimer()

    def build(self) -> None:
        start = time.perf_counter()
        self.solver.build()
        self._timer.setup = time.perf_counter() - start

    def step(self, x: torch.Tensor, t: float = 0.0) -> torch.Tensor:
        """Solve from the measured state ``x`` and return the first control (n_control,)."""
        if self._timer.setup is None:
            self.build()
        start = time.perf_counter()
        result = self.solver.solve(x.double())
        self._timer.steps.append(time.perf_counter() - start)
        return result.controls[0].to(x.dtype)

    @property
    def timing(self) -> ControllerTiming:
        return self._timer.timing
