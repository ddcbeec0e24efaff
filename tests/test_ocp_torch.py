"""The torch backend: Van der Pol, dense and matrix-free steps, flows at latent scale, transitions, failures."""

import dataclasses
import math

import pytest
import torch

from flowctl import CountedDynamics, GaussianMixtureFlow, NFECounter, NonFiniteError, ShapeError, SigmaGrid, integrate
from flowctl.errors import InvalidArgumentError, UnknownNameError
from flowctl.metrics import psnr
from flowctl.ocp import (
    VAN_DER_POL_OPTIMUM,
    LeastSquaresOptions,
    OptimalControlProblem,
    SolverError,
    SolveStatus,
    TorchOptions,
    TorchShooting,
    van_der_pol_problem,
)
from flowctl.ocp.least_squares import Residuals, _Point, solve_least_squares
from flowctl.ocp.transition import NoiseAnchor, TransitionWeights, VelocityConsistency, transition_problem
from flowctl.sampling import Grid
from flowctl.schedules import LinearSchedule, StepSchedule
from flowctl.systems import CartPole, ControlSystem, DoubleIntegrator, LinearSystem, ops

F64 = torch.float64


@pytest.mark.parametrize("transcription", ["single", "multiple"])
def test_van_der_pol_reaches_the_optimum_to_1e_6(transcription):
    options = TorchOptions(LeastSquaresOptions(tol=1e-8, constraint_tol=1e-8), warm_start=False)
    result = TorchShooting(van_der_pol_problem(), transcription, options).solve()
    assert result.status is SolveStatus.SOLVED
    assert abs(result.objective - VAN_DER_POL_OPTIMUM) < 1e-6
    assert result.constraint_violation < 1e-7  # x1 >= -0.25 (active) and |u| <= 1, by the augmented Lagrangian
    assert float(result.states[1:, 0].min()) > -0.25 - 1e-7
    assert result.states.shape == (21, 2) and result.controls.shape == (20, 1)
    if transcription == "single":  # 20 unknowns: J from one forward product per unknown after recording J'w
        assert result.nfe["forward"] > 0 and result.nfe["jvp"] == 20 * result.nfe["vjp"] > 0
    else:  # the intervals as one batch: 16 calls a pass (4 steps x 4 stages), after a rollout of 320;
        # J from forward sensitivities: f's Jacobian at the stage points, 2 reverse products (one per
        # state component) of each of a pass's 16 calls
        assert result.nfe["forward"] % 16 == 0 and result.nfe["forward"] > 320
        assert "jvp" not in result.nfe and result.nfe["vjp"] % (2 * 16) == 0 and result.nfe["vjp"] > 0
    assert result.iterations > 0 and result.wall_time > 0


LINEAR_QUADRATIC = OptimalControlProblem(
    dynamics=DoubleIntegrator(), grid=Grid.uniform(0.0, 2.0, 6), x0=torch.tensor([1.0, 0.0], dtype=F64),
    stage_residual=lambda x, u, t: ops.concat(x, u), terminal_residual=lambda x: x, method="euler",
)
# 8 unknowns (additive controls), 2 residuals: the dense Jacobian comes from reverse products
UNDERDETERMINED = OptimalControlProblem(
    dynamics=LinearSystem([[0.0, 1.0], [-1.0, 0.0]]), grid=Grid.uniform(0.0, 1.0, 4),
    x0=torch.tensor([1.0, 0.0], dtype=F64), control="additive",
    terminal_residual=lambda x: x - torch.tensor([0.0, 1.0], dtype=F64), method="euler",
)
SMALL = {
    "van der pol, single": (van_der_pol_problem(intervals=4, horizon=4.0, substeps=1), "single"),
    "van der pol, multiple": (van_der_pol_problem(intervals=4, horizon=4.0, substeps=2), "multiple"),
    "linear-quadratic, single": (LINEAR_QUADRATIC, "single"),
    "linear-quadratic, multiple": (LINEAR_QUADRATIC, "multiple"),
    "underdetermined, single": (UNDERDETERMINED, "single"),
}


def _solve(name: str, linear_solver: str, **least_squares):
    problem, transcription = SMALL[name]
    options = LeastSquaresOptions(linear_solver=linear_solver, **least_squares)
    return TorchShooting(problem, transcription, TorchOptions(options, warm_start=False)).solve()


@pytest.mark.parametrize("name", sorted(SMALL))
def test_dense_and_matrix_free_steps_reach_the_same_solution(name):
    # tight tolerances, and conjugate gradients run to round-off (n <= cg_iterations), so the two
    # paths take the same Levenberg-Marquardt steps
    tight = {"tol": 1e-10, "constraint_tol": 1e-9, "cg_tol": 1e-12}
    dense, cg = _solve(name, "dense", **tight), _solve(name, "cg", **tight)
    torch.testing.assert_close(dense.controls, cg.controls, atol=1e-8, rtol=0)
    torch.testing.assert_close(dense.states, cg.states, atol=1e-8, rtol=0)
    assert abs(dense.objective - cg.objective) <= 1e-10 * max(1.0, cg.objective)
    assert dense.iterations == cg.iterations


