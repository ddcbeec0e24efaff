import pytest
import torch

from flowctl import FlowctlError, GaussianMixtureFlow, InvalidArgumentError, SigmaGrid, integrate, metrics
from flowctl.errors import ShapeError
from flowctl.ocp import LeastSquaresOptions
from flowctl.systems.gaussian_mixture import smooth_image_means
from flowctl.dynamics import NFECounter
from flowctl.jacobians import ColouredJacobian, DiagonalJacobian
from flowctl.transitions.closed_form import NoiseConsistencyField
from flowctl.transitions.shooting import _image_batch_estimate
from flowctl.transitions import (
    Blend,
    ClosedFormController,
    DirectSwitch,
    Shooting,
    ShootingMPC,
    Strategy,
    TransitionRequest,
)

STEPS, K, H = 12, 3, 3
UNCAPPED = 1e9  # a planning budget no test here reaches


@pytest.fixture(scope="module")
def setup():
    gen = torch.Generator().manual_seed(0)
    flow = GaussianMixtureFlow(smooth_image_means(16, 3, 8, gen), 0.5)
    logits = torch.randn(16, generator=gen, dtype=torch.float64)
    w_a = torch.softmax(logits, 0)
    w_b = torch.softmax(logits + 2 * torch.randn(16, generator=gen, dtype=torch.float64), 0)
    grid = SigmaGrid.create(STEPS, 3.0)
    noise = torch.randn(2, 3, 8, 8, generator=gen, dtype=torch.float64)
    run_a = integrate(flow, noise, grid, w_a)
    reference = integrate(flow, noise, grid, w_b, keep="final").final
    return flow, w_a, w_b, run_a, reference


def request(setup, cond_b=None, horizon=H):
    flow, w_a, w_b, run_a, _ = setup
    return TransitionRequest(flow, run_a.resume_point(K), w_a, w_b if cond_b is None else cond_b, horizon=horizon)


def test_every_strategy_meets_the_interface():
    for s in (DirectSwitch(), Blend(), ClosedFormController(), Shooting(budget=UNCAPPED, model="exact"), ShootingMPC()):
        assert isinstance(s, Strategy) and s.name


@pytest.mark.parametrize("strategy", [DirectSwitch(), Blend("linear"), Blend("sigmoid"), ClosedFormController(eta=0.0)])
def test_same_prompt_continuation_equals_the_uninterrupted_run_bit_for_bit(setup, strategy):
    flow, w_a, _, run_a, _ = setup
    result = strategy.run(request(setup, cond_b=w_a))
    assert torch.equal(result.final, run_a.final)


def test_nfe_counts_follow_the_blend(setup):
    direct = DirectSwitch().run(request(setup))
    assert direct.nfe == {"forward": STEPS - K}
    linear = Blend("linear").run(request(setup))
    # alpha = 0 at the switch (A only), 1/3 and 2/3 (both prompts), then B alone
    assert linear.nfe == {"forward": STEPS - K + H - 1}
    assert set(linear.phases) == {"continuation"} and linear.seconds >= linear.phases["continuation"]


def test_closed_form_controller_holds_the_line_through_the_noise(setup):
    flow, w_a, w_b, run_a, _ = setup
    grid, eps = run_a.grid, run_a.noise
    # a state on the straight line through eps: at eta = 1 the data estimate it implies is kept
    x0 = torch.zeros_like(eps)
    s = float(grid.t(K))
    field = NoiseConsistencyField(flow, eps, 1.0, grid, K, STEPS - 1)
    x = integrate(field, (1 - s) * x0 + s * eps, grid, w_b, start=K, keep=[STEPS - 1]).states[STEPS - 1]
    s_end = float(grid.t(STEPS - 1))
    # up to the float32 rounding of the grid's steps (diffusers' sigmas are float32)
    torch.testing.assert_close((x - s_end * eps) / (1 - s_end), x0, atol=1e-6, rtol=0)


def test_noise_anchored_shooting_beats_the_direct_switch(setup):
    *_, reference = setup
    req = request(setup)
    direct = DirectSwitch().run(req)
    shot = Shooting("single", "noise", solver=LeastSquaresOptions(max_iterations=15), budget=UNCAPPED, model="exact").run(req)
    psnr = lambda x: float(metrics.psnr(x, reference, data_range=2.0).mean())  # noqa: E731
    assert psnr(shot.final) > psnr(direct.final) + 3.0
    assert shot.phases["planning"] > 0 and shot.nfe["vjp"] > 0
    assert shot.nfe_equivalents({"forward": 1.0, "jvp": 2.0, "vjp": 2.0}) > shot.nfe["forward"]


def test_multiple_shooting_executes_its_controls(setup):
    result = Shooting("multiple", "noise", solver=LeastSquaresOptions(max_iterations=3), budget=UNCAPPED, model="exact").run(request(setup))
    assert result.final.shape == setup[3].final.shape and bool(torch.isfinite(result.final).all())
    assert result.status.value in ("solved", "max_iterations")


def test_shooting_mpc_follows_its_plan_on_an_exact_model(setup):
    req = request(setup)
    solver = LeastSquaresOptions(max_iterations=4)
    planned = Shooting(solver=solver, budget=UNCAPPED, model="exact").run(req)
    combined = ShootingMPC(Shooting(solver=solver, budget=UNCAPPED, model="exact")).run(req)
    # the model is exact: the MPC's corrections only answer its own (diagonal, frozen)
    # linearisation's prediction error, so it stays near the plan and adds its JVPs
    assert float((combined.final - planned.final).norm() / planned.final.norm()) < 1e-2
    assert combined.nfe["jvp"] > planned.nfe["jvp"] and combined.phases["control"] > 0


