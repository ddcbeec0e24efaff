"""The secant correction and the planners' budgets, on the exact Gaussian-mixture flow."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from flowctl import GaussianMixtureFlow, SigmaGrid, integrate
from flowctl.dynamics import NFECounter
from flowctl.errors import BudgetExceededError, InvalidArgumentError, ShapeError
from flowctl.ocp import LeastSquaresOptions
from flowctl.status import SolveStatus
from flowctl.sampling import ResumePoint
from flowctl.systems.gaussian_mixture import smooth_image_means
from flowctl.transitions import DirectSwitch, SecantCorrection, Shooting, ShootingMPC, TransitionRequest, make_strategy

STEPS, K = 12, 4
COST = {"forward": 1.0, "jvp": 2.5, "vjp": 1.5}


@pytest.fixture(scope="module")
def setup():
    gen = torch.Generator().manual_seed(3)
    flow = GaussianMixtureFlow(smooth_image_means(24, 3, 8, gen), 0.4)
    w_a = torch.softmax(torch.randn(24, generator=gen, dtype=torch.float64), 0)
    w_b = torch.softmax(torch.log(w_a) + 0.5 * torch.randn(24, generator=gen, dtype=torch.float64), 0)
    grid = SigmaGrid.create(STEPS, 3.0)
    noise = torch.randn(2, 3, 8, 8, generator=gen, dtype=torch.float64)
    run_a = integrate(flow, noise, grid, w_a)
    reference = integrate(flow, noise, grid, w_b, keep="final").final
    return flow, w_a, w_b, run_a, reference


def request(setup, *, velocity=True, cost=None):
    flow, w_a, w_b, run_a, _ = setup
    point = run_a.resume_point(K)
    if not velocity:
        point = ResumePoint(point.state, K, point.grid, point.method, point.noise)
    return TransitionRequest(flow, point, w_a, w_b, cost=cost)


def test_the_correction_costs_one_evaluation_more_than_the_direct_switch(setup):
    # (its quality is measured on the embedded model: tests/test_embedded.py, docs/cache.md)
    direct = DirectSwitch().run(request(setup))
    secant = SecantCorrection().run(request(setup))
    assert secant.status is SolveStatus.SOLVED and secant.fallbacks == 0
    assert secant.nfe == {"forward": direct.nfe["forward"] + 1}
    assert not torch.equal(secant.final, direct.final)


def test_a_zero_correction_is_the_direct_switch_bit_for_bit(setup):
    direct = DirectSwitch().run(request(setup))
    for planner in (SecantCorrection(budget=0.0), SecantCorrection(min_reduction=1.0)):
        result = planner.run(request(setup))
        assert torch.equal(result.final, direct.final)
    assert SecantCorrection(budget=0.0).run(request(setup)).status is SolveStatus.BUDGET
    assert SecantCorrection(min_reduction=1.0).run(request(setup)).fallbacks == 2  # both samples


def test_the_offset_costs_nothing_beyond_the_direct_switch_and_steps_on_the_straight_flow_model(setup):
    flow, w_a, w_b, run_a, _ = setup
    req = request(setup)
    direct = DirectSwitch().run(req)
    offset = make_strategy("offset").run(req)
    assert offset.nfe == direct.nfe and offset.status is SolveStatus.SOLVED and offset.fallbacks == 0
    # by hand: the full straight-flow offset, B's velocity there by the straight-flow Jacobian I / s
    grid, x = req.grid, req.point.state
    s = grid.t(K)
    v_b = flow.velocity(x, s, w_b)
    delta = -s * (1 - s) * (v_b - req.point.velocity)
    x = x + delta + (grid.t(K + 1) - s) * (v_b + delta / s)
    for k in range(K + 1, grid.steps):
        x = x + (grid.t(k + 1) - grid.t(k)) * flow.velocity(x, grid.t(k), w_b)
    torch.testing.assert_close(offset.final, x, rtol=1e-12, atol=1e-12)
    assert not torch.equal(offset.final, direct.final)


def test_the_offset_without_a_cached_velocity_needs_one_evaluation(setup):
    direct = DirectSwitch().run(request(setup))
    short = SecantCorrection(budget=0.0, trial=False).run(request(setup, velocity=False))
    assert short.status is SolveStatus.BUDGET and torch.equal(short.final, direct.final)
    missing = SecantCorrection(budget=1.0, trial=False).run(request(setup, velocity=False))
    assert missing.nfe["forward"] == direct.nfe["forward"] + 1
    torch.testing.assert_close(missing.final, SecantCorrection(trial=False).run(request(setup)).final)


class _Misleading:
    """B's field as the flow has it at A's state, but pushing against any move away from it: the
    straight-flow correction makes the noise-consistency residual worse."""

    def __init__(self, flow, x):
        self.flow, self.x = flow, x

    def velocity(self, y, t, cond):
        return self.flow.velocity(self.x, t, cond) - 50.0 * (y - self.x)


def test_the_safeguard_falls_back_where_the_correction_is_wrong(setup):
    flow, w_a, w_b, run_a, _ = setup
    point = run_a.resume_point(K)
    req = TransitionRequest(_Misleading(flow, point.state), point, w_a, w_b)
    result = SecantCorrection().run(req)
    assert result.fallbacks == 2
    assert torch.equal(result.final, DirectSwitch().run(req).final)


def test_a_missing_velocity_is_evaluated_within_the_budget(setup):
    kept = SecantCorrection(budget=2.0).run(request(setup))
    missing = SecantCorrection(budget=2.0).run(request(setup, velocity=False))
    assert missing.nfe["forward"] == kept.nfe["forward"] + 1
    torch.testing.assert_close(missing.final, kept.final)
    short = SecantCorrection(budget=1.0).run(request(setup, velocity=False))
    assert short.status is SolveStatus.BUDGET and "budget" in short.message
    assert short.nfe["forward"] == DirectSwitch().run(request(setup)).nfe["forward"]


@settings(max_examples=12, deadline=None)
@given(budget=st.floats(min_value=0.0, max_value=60.0), planner=st.sampled_from(["secant", "offset", "shooting", "multiple-shooting", "mpc"]))
def test_budgets_are_never_exceeded(setup, budget, planner):
    direct = DirectSwitch().run(request(setup)).nfe["forward"]
    strategy = make_strategy(planner, shooting_iterations=2, budget=budget)
    result = strategy.run(request(setup, cost=COST))
    spent = result.nfe_equivalents(COST)
    blended = 2.0 * request(setup).horizon if planner in ("shooting", "multiple-shooting", "mpc") else 0.0
    # planning within the budget; the continuation itself at most the blend's extra side per step
    assert spent <= direct + budget + blended + 1e-9
    if result.status is SolveStatus.BUDGET:
        assert "budget" in result.message


def test_a_counter_refuses_a_call_past_its_budget():
    counter = NFECounter(budget=3.0, cost={"forward": 1.0, "jvp": 2.0})
    counter.add(1)
    with pytest.raises(BudgetExceededError):
        counter.add(1, kind="jvp")
        counter.add(1, kind="jvp")
    assert counter.equivalents == 3.0


@pytest.mark.parametrize("budget", [-1.0, math.nan, math.inf, "1", None, True])
def test_a_bad_budget_is_a_typed_error(budget):
    makers = [SecantCorrection, Shooting, lambda budget: make_strategy("secant", budget=budget)]
    if budget is not None:  # a counter without a budget counts without a cap
        makers.append(lambda budget: NFECounter(budget=budget))
    for make in makers:
        with pytest.raises(InvalidArgumentError, match="budget"):
            make(budget=budget)


def test_bad_costs_and_velocities_are_typed_errors(setup):
    flow, w_a, w_b, run_a, _ = setup
    with pytest.raises(InvalidArgumentError, match="cost"):
        request(setup, cost={"jvp": 2.0})
    with pytest.raises(InvalidArgumentError, match="cost"):
        request(setup, cost={"forward": math.nan})
    point = run_a.resume_point(K)
    with pytest.raises(ShapeError, match="velocity"):  # the resume point refuses it when made
        ResumePoint(point.state, K, point.grid, point.method, point.noise, velocity=point.state[:1])


@pytest.mark.parametrize("transcription", ["single", "multiple"])
def test_shooting_and_mpc_on_the_surrogate_cost_one_evaluation_more_than_the_direct_switch(setup, transcription):
    *_, reference = setup
    direct = DirectSwitch().run(request(setup))
    shooting = Shooting(transcription, solver=LeastSquaresOptions(max_iterations=3))
    for planner in (shooting, ShootingMPC(shooting)):
        result = planner.run(request(setup))
        assert result.nfe == {"forward": direct.nfe["forward"] + 1}  # no JVP, no VJP, no blended second side
        assert result.status is not SolveStatus.BUDGET and "planning" in result.phases
    starved = Shooting(transcription, budget=0.0).run(request(setup))
    assert starved.status is SolveStatus.BUDGET and starved.nfe == direct.nfe


def test_shooting_on_the_exact_model_that_does_not_fit_continues_as_the_direct_switch(setup):
    direct = DirectSwitch().run(request(setup))
    exact = Shooting(solver=LeastSquaresOptions(max_iterations=2), model="exact")
    for planner in (exact, ShootingMPC(exact)):
        result = planner.run(request(setup))
        assert result.status is SolveStatus.BUDGET
        assert torch.equal(result.final, direct.final)


def test_the_mpc_step_makes_no_host_synchronisation(setup, monkeypatch):
    """Inner loops trust what the boundary checked: the tracking QP of each step (linearisation,
    structured solve, layout) converts no tensor to a Python value."""
    conversions = []
    for name in ("__bool__", "__float__", "item"):
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _original=original, _name=name):
            conversions.append(_name)
            return _original(self, *args)

        monkeypatch.setattr(torch.Tensor, name, counted)
    steps = []
    correction = ShootingMPC._correction

    def watched(self, *args):
        before = len(conversions)
        out = correction(self, *args)
        steps.append(len(conversions) - before)
        return out

    monkeypatch.setattr(ShootingMPC, "_correction", watched)
    ShootingMPC(Shooting(solver=LeastSquaresOptions(max_iterations=1))).run(request(setup))
    assert len(steps) == request(setup).horizon and steps == [0] * len(steps)