# every residual block of the batched path: stage costs, control and rate penalties, terminal
# residual, defects, bounds on the controls and on the states (two-sided)
EVERY_BLOCK = OptimalControlProblem(
    dynamics=van_der_pol_problem().dynamics, grid=Grid.uniform(0.0, 3.0, 5), x0=torch.tensor([0.5, 1.0], dtype=F64),
    stage_residual=lambda x, u, t: ops.concat(x, u), terminal_residual=lambda x: x - 0.1, terminal_weight=2.0,
    control_weight=0.1, control_rate_weight=0.5, u_lower=-0.8, u_upper=0.8,
    x_lower=torch.tensor([-0.5, -math.inf], dtype=F64), x_upper=torch.tensor([math.inf, 1.15], dtype=F64),
    method="rk4", substeps=2,
)


@dataclasses.dataclass(frozen=True)
class _Steered(ControlSystem):
    """Two inputs, time-varying: ``x' = (1 + t / 5) (x2 + u1, -sin(x1) + u2 (1 + x1^2))`` (``t``
    a number, or the batched path's ``(N, 1)`` column of times)."""

    state_names = ("x1", "x2")
    control_names = ("u1", "u2")

    def f(self, x, u, t):
        x1, x2 = ops.split(x)
        u1, u2 = ops.split(u)
        return ops.stack([x2 + u1, -ops.sin(x1) + u2 * (1 + x1**2)]) * (1 + t / 5)


BATCHED = {
    "van der pol": van_der_pol_problem(intervals=6, horizon=6.0, substeps=2),
    "every block": EVERY_BLOCK,
    "cart-pole": OptimalControlProblem(
        dynamics=CartPole(), grid=Grid.uniform(0.0, 1.0, 4), x0=torch.tensor([0.0, 0.0, 0.2, 0.0], dtype=F64),
        stage_residual=lambda x, u, t: ops.concat(x, 0.1 * u), terminal_residual=lambda x: x, method="rk4", substeps=2,
    ),
    "two inputs, time-varying, no stage cost": OptimalControlProblem(
        dynamics=_Steered(), grid=Grid.uniform(0.5, 2.0, 3), x0=torch.tensor([0.3, -0.2], dtype=F64),
        terminal_residual=lambda x: x - 0.1, control_weight=0.1, method="rk4", substeps=3,
    ),
    "heun, one interval": OptimalControlProblem(
        dynamics=DoubleIntegrator(), grid=Grid.uniform(0.0, 1.0, 1), x0=torch.tensor([1.0, 0.0], dtype=F64),
        stage_residual=lambda x, u, t: ops.concat(x, u), terminal_residual=lambda x: x, method="heun", substeps=3,
    ),
}


def _multiple(problem, batch_intervals, **least_squares):
    options = TorchOptions(LeastSquaresOptions(linear_solver="dense", **least_squares), warm_start=False, batch_intervals=batch_intervals)
    return TorchShooting(problem, "multiple", options)


@pytest.mark.parametrize("name", sorted(BATCHED))
def test_forward_sensitivities_equal_the_autograd_jacobian(name):
    """Dense steps' J (forward sensitivities, the pass not recorded) against J from reverse
    products through the recorded pass; and their normal equations, the objective rows' J'J
    formed from the intervals' blocks."""
    problem = BATCHED[name]
    solver = _multiple(problem, batch_intervals=True)
    gen = torch.Generator().manual_seed(0)  # a point off the dynamics, some bounds violated
    controls = 0.5 * torch.randn(problem.intervals, *problem.control_shape, generator=gen, dtype=F64)
    nodes = solver.rollout(problem.x0, controls)[1:] + 0.1 * torch.randn(problem.intervals, *problem.x0.shape, generator=gen, dtype=F64)
    x0, z, counter = problem.x0, [controls, nodes], NFECounter()
    structured = _Point(lambda z: solver._residuals(x0, z, record=False), z, counter)
    generic = _Point(lambda z: dataclasses.replace(solver._residuals(x0, z), jacobian=None, objective_gram=None), z, counter)
    with torch.enable_grad():  # the intervals' pass is not recorded: their stage costs carry no graph
        assert not solver._residuals(x0, [t.clone().requires_grad_(True) for t in z], record=False).objective[0].requires_grad
    torch.testing.assert_close(structured.residual, generic.residual, atol=0, rtol=0)
    jac = generic.jacobian()
    torch.testing.assert_close(structured.jacobian(), jac, atol=1e-10, rtol=0)
    r, d = torch.randn(2, len(jac), generator=gen, dtype=F64)
    d[: structured.objective.numel()] = 1.0  # a merit's derivative: 1 on the objective rows
    for ours, exact in zip(structured.normal_equations(r, d), (jac.T @ (d * r), (d[:, None] * jac).T @ (d[:, None] * jac))):
        torch.testing.assert_close(ours, exact, atol=1e-10, rtol=0)


