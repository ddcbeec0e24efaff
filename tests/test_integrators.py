import numpy as np
import pytest
import scipy.linalg
import scipy.stats
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from flowctl import (
    GaussianMixtureFlow,
    Grid,
    IntegrationError,
    InvalidArgumentError,
    NonFiniteError,
    ShapeError,
    SigmaGrid,
    UnknownNameError,
    integrate,
    resume,
)
from flowctl.systems import LinearSystem


class StraightFlow:
    """The flow of a point mass at x_data: v(x, sigma) = (x - x_data) / sigma = eps - x_data."""

    def __init__(self, x_data):
        self.x_data = x_data

    def velocity(self, x, t, cond=None):
        return (x - self.x_data) / t


@given(st.integers(1, 60), st.floats(0.2, 8.0), st.integers(0, 2**31 - 1))
def test_euler_is_exact_on_a_straight_flow(n, shift, seed):
    gen = torch.Generator().manual_seed(seed)
    x_data = torch.randn(3, 5, generator=gen, dtype=torch.float64)
    noise = torch.randn(3, 5, generator=gen, dtype=torch.float64)
    grid = Grid(SigmaGrid.create(n, shift).sigmas.double())  # float64 steps: exact up to rounding
    s0 = grid.t(0)  # 1 up to diffusers' float32 rounding: start on the line itself
    traj = integrate(StraightFlow(x_data), (1 - s0) * x_data + s0 * noise, grid)
    for i, x in traj.states.items():
        s = grid.t(i)
        torch.testing.assert_close(x, (1 - s) * x_data + s * noise, rtol=0, atol=1e-12)


def _normal_matrix(seed: int, n: int) -> np.ndarray:
    """A normal matrix with eigenvalue moduli in [0.5, 2]: ||A^k x|| >= 0.5^k ||x||."""
    rng = np.random.default_rng(seed)
    q = scipy.stats.ortho_group.rvs(n, random_state=rng)
    r, phi = rng.uniform(0.5, 2.0), rng.uniform(0, np.pi)
    block = np.zeros((n, n))
    block[:2, :2] = r * np.array([[np.cos(phi), np.sin(phi)], [-np.sin(phi), np.cos(phi)]])
    if n == 3:
        block[2, 2] = rng.choice([-1, 1]) * rng.uniform(0.5, 2.0)
    return q @ block @ q.T


@pytest.mark.parametrize("method, order", [("euler", 1), ("heun", 2), ("rk4", 4)])
@given(seed=st.integers(0, 2**31 - 1), n=st.sampled_from([2, 3]))
def test_convergence_order_against_the_matrix_exponential(method, order, seed, n):
    a = _normal_matrix(seed, n)
    x0 = np.random.default_rng(seed + 1).standard_normal(n)
    exact = scipy.linalg.expm(a) @ x0
    system = LinearSystem(torch.from_numpy(a))
    steps = [16, 32, 64, 128]
    errors = []
    for s in steps:
        final = integrate(system, torch.from_numpy(x0), Grid.uniform(0.0, 1.0, s), method=method, keep="final").final
        errors.append(np.linalg.norm(final.numpy() - exact))
    slope = np.polyfit(np.log(1.0 / np.array(steps)), np.log(errors), 1)[0]
    assert abs(slope - order) < 0.25, (slope, errors)


