import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from flowctl import Grid, InvalidArgumentError, SigmaGrid, UnknownNameError

steps = st.integers(1, 80)
shifts = st.floats(0.05, 12.0)


@given(steps, shifts)
def test_sigma_grid_equals_diffusers_bit_for_bit(n, shift):
    diffusers = pytest.importorskip("diffusers")
    sched = diffusers.FlowMatchEulerDiscreteScheduler(shift=shift)
    sched.set_timesteps(n)
    grid = SigmaGrid.create(n, shift)
    assert torch.equal(grid.sigmas, sched.sigmas)
    assert torch.equal(grid.timesteps, sched.timesteps)


@given(steps, st.floats(-2.0, 3.0), st.sampled_from(["exponential", "linear"]))
def test_dynamic_shift_grid_equals_diffusers(n, mu, time_shift):
    diffusers = pytest.importorskip("diffusers")
    if time_shift == "linear":
        mu = 0.1 + abs(mu)  # the linear form needs mu > 0 to give a valid sigma grid
    sched = diffusers.FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, time_shift_type=time_shift)
    sched.set_timesteps(n, mu=mu)
    grid = SigmaGrid.create(n, mu=mu, time_shift=time_shift)
    assert torch.equal(grid.sigmas, sched.sigmas)


@given(steps, shifts)
def test_sigma_grid_runs_from_noise_to_data(n, shift):
    grid = SigmaGrid.create(n, shift)
    s = grid.sigmas
    assert s.dtype == torch.float32 and s.numel() == n + 1 == grid.steps + 1
    assert abs(float(s[0]) - 1.0) < 1e-5  # diffusers shifts 1 in float32: it may round
    assert s[-1] == 0.0
    assert bool((s[1:] < s[:-1]).all())
    for i in range(n):
        assert grid.dt(i) == s[i + 1] - s[i] < 0
        assert grid.timestep(i) == grid.timesteps[i]


def test_sd3_grid_known_values():
    # 28 steps at shift 3, the SD3 default; first timesteps as diffusers prints them.
    grid = SigmaGrid.create(28, 3.0)
    assert grid.timesteps[0] == 1000.0
    assert grid.key == (28, 3.0, None, "exponential", 1000)


@given(steps, shifts, st.data())
def test_position_inverts_grid_times(n, shift, data):
    grid = SigmaGrid.create(n, shift)
    i = data.draw(st.integers(0, n))
    assert grid.position(grid.t(i)) == pytest.approx(i, abs=1e-9)
    if i < n:
        mid = (float(grid.t(i)) + float(grid.t(i + 1))) / 2
        assert grid.position(mid) == pytest.approx(i + 0.5, abs=1e-6)


def test_ascending_grid_position():
    grid = Grid.uniform(0.0, 2.0, 4)
    assert grid.position(1.0) == 2.0
    assert grid.position(0.25) == 0.5


@pytest.mark.parametrize(
    "kwargs, argument",
    [
        ({"steps": 0}, "steps"),
        ({"steps": -3}, "steps"),
        ({"steps": 2.5}, "steps"),
        ({"steps": True}, "steps"),
        ({"steps": 10, "shift": 0.0}, "shift"),
        ({"steps": 10, "shift": -1.0}, "shift"),
        ({"steps": 10, "shift": float("nan")}, "shift"),
        ({"steps": 10, "mu": float("inf")}, "mu"),
        ({"steps": 10, "num_train_timesteps": 0}, "num_train_timesteps"),
    ],
)
def test_bad_grid_arguments_name_the_argument(kwargs, argument):
    with pytest.raises(InvalidArgumentError) as err:
        SigmaGrid.create(**kwargs)
    assert err.value.argument == argument
    assert argument in str(err.value)


def test_unknown_time_shift():
    with pytest.raises(UnknownNameError) as err:
        SigmaGrid.create(10, mu=1.0, time_shift="cubic")
    assert err.value.argument == "time_shift"


@pytest.mark.parametrize(
    "values",
    [torch.tensor([1.0]), torch.tensor([1.0, 0.5, 0.7]), torch.tensor([1.0, float("nan")]), torch.ones(2, 2)],
)
def test_bad_grid_values(values):
    with pytest.raises(InvalidArgumentError) as err:
        Grid(values)
    assert err.value.argument == "values"
