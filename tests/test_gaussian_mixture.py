import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from flowctl import GaussianMixtureFlow, Grid, InvalidArgumentError, NonFiniteError, ShapeError, integrate

D = torch.float64


def _mixture(seed: int, k: int, d: int):
    gen = torch.Generator().manual_seed(seed)
    means = 2.0 * torch.randn(k, d, generator=gen, dtype=D)
    stds = 0.3 + 0.7 * torch.rand(k, generator=gen, dtype=D)
    weights = torch.softmax(torch.randn(k, generator=gen, dtype=D), 0)
    return GaussianMixtureFlow(means, stds), weights, gen


@given(st.integers(0, 10_000), st.integers(1, 4), st.integers(1, 2), st.floats(0.2, 0.9))
@settings(max_examples=15)
def test_velocity_agrees_with_monte_carlo(seed, k, d, sigma):
    """Self-normalised importance sampling of E[eps - x0 | x_sigma = x] with x0 from the mixture."""
    flow, w, gen = _mixture(seed, k, d)
    x = (1 - sigma) * flow.sample(1, w, generator=gen) + sigma * torch.randn(1, d, generator=gen, dtype=D)
    x0 = flow.sample(200_000, w, generator=gen)
    eps = (x - (1 - sigma) * x0) / sigma
    log_lik = -0.5 * (eps**2).sum(1)  # p(x | x0) = N(x; (1 - sigma) x0, sigma^2 I)
    p = torch.softmax(log_lik, 0)[:, None]
    target = eps - x0
    mc = (p * target).sum(0)
    ess = 1.0 / (p**2).sum()
    stderr = ((p * (target - mc) ** 2).sum(0) / ess).sqrt()
    v = flow.velocity(x, sigma, w)[0]
    assert ess > 500
    assert bool(((v - mc).abs() <= 5 * stderr + 1e-3).all()), (v, mc, stderr)


@given(st.integers(0, 10_000), st.integers(1, 4), st.integers(1, 3))
@settings(max_examples=8)
def test_sampler_moves_noise_onto_the_mixture(seed, k, d):
    flow, w, gen = _mixture(seed, k, d)
    n = 6000
    noise = torch.randn(n, d, generator=gen, dtype=D)
    x = integrate(flow, noise, Grid.uniform(1.0, 0.0, 60), w, method="rk4", keep="final").final
    mean = (w[:, None] * flow.means).sum(0)
    second = (w[:, None, None] * (flow.stds[:, None, None] ** 2 * torch.eye(d, dtype=D) + flow.means[:, :, None] * flow.means[:, None, :])).sum(0)
    cov = second - mean[:, None] * mean[None, :]
    # Sampling error of the empirical moments, from the exact covariance and the samples' fourth moments.
    assert bool(((x.mean(0) - mean).abs() <= 5 * (cov.diagonal() / n).sqrt() + 1e-3).all())
    xc = x - mean
    prods = xc[:, :, None] * xc[:, None, :]
    cov_err = (prods.mean(0) - cov).abs()
    assert bool((cov_err <= 5 * (prods.var(0) / n).sqrt() + 1e-2).all()), (prods.mean(0), cov)


def test_closed_form_at_the_ends():
    flow, w, gen = _mixture(3, 3, 4)
    x = torch.randn(5, 4, generator=gen, dtype=D)
    # sigma = 1: x is the noise, independent of x0: v = x - E[x0]
    torch.testing.assert_close(flow.velocity(x, 1.0, w), x - (w[:, None] * flow.means).sum(0))
    # sigma = 0: x is the data, eps is independent of it: v = -x
    torch.testing.assert_close(flow.velocity(x, 0.0, w), -x)


def test_single_component_is_linear_in_x():
    mu = torch.tensor([[1.0, -2.0]], dtype=D)
    flow = GaussianMixtureFlow(mu, 0.5)
    x = torch.randn(3, 2, dtype=D)
    s, a = 0.6, 0.4
    var = a * a * 0.25 + s * s
    torch.testing.assert_close(flow.velocity(x, s, torch.ones(1, dtype=D)), (s - a * 0.25) / var * (x - a * mu) - mu)


