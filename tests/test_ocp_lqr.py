"""Both backends, both transcriptions, against the closed-form finite-horizon LQR."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from flowctl.ocp import (
    CasadiOptions,
    CasadiShooting,
    LeastSquaresOptions,
    OptimalControlProblem,
    TorchOptions,
    TorchShooting,
)
from flowctl.sampling import Grid
from flowctl.systems import LinearSystem

TIGHT = TorchOptions(LeastSquaresOptions(tol=1e-12, cg_tol=1e-12, cg_iterations=60, constraint_tol=1e-10), warm_start=False)
SOLVERS = {
    "casadi": lambda problem, tr: CasadiShooting(problem, tr, CasadiOptions(warm_start=False)),
    "torch": lambda problem, tr: TorchShooting(problem, tr, TIGHT),
}


def lqr_reference(Ad, Bd, h, lam, x0, N):
    """Finite-horizon discrete LQR: sum_k (h |x_k|^2 + lam |u_k|^2) + |x_N|^2 by backward Riccati."""
    n, m = Bd.shape
    P, gains = np.eye(n), []
    for _ in range(N):
        K = np.linalg.solve(lam * np.eye(m) + Bd.T @ P @ Bd, Bd.T @ P @ Ad)
        P = h * np.eye(n) + Ad.T @ P @ (Ad - Bd @ K)
        gains.append(K)
    x, controls = x0, []
    for K in reversed(gains):
        controls.append(-K @ x)
        x = Ad @ x + Bd @ controls[-1]
    return np.array(controls), float(x0 @ P @ x0)


@pytest.mark.parametrize("backend", sorted(SOLVERS))
@settings(max_examples=4, deadline=None)
@given(st.integers(2, 3), st.integers(1, 2), st.integers(3, 8), st.floats(0.1, 2.0), st.integers(0, 2**31 - 1))
def test_single_and_multiple_shooting_match_riccati(backend, n, m, N, lam, seed):
    rng = np.random.default_rng(seed)
    A, B = rng.uniform(-1, 1, (n, n)), rng.uniform(-1, 1, (n, m))
    x0, T = rng.uniform(-1, 1, n), 1.5
    problem = OptimalControlProblem(
        dynamics=LinearSystem(A, B),
        grid=Grid.uniform(0.0, T, N),
        x0=torch.from_numpy(x0),
        stage_residual=lambda x, u, t: x,
        terminal_residual=lambda x: x,
        control_weight=lam,
        method="euler",
    )
    h = T / N
    controls, objective = lqr_reference(np.eye(n) + h * A, h * B, h, lam, x0, N)
    results = {tr: SOLVERS[backend](problem, tr).solve() for tr in ("single", "multiple")}
    for r in results.values():
        assert np.allclose(r.controls.numpy(), controls, atol=1e-6, rtol=0)
        assert abs(r.objective - objective) <= 1e-8 * abs(objective)
    torch.testing.assert_close(results["single"].controls, results["multiple"].controls, atol=1e-6, rtol=0)
    # a converged multiple-shooting solution is continuous
    assert results["multiple"].constraint_violation <= 1e-8