def test_shooting_mpc_replans_when_the_state_drifts(setup):
    req = request(setup)
    solver = LeastSquaresOptions(max_iterations=2)
    calm = ShootingMPC(Shooting(solver=solver, budget=UNCAPPED, model="exact")).run(req)
    nervous = ShootingMPC(Shooting(solver=solver, budget=UNCAPPED, model="exact"), replan_tolerance=1e-15).run(req)
    assert nervous.nfe["vjp"] > calm.nfe["vjp"]  # each re-plan differentiates the model again


def test_bad_requests_are_typed_errors(setup):
    flow, w_a, w_b, run_a, _ = setup
    with pytest.raises(InvalidArgumentError) as err:
        TransitionRequest(flow, run_a.resume_point(K), w_a, w_b, horizon=0)
    assert err.value.argument == "horizon"
    with pytest.raises(InvalidArgumentError):
        TransitionRequest(flow, run_a.resume_point(STEPS), w_a, w_b)
    assert TransitionRequest(flow, run_a.resume_point(STEPS - 2), w_a, w_b, horizon=8).horizon == 2
    no_noise = type(run_a.resume_point(K))(run_a.states[K], K, run_a.grid)
    with pytest.raises(InvalidArgumentError) as err:
        ClosedFormController().run(TransitionRequest(flow, no_noise, w_a, w_b))
    assert err.value.argument == "point"
    with pytest.raises(InvalidArgumentError):
        Blend("step")
    with pytest.raises(InvalidArgumentError):
        ClosedFormController(eta=1.5)
    with pytest.raises(InvalidArgumentError):
        Shooting(terminal="elsewhere")


def test_shooting_mpc_needs_image_batches():
    flow = GaussianMixtureFlow(torch.randn(4, 6, dtype=torch.float64), 0.5)
    w = torch.full((4,), 0.25, dtype=torch.float64)
    grid = SigmaGrid.create(6, 3.0)
    run = integrate(flow, torch.randn(2, 6, dtype=torch.float64), grid, w)
    with pytest.raises(ShapeError):
        ShootingMPC(Shooting(solver=LeastSquaresOptions(max_iterations=1), budget=UNCAPPED, model="exact")).run(TransitionRequest(flow, run.resume_point(2), w, w))


class _NaNAboveNinety:
    """A broken model: NaN velocities at sigma > 0.9."""

    def __init__(self, flow):
        self.flow = flow

    def velocity(self, x, t, cond):
        v = self.flow.velocity(x, t, cond)
        return v * float("nan") if float(t) > 0.9 else v


def test_a_model_that_returns_nan_is_a_typed_error(setup):
    flow, w_a, w_b, run_a, _ = setup
    broken = TransitionRequest(_NaNAboveNinety(flow), run_a.resume_point(1), w_a, w_b)
    with pytest.raises(FlowctlError):  # the mixture refuses the NaN state the broken model made
        DirectSwitch().run(broken)
    with pytest.raises(FlowctlError):  # the noise anchor evaluates B up to sigma = 1
        Shooting(solver=LeastSquaresOptions(max_iterations=2), budget=UNCAPPED, model="exact").run(TransitionRequest(_NaNAboveNinety(flow), run_a.resume_point(K), w_a, w_b))


@pytest.mark.parametrize("estimator", [DiagonalJacobian(radius=1), ColouredJacobian(block=(2, 2), radius=0)])
def test_one_coloured_estimate_serves_a_whole_image_batch(estimator):
    # a field local to 2x2 patches (all channels): radius 1 or patch blocks are exact for it
    def field(x):
        b, c, h, w = x.shape
        patch_sums = torch.nn.functional.avg_pool2d(x.sum(1, keepdim=True), 2) * 4
        return torch.tanh(x) * torch.nn.functional.interpolate(patch_sums, scale_factor=2, mode="nearest")

    x = torch.randn(3, 2, 4, 4, dtype=torch.float64)
    counter = NFECounter()
    estimate = _image_batch_estimate(estimator, (field, 2), x, counter)
    dense = torch.autograd.functional.jacobian(lambda y: field(y.reshape(x.shape)).reshape(-1), x.reshape(-1))
    if estimate.structure == "diagonal":
        assert counter.by_kind["jvp"] == 2 * 2 * 4  # C (r+1)^2 colours, two model JVPs each
        torch.testing.assert_close(estimate.data, dense.diagonal())
    else:
        assert counter.by_kind["jvp"] == 2 * 2 * 4  # C (bh bw) colours, two sides
        torch.testing.assert_close(estimate.to_dense(), dense)


def test_shooting_mpc_with_patch_blocks(setup):
    solver = LeastSquaresOptions(max_iterations=2)
    result = ShootingMPC(Shooting(solver=solver, budget=UNCAPPED, model="exact"), jacobian=ColouredJacobian(block=(2, 2), radius=0)).run(request(setup))
    assert bool(torch.isfinite(result.final).all()) and result.nfe["jvp"] > 0
    with pytest.raises(InvalidArgumentError):
        ShootingMPC(jacobian=ColouredJacobian(radius=1))