@pytest.mark.parametrize("method", ["euler", "heun", "rk4"])
@given(n=st.integers(1, 30), shift=st.floats(0.5, 6.0), data=st.data())
@settings(max_examples=25)
def test_resume_at_any_step_reproduces_the_run_bit_for_bit(method, n, shift, data):
    gen = torch.Generator().manual_seed(data.draw(st.integers(0, 1000)))
    flow = GaussianMixtureFlow(torch.randn(5, 2, 4, 4, generator=gen), torch.rand(5, generator=gen) + 0.2)
    weights = torch.softmax(torch.randn(5, generator=gen), 0)
    grid = SigmaGrid.create(n, shift)
    noise = torch.randn(3, 2, 4, 4, generator=gen)
    full = integrate(flow, noise, grid, weights, method=method)
    k = data.draw(st.integers(0, n))
    point = full.resume_point(k)
    assert point.step == k and point.remaining_steps == n - k
    assert torch.equal(point.state, full.states[k]) and torch.equal(point.noise, noise)
    assert point.sigma == grid.sigmas[k] and torch.equal(point.timestep, grid.sigmas[k] * 1000)
    if k < n:
        assert point.dt == grid.sigmas[k + 1] - grid.sigmas[k]
    resumed = resume(flow, point, weights)
    for i in range(k, n + 1):
        assert torch.equal(resumed.states[i], full.states[i])
    assert torch.equal(resumed.noise, noise)


def test_keep_selects_states():
    grid = SigmaGrid.create(10)
    flow = GaussianMixtureFlow(torch.zeros(1, 2), 1.0)
    traj = integrate(flow, torch.randn(4, 2), grid, torch.ones(1), keep=[3, 5])
    assert sorted(traj.states) == [0, 3, 5, 10]
    with pytest.raises(InvalidArgumentError) as err:
        traj.resume_point(4)
    assert err.value.argument == "step"
    with pytest.raises(InvalidArgumentError):
        traj.stacked()
    full = integrate(flow, torch.randn(4, 2), grid, torch.ones(1))
    assert full.stacked().shape == (11, 4, 2)


def test_integrate_bad_input():
    flow = GaussianMixtureFlow(torch.zeros(1, 2), 1.0)
    grid = SigmaGrid.create(4)
    w = torch.ones(1)
    for bad in (float("nan"), float("inf")):
        x = torch.zeros(2, 2)
        x[1, 0] = bad
        with pytest.raises(NonFiniteError) as err:
            integrate(flow, x, grid, w)
        assert err.value.argument == "x0"
    with pytest.raises(UnknownNameError) as err:
        integrate(flow, torch.zeros(2, 2), grid, w, method="midpoint")
    assert err.value.argument == "method"
    with pytest.raises(InvalidArgumentError) as err:
        integrate(flow, torch.zeros(2, 2), grid, w, start=5)
    assert err.value.argument == "start"
    with pytest.raises(InvalidArgumentError) as err:
        integrate(flow, torch.zeros(2, 2), torch.linspace(1, 0, 5), w)
    assert err.value.argument == "grid"
    with pytest.raises(InvalidArgumentError) as err:
        integrate(flow, torch.zeros(2, 2), grid, w, keep="some")
    assert err.value.argument == "keep"


def test_wrong_velocity_shape_and_divergence_are_reported():
    class Wrong:
        def velocity(self, x, t, cond=None):
            return x[:, :1]

    class Blowup:
        def velocity(self, x, t, cond=None):
            return x * 1e300

    grid = Grid.uniform(0.0, 1.0, 4)
    with pytest.raises(ShapeError) as err:
        integrate(Wrong(), torch.ones(2, 3, dtype=torch.float64), grid)
    assert err.value.argument == "dynamics"
    with pytest.raises(IntegrationError, match="step 2"):
        integrate(Blowup(), torch.ones(2, 3, dtype=torch.float64), grid)


def test_the_loop_checks_once_not_per_step(monkeypatch):
    """integrate validates its inputs and the result, not every step: its host conversions do not
    grow with the number of steps."""
    conversions = []
    for name in ("__bool__", "__float__", "item"):
        original = getattr(torch.Tensor, name)
        monkeypatch.setattr(torch.Tensor, name, lambda self, *a, _o=original: conversions.append(1) or _o(self, *a))

    class Linear:
        def velocity(self, x, t, cond=None):
            return -x

    counts = []
    for steps in (10, 40):
        conversions.clear()
        integrate(Linear(), torch.ones(2, 3, dtype=torch.float64), Grid.uniform(0.0, 1.0, steps), keep="final")
        counts.append(len(conversions))
    assert counts[0] == counts[1]