def test_batched_weights_match_per_sample_weights():
    flow, w, gen = _mixture(5, 3, 2)
    w2 = torch.softmax(torch.randn(3, generator=gen, dtype=D), 0)
    x = torch.randn(2, 2, generator=gen, dtype=D)
    both = flow.velocity(x, 0.5, torch.stack([w, w2]))
    torch.testing.assert_close(both[0], flow.velocity(x[:1], 0.5, w)[0])
    torch.testing.assert_close(both[1], flow.velocity(x[1:], 0.5, w2)[0])


def test_image_shaped_components_and_float32():
    means = torch.rand(4, 3, 8, 8) * 2 - 1
    flow = GaussianMixtureFlow(means, 0.5)
    v = flow.velocity(torch.randn(2, 3, 8, 8), 0.7, torch.full((4,), 0.25))
    assert v.shape == (2, 3, 8, 8) and v.dtype == torch.float32


def test_velocity_is_differentiable():
    flow, w, gen = _mixture(7, 3, 3)
    x = torch.randn(2, 3, generator=gen, dtype=D)
    dx = torch.randn(2, 3, generator=gen, dtype=D)
    _, jvp = torch.func.jvp(lambda y: flow.velocity(y, 0.4, w), (x,), (dx,))
    h = 1e-6
    fd = (flow.velocity(x + h * dx, 0.4, w) - flow.velocity(x - h * dx, 0.4, w)) / (2 * h)
    torch.testing.assert_close(jvp, fd, rtol=1e-6, atol=1e-7)
    # gradient with respect to the weights (a prompt that sets them can be optimised)
    wr = w.clone().requires_grad_(True)
    flow.velocity(x, 0.4, wr).sum().backward()
    assert torch.isfinite(wr.grad).all()


def test_bad_input():
    flow, w, _ = _mixture(0, 3, 2)
    x = torch.zeros(2, 2, dtype=D)
    x[0, 0] = float("nan")
    with pytest.raises(NonFiniteError) as err:
        flow.velocity(x, 0.5, w)
    assert err.value.argument == "x"
    with pytest.raises(ShapeError) as err:
        flow.velocity(torch.zeros(2, 3, dtype=D), 0.5, w)
    assert err.value.argument == "x"
    with pytest.raises(ShapeError) as err:
        flow.velocity(torch.zeros(2, 2, dtype=D), 0.5, torch.ones(4, dtype=D) / 4)
    assert err.value.argument == "cond"
    with pytest.raises(InvalidArgumentError) as err:
        flow.velocity(torch.zeros(2, 2, dtype=D), 0.5, torch.tensor([0.5, 0.6, -0.1], dtype=D))
    assert err.value.argument == "cond"
    with pytest.raises(InvalidArgumentError) as err:
        flow.velocity(torch.zeros(2, 2, dtype=D), 0.5, torch.tensor([0.5, 0.6, 0.1], dtype=D))
    assert err.value.argument == "cond"
    for t in (1.5, -0.1, float("nan")):
        with pytest.raises(InvalidArgumentError) as err:
            flow.velocity(torch.zeros(2, 2, dtype=D), t, w)
        assert err.value.argument == "t"
    with pytest.raises(InvalidArgumentError) as err:
        GaussianMixtureFlow(torch.zeros(3, 2), 0.0)
    assert err.value.argument == "stds"
    with pytest.raises(ShapeError) as err:
        GaussianMixtureFlow(torch.zeros(3, 2), torch.ones(2))
    assert err.value.argument == "stds"
    with pytest.raises(ShapeError) as err:
        GaussianMixtureFlow(torch.zeros(3), 1.0)
    assert err.value.argument == "means"


def test_log_prob_matches_the_mixture_density():
    torch.manual_seed(0)
    means, stds = torch.randn(3, 2, dtype=torch.float64), torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64)
    w = torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64)
    x = torch.randn(5, 2, dtype=torch.float64)
    flow = GaussianMixtureFlow(means, stds)
    comps = torch.distributions.Independent(torch.distributions.Normal(means, stds[:, None]), 1)
    expected = torch.distributions.MixtureSameFamily(torch.distributions.Categorical(w), comps).log_prob(x)
    torch.testing.assert_close(flow.log_prob(x, w), expected)