@pytest.mark.parametrize("name", sorted(BATCHED))
def test_batched_intervals_solve_like_interval_by_interval(name):
    tight = {"tol": 1e-10, "constraint_tol": 1e-9}
    batched = _multiple(BATCHED[name], True, **tight).solve()
    one_by_one = _multiple(BATCHED[name], False, **tight).solve()
    torch.testing.assert_close(batched.controls, one_by_one.controls, atol=1e-8, rtol=0)
    torch.testing.assert_close(batched.states, one_by_one.states, atol=1e-8, rtol=0)
    assert abs(batched.objective - one_by_one.objective) <= 1e-10 * max(1.0, one_by_one.objective)
    stages = 2 if name.startswith("heun") else 4
    per_pass = stages * BATCHED[name].substeps  # model calls: one per stage for all intervals at once
    assert batched.nfe["forward"] % per_pass == 0 and one_by_one.nfe["forward"] % (per_pass * BATCHED[name].intervals) == 0


def test_dense_jacobians_count_one_product_per_direction():
    # n = 6 <= m = 20: per linearisation one reverse pass records J'w, then 6 forward products
    result = _solve("linear-quadratic, single", "dense")
    assert result.nfe["jvp"] == 6 * result.nfe["vjp"] > 0
    # n = 8 > m = 2: 2 reverse products of the 4 model calls of a pass, and no forward products
    result = _solve("underdetermined, single", "dense")
    assert "jvp" not in result.nfe and result.nfe["vjp"] % (2 * 4) == 0 and result.nfe["vjp"] > 0


def test_auto_solves_densely_up_to_the_threshold():
    options = LeastSquaresOptions()
    assert (options.linear_solver, options.dense_max_unknowns) == ("auto", 100)
    assert options.linear_solver_for(100) == "dense" and options.linear_solver_for(101) == "cg"
    assert LeastSquaresOptions(linear_solver="dense").linear_solver_for(10**6) == "dense"
    assert LeastSquaresOptions(linear_solver="cg").linear_solver_for(1) == "cg"

    def fn(z):
        return Residuals([z[0] - 1.0], [], [])

    for threshold, expected in ((3, "dense"), (2, "cg")):
        options = LeastSquaresOptions(dense_max_unknowns=threshold)
        outcome = solve_least_squares(fn, [torch.zeros(3, dtype=F64)], options, NFECounter())
        assert outcome.linear_solver == expected and outcome.status == "solved"
        torch.testing.assert_close(outcome.z[0], torch.ones(3, dtype=F64))


@pytest.mark.parametrize(
    "kwargs, error",
    [
        ({"linear_solver": "cholesky"}, UnknownNameError),
        ({"linear_solver": None}, UnknownNameError),
        ({"dense_max_unknowns": -1}, InvalidArgumentError),
        ({"dense_max_unknowns": 2.5}, InvalidArgumentError),
    ],
)
def test_bad_linear_solver_options_are_refused_by_name(kwargs, error):
    with pytest.raises(error) as err:
        LeastSquaresOptions(**kwargs)
    assert err.value.argument == next(iter(kwargs))


def _mixture(dtype=torch.float64, k=16, shape=(2, 6, 6), seed=0):
    gen = torch.Generator().manual_seed(seed)
    means = torch.rand(k, *shape, generator=gen, dtype=dtype) * 2 - 1
    flow = GaussianMixtureFlow(means, 0.5)
    logits = torch.randn(k, generator=gen, dtype=dtype)
    w_a = torch.softmax(logits, 0)
    w_b = torch.softmax(logits + 2 * torch.randn(k, generator=gen, dtype=dtype), 0)
    noise = torch.randn(3, *shape, generator=gen, dtype=dtype)
    return flow, w_a, w_b, noise


