import math

import casadi
import pytest
import torch

from flowctl.errors import InvalidArgumentError, NonFiniteError, UnknownNameError
from flowctl.ocp.casadi_backend import CasadiOptions, CasadiShooting
from flowctl.ocp.examples import VAN_DER_POL_OPTIMUM, van_der_pol_problem
from flowctl.errors import SolverError
from flowctl.ocp.problem import OptimalControlProblem
from flowctl.status import SolveStatus
from flowctl.sampling import HEUN, Grid, rk_step
from flowctl.systems import VanDerPol, ops


@pytest.fixture(scope="module")
def vdp_results():
    return {tr: CasadiShooting(van_der_pol_problem(), tr).solve() for tr in ("single", "multiple")}


def casadi_example_objective(controls):
    """The objective of CasADi's direct-shooting example (its own RK4 F, M = 4) at ``controls``."""
    x, u = casadi.SX.sym("x", 2), casadi.SX.sym("u")
    xdot = casadi.vertcat((1 - x[1] ** 2) * x[0] - x[1] + u, x[0])
    f = casadi.Function("f", [x, u], [xdot, casadi.sumsqr(x) + u**2])
    dt, xk, total = 10.0 / 20 / 4, casadi.DM([0, 1]), 0.0
    for uk in controls:
        for _ in range(4):
            k1, q1 = f(xk, uk)
            k2, q2 = f(xk + dt / 2 * k1, uk)
            k3, q3 = f(xk + dt / 2 * k2, uk)
            k4, q4 = f(xk + dt * k3, uk)
            xk = xk + dt / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
            total += float(dt / 6 * (q1 + 2 * q2 + 2 * q3 + q4))
    return total


@pytest.mark.parametrize("transcription", ["single", "multiple"])
def test_van_der_pol_reaches_casadis_optimum(vdp_results, transcription):
    r = vdp_results[transcription]
    assert r.status is SolveStatus.SOLVED and r.success and r.message == "Solve_Succeeded"
    assert abs(r.objective - VAN_DER_POL_OPTIMUM) < 1e-5
    assert abs(r.objective - casadi_example_objective(r.controls[:, 0].tolist())) < 1e-9
    assert r.constraint_violation < 1e-8
    assert r.controls.shape == (20, 1) and r.states.shape == (21, 2)
    assert r.controls.dtype == r.states.dtype == torch.float64
    assert torch.equal(r.states[0], torch.tensor([0.0, 1.0], dtype=torch.float64))
    assert bool((r.states[1:, 0] >= -0.25 - 1e-8).all())
    assert bool((r.controls.abs() <= 1 + 1e-12).all())
    assert r.iterations > 0 and r.nfe == {} and r.wall_time > 0


def test_single_and_multiple_shooting_agree(vdp_results):
    single, multiple = vdp_results["single"], vdp_results["multiple"]
    assert torch.allclose(single.controls, multiple.controls, atol=1e-5, rtol=0)
    assert torch.allclose(single.states, multiple.states, atol=1e-5, rtol=0)


def test_crossed_control_bounds_are_refused_at_construction():
    with pytest.raises(InvalidArgumentError) as err:
        OptimalControlProblem(
            dynamics=VanDerPol(),
            grid=Grid.uniform(0, 1, 2),
            x0=torch.zeros(2, dtype=torch.float64),
            u_lower=1.0,
            u_upper=-1.0,
        )
    assert err.value.argument == "u_lower"


def infeasible_problem():
    # x2' = x1 starts at 0 and |x1'| <= 3 over 0.1 s: x2 cannot climb from 1 to 2.
    return OptimalControlProblem(
        dynamics=VanDerPol(),
        grid=Grid.uniform(0.0, 0.1, 1),
        x0=torch.tensor([0.0, 1.0], dtype=torch.float64),
        stage_residual=lambda x, u, t: x,
        u_lower=-1.0,
        u_upper=1.0,
        x_lower=torch.tensor([-math.inf, 2.0], dtype=torch.float64),
    )


