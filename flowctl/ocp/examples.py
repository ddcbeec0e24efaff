"""Reference problems with known optima (Van der Pol: CasADi's own direct-shooting example;
measured in docs/shooting.md)."""

from __future__ import annotations

import math

import torch

from ..sampling import Grid
from ..systems import VanDerPol, ops
from .problem import OptimalControlProblem

VAN_DER_POL_OPTIMUM = 3.732969
"""Optimal objective of :func:`van_der_pol_problem` (CasADi's example, IPOPT, to 1e-6)."""


def van_der_pol_problem(*, intervals: int = 20, horizon: float = 10.0, substeps: int = 4) -> OptimalControlProblem:
    """CasADi's Van der Pol optimal-control example.

    States (x1, x2), ``x1' = (1 - x2^2) x1 - x2 + u``, ``x2' = x1``; minimise the integral of
    ``x1^2 + x2^2 + u^2`` over ``horizon`` seconds from ``x = (0, 1)`` with ``-1 <= u <= 1`` and
    ``x1 >= -0.25`` at the interval ends; ``intervals`` controls, each integrated with
    ``substeps`` RK4 steps. The defaults have the optimum :data:`VAN_DER_POL_OPTIMUM`.
    """
    return OptimalControlProblem(
        dynamics=VanDerPol(),
        grid=Grid.uniform(0.0, horizon, intervals),
        x0=torch.tensor([0.0, 1.0], dtype=torch.float64),
        stage_residual=lambda x, u, t: ops.concat(x, u),
        u_lower=-1.0,
        u_upper=1.0,
        x_lower=torch.tensor([-0.25, -math.inf], dtype=torch.float64),
        method="rk4",
        substeps=substeps,
    )