@pytest.mark.parametrize("transcription", ["single", "multiple"])
def test_noise_anchored_shooting_lands_closer_to_the_reference_than_a_direct_switch(transcription):
    flow, w_a, w_b, noise = _mixture()
    grid = SigmaGrid.create(20, 3.0)
    k, horizon = 6, 3
    run_a = integrate(flow, noise, grid, w_a, keep=[k])
    reference = integrate(flow, noise, grid, w_b, keep="final").final
    direct = integrate(flow, run_a.states[k], grid, w_b, start=k, keep="final").final

    counter = NFECounter()
    model = CountedDynamics(flow, counter)
    anchor = NoiseAnchor(model, w_b, noise, float(grid.sigmas[k + horizon]), segments=4, multiple_shooting=True)
    problem = transition_problem(
        model, grid, run_a.states[k], k, w_a, w_b,
        horizon=horizon, schedule=StepSchedule(), terminal=anchor, weights=TransitionWeights(effort=1e-4),
    )
    result = TorchShooting(problem, transcription, counter=counter).solve()
    shot = integrate(flow, result.states[-1], grid, w_b, start=k + horizon, keep="final").final
    assert float(psnr(shot, reference, data_range=2).mean()) > float(psnr(direct, reference, data_range=2).mean()) + 3
    assert result.constraint_violation <= 1e-6  # the anchor's segment defects (and the transition's)
    assert counter.by_kind["forward"] == result.nfe["forward"] > 0


def test_blended_transition_counts_two_evaluations_inside_the_blend():
    flow, w_a, w_b, noise = _mixture()
    grid = SigmaGrid.create(10)
    counter = NFECounter()
    model = CountedDynamics(flow, counter)
    consistency = VelocityConsistency(model, w_b, float(grid.sigmas[5]), float(grid.dt(5)))
    problem = transition_problem(model, grid, noise, 2, w_a, w_b, horizon=3, schedule=LinearSchedule(2), terminal=consistency)
    solver = TorchShooting(problem, "single", counter=counter)
    counter.reset()
    with torch.no_grad():
        solver.rollout(noise, torch.zeros(3, *noise.shape, dtype=noise.dtype))
    assert counter.total == 1 + 2 + 1  # alpha = 0, 1/2, 1 over the three steps


def test_latent_scale_state_without_dense_matrices():
    """A 1x16x128x128 state (SD3 at 1024 px): two Levenberg-Marquardt steps run in bounded memory."""
    shape = (1, 16, 128, 128)
    gen = torch.Generator().manual_seed(0)
    flow = GaussianMixtureFlow(torch.randn(2, *shape[1:], generator=gen), 0.5)
    w = torch.tensor([0.5, 0.5])
    grid = SigmaGrid.create(28)
    noise = torch.randn(shape, generator=gen)
    target = torch.zeros(shape)
    problem = OptimalControlProblem(
        dynamics=flow, grid=Grid(grid.values[10:13]), x0=noise, control="additive", cond=w,
        terminal_residual=lambda x: x - target, control_weight=1e-3, method="euler",
    )
    options = TorchOptions(LeastSquaresOptions(max_iterations=2, cg_iterations=3))
    result = TorchShooting(problem, "multiple", options).solve(raise_on_failure=False)
    assert result.status is SolveStatus.MAX_ITERATIONS
    assert result.controls.shape == (2, *shape) and torch.isfinite(result.controls).all()
    assert result.objective < float((noise - target).square().sum())


def test_nfe_bound_stops_the_solve_with_a_typed_error():
    flow, w_a, w_b, noise = _mixture()
    grid = SigmaGrid.create(10)
    problem = OptimalControlProblem(
        dynamics=flow, grid=Grid(grid.values[2:6]), x0=noise, control="additive", cond=w_b,
        terminal_residual=lambda x: x, control_weight=1e-3, method="euler",
    )
    solver = TorchShooting(problem, "single", TorchOptions(LeastSquaresOptions(max_nfe=50)))
    with pytest.raises(SolverError) as err:
        solver.solve()
    assert err.value.result.status is SolveStatus.NFE_LIMIT
    result = solver.solve(raise_on_failure=False)
    assert result.status is SolveStatus.NFE_LIMIT and not result.success
    assert sum(result.nfe.values()) < 50 + 4 * 60  # stops at the first check past the bound


def test_bad_input_is_refused_by_name():
    problem = van_der_pol_problem()
    solver = TorchShooting(problem, "single")
    with pytest.raises(NonFiniteError) as err:
        solver.solve(torch.tensor([float("nan"), 1.0], dtype=torch.float64))
    assert err.value.argument == "x0"
    with pytest.raises(ShapeError) as err:
        solver.solve(torch.zeros(3, dtype=torch.float64))
    assert err.value.argument == "x0"
    with pytest.raises(UnknownNameError) as err:
        TorchShooting(problem, "collocation")
    assert err.value.argument == "transcription"


def test_divergent_dynamics_fail_with_a_typed_error():
    class Explode:
        def velocity(self, x, t, cond=None):
            return torch.exp(50 * x)

    problem = OptimalControlProblem(
        dynamics=Explode(), grid=Grid.uniform(0.0, 1.0, 3), x0=torch.ones(1, 2, dtype=torch.float64) * 20,
        control="additive", terminal_residual=lambda x: x, method="euler",
    )
    with pytest.raises(SolverError) as err:
        TorchShooting(problem, "single").solve()
    assert err.value.result.status is SolveStatus.FAILED