@pytest.mark.parametrize("transcription", ["single", "multiple"])
def test_infeasible_problem_raises_a_typed_error_carrying_the_result(transcription):
    shooting = CasadiShooting(infeasible_problem(), transcription, CasadiOptions(max_iterations=200))
    with pytest.raises(SolverError) as err:
        shooting.solve()
    assert err.value.result.status in (SolveStatus.INFEASIBLE, SolveStatus.FAILED)
    assert err.value.result.constraint_violation > 0.5
    result = shooting.solve(raise_on_failure=False)
    assert result.status in (SolveStatus.INFEASIBLE, SolveStatus.FAILED) and not result.success


def test_bad_arguments_are_refused_by_name():
    with pytest.raises(UnknownNameError) as err:
        CasadiShooting(van_der_pol_problem(), "collocation")
    assert err.value.argument == "transcription"
    zero = torch.zeros(2, dtype=torch.float64)
    grid = Grid.uniform(0, 1, 2)
    additive = OptimalControlProblem(dynamics=VanDerPol(), grid=grid, x0=zero, control="additive")
    with pytest.raises(InvalidArgumentError) as err:
        CasadiShooting(additive)
    assert err.value.argument == "problem"
    with pytest.raises(InvalidArgumentError) as err:
        CasadiOptions(tol=-1.0)
    assert err.value.argument == "tol"
    shooting = CasadiShooting(van_der_pol_problem())
    with pytest.raises(NonFiniteError) as err:
        shooting.solve(torch.tensor([math.nan, 1.0], dtype=torch.float64))
    assert err.value.argument == "x0"


@pytest.mark.parametrize("transcription", ["single", "multiple"])
def test_warm_start_resolves_a_perturbed_x0_no_slower_and_to_the_same_optimum(transcription):
    x1 = torch.tensor([0.01, 0.99], dtype=torch.float64)
    warm = CasadiShooting(van_der_pol_problem(), transcription)
    first = warm.solve()
    again = warm.solve(x1)
    cold = CasadiShooting(van_der_pol_problem(), transcription, CasadiOptions(warm_start=False)).solve(x1)
    assert again.iterations <= first.iterations and again.iterations < cold.iterations
    assert abs(again.objective - cold.objective) < 1e-6
    assert torch.allclose(again.controls, cold.controls, atol=1e-6, rtol=0)
    assert torch.equal(again.states[0], x1)


@pytest.mark.parametrize("transcription", ["single", "multiple"])
def test_objective_and_states_equal_the_torch_discretisation(transcription):
    """Every cost term, a descending uneven grid, Heun x 3 substeps and a time-dependent residual."""
    grid = Grid(torch.tensor([2.0, 1.7, 1.1, 0.6, 0.0], dtype=torch.float64))
    p = OptimalControlProblem(
        dynamics=VanDerPol(),
        grid=grid,
        x0=torch.tensor([0.3, 0.8], dtype=torch.float64),
        stage_residual=lambda x, u, t: ops.concat(x * (1 + t), u),
        terminal_residual=lambda x: x - 0.1,
        terminal_weight=3.0,
        control_weight=0.2,
        control_rate_weight=0.5,
        u_lower=-0.7,
        u_upper=torch.tensor([0.9], dtype=torch.float64),
        method="heun",
        substeps=3,
    )
    r = CasadiShooting(p, transcription).solve()
    x, u, cost = p.x0, r.controls, 0.0
    for k in range(grid.steps):
        t0, t1 = grid.t(k), grid.t(k + 1)
        times = [t0 + (t1 - t0) * j / 3 for j in range(3)] + [t1]
        for a, b in zip(times[:-1], times[1:]):
            x, stages = rk_step(HEUN, lambda s, t: p.dynamics.velocity(s, t, u[k]), x, a, b)
            cost += float(abs(b - a) * sum(s.weight * p.stage_residual(s.x, u[k], s.t).square().sum() for s in stages))
        assert torch.allclose(x, r.states[k + 1], atol=1e-9, rtol=0)  # multiple: defects ~ tol
    cost += 0.2 * float(u.square().sum()) + 0.5 * float((u[1:] - u[:-1]).square().sum())
    cost += 3.0 * float((x - 0.1).square().sum())
    assert abs(r.objective - cost) < 1e-9
