import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from flowctl import (
    BlendedDynamics,
    ControlInput,
    ControlledDynamics,
    CountedDynamics,
    Dynamics,
    GaussianMixtureFlow,
    InvalidArgumentError,
    NFECounter,
    NonFiniteError,
    SigmaGrid,
    integrate,
)
from flowctl.schedules import CosineSchedule, LinearSchedule, SigmoidSchedule, StepSchedule
from flowctl.systems import VanDerPol


def _flow(seed=0, k=4):
    gen = torch.Generator().manual_seed(seed)
    flow = GaussianMixtureFlow(torch.randn(k, 6, generator=gen, dtype=torch.float64), 0.5)
    w_a = torch.softmax(torch.randn(k, generator=gen, dtype=torch.float64), 0)
    w_b = torch.softmax(torch.randn(k, generator=gen, dtype=torch.float64), 0)
    return flow, w_a, w_b


def test_protocol_is_structural():
    flow, _, _ = _flow()
    assert isinstance(flow, Dynamics)
    assert isinstance(VanDerPol(), Dynamics)
    assert isinstance(CountedDynamics(flow), Dynamics)


def test_counter_counts_calls_not_batch_elements():
    flow, w_a, _ = _flow()
    model = CountedDynamics(flow)
    model.velocity(torch.zeros(7, 6, dtype=torch.float64), 0.5, w_a)
    model.velocity(torch.zeros(1, 6, dtype=torch.float64), 0.5, w_a)
    assert model.nfe == 2
    model.counter.add(10.5, kind="jvp")
    assert model.nfe == 12.5 and model.counter.by_kind == {"forward": 2, "jvp": 10.5}
    model.counter.reset()
    assert model.nfe == 0
    with pytest.raises(InvalidArgumentError):
        model.counter.add(-1)


def test_shared_counter_sums_over_models():
    flow, w_a, _ = _flow()
    counter = NFECounter()
    a, b = CountedDynamics(flow, counter), CountedDynamics(flow, counter)
    x = torch.zeros(2, 6, dtype=torch.float64)
    a.velocity(x, 0.3, w_a), b.velocity(x, 0.3, w_a)
    assert counter.total == 2


schedules = st.one_of(
    st.just(StepSchedule()),
    st.integers(1, 8).map(LinearSchedule),
    st.integers(1, 8).map(CosineSchedule),
    st.integers(1, 8).map(SigmoidSchedule),
)


@given(schedules, st.integers(4, 20), st.data())
def test_blended_step_costs_one_evaluation_at_alpha_0_or_1_and_two_between(schedule, n, data):
    flow, w_a, w_b = _flow()
    grid = SigmaGrid.create(n)
    switch = data.draw(st.integers(0, n - 1))
    model = CountedDynamics(flow)
    blended = BlendedDynamics(model, schedule, grid, switch)
    x = torch.randn(3, 6, dtype=torch.float64)
    for i in range(n):
        before = model.nfe
        v = blended.velocity(x, grid.t(i), (w_a, w_b))
        alpha = schedule(i - switch)
        assert blended.alpha(grid.t(i)) == alpha
        assert model.nfe - before == (1 if alpha in (0.0, 1.0) else 2)
        expected = (1 - alpha) * flow.velocity(x, grid.t(i), w_a) + alpha * flow.velocity(x, grid.t(i), w_b)
        torch.testing.assert_close(v, expected, rtol=1e-12, atol=1e-12)


def test_direct_switch_run_costs_one_evaluation_per_step():
    flow, w_a, w_b = _flow()
    grid = SigmaGrid.create(12)
    model = CountedDynamics(flow)
    blended = BlendedDynamics(model, StepSchedule(), grid, switch_step=5)
    run = integrate(blended, torch.randn(2, 6, dtype=torch.float64), grid, (w_a, w_b))
    assert model.nfe == 12
    # Identical to running A for 5 steps and B for the rest.
    a = integrate(flow, run.states[0], grid, w_a, keep=[5])
    b = integrate(flow, a.states[5], grid, w_b, start=5)
    assert torch.equal(b.final, run.final)


def test_blended_condition_must_be_a_pair():
    flow, w_a, _ = _flow()
    blended = BlendedDynamics(flow, LinearSchedule(3), SigmaGrid.create(5), 1)
    with pytest.raises(InvalidArgumentError) as err:
        blended.velocity(torch.zeros(1, 6, dtype=torch.float64), 0.5, w_a)
    assert err.value.argument == "cond"


def test_controlled_dynamics_adds_the_control():
    flow, w_a, _ = _flow()
    controlled = ControlledDynamics(flow)
    x = torch.randn(3, 6, dtype=torch.float64)
    u = torch.randn(3, 6, dtype=torch.float64)
    torch.testing.assert_close(controlled.velocity(x, 0.4, ControlInput(w_a, u)), flow.velocity(x, 0.4, w_a) + u)
    # u broadcasts (one control for the whole batch) but may not grow the state
    controlled.velocity(x, 0.4, ControlInput(w_a, u[0]))
    with pytest.raises(InvalidArgumentError) as err:
        controlled.velocity(x, 0.4, ControlInput(w_a, torch.zeros(2, 3, 6, dtype=torch.float64)))
    assert err.value.argument == "cond.u"
    with pytest.raises(NonFiniteError) as err:
        controlled.velocity(x, 0.4, ControlInput(w_a, torch.full((6,), float("nan"), dtype=torch.float64)))
    assert err.value.argument == "cond.u"
    with pytest.raises(InvalidArgumentError) as err:
        controlled.velocity(x, 0.4, w_a)
    assert err.value.argument == "cond"


def test_controlled_dynamics_is_differentiable_in_the_control():
    flow, w_a, _ = _flow()
    controlled = ControlledDynamics(flow)
    x = torch.randn(2, 6, dtype=torch.float64)
    u = torch.zeros(2, 6, dtype=torch.float64, requires_grad=True)
    grid = SigmaGrid.create(4)
    x1 = x + grid.dt(0) * controlled.velocity(x, grid.t(0), ControlInput(w_a, u))
    (g,) = torch.autograd.grad(x1.sum(), u)
    torch.testing.assert_close(g, torch.full_like(g, float(grid.dt(0))))
