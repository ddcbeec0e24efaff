"""The matrix-free torch backend: Van der Pol, flows at latent scale, transitions, failures."""

import pytest
import torch

from flowctl import CountedDynamics, GaussianMixtureFlow, NFECounter, NonFiniteError, ShapeError, SigmaGrid, integrate
from flowctl.errors import UnknownNameError
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
from flowctl.ocp.transition import NoiseAnchor, TransitionWeights, VelocityConsistency, transition_problem
from flowctl.sampling import Grid
from flowctl.schedules import LinearSchedule, StepSchedule


@pytest.mark.parametrize("transcription", ["single", "multiple"])
def test_van_der_pol_within_1e_3_of_the_optimum(transcription):
    result = TorchShooting(van_der_pol_problem(), transcription).solve()
    assert result.status is SolveStatus.SOLVED
    assert abs(result.objective - VAN_DER_POL_OPTIMUM) < 1e-3
    assert result.constraint_violation < 1e-5  # x1 >= -0.25 (active) and |u| <= 1, by the augmented Lagrangian
    assert float(result.states[1:, 0].min()) > -0.25 - 1e-5
    assert result.nfe["forward"] > 0 and result.nfe["jvp"] > 0 and result.nfe["vjp"] > 0
    assert result.iterations > 0 and result.wall_time > 0


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
