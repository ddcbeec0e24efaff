"""Jacobian estimators against the dense Jacobian from torch.autograd.functional.jacobian."""

import itertools

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from flowctl import (
    GaussianMixtureFlow,
    InvalidArgumentError,
    NFECounter,
    NonFiniteError,
    ShapeError,
)
from flowctl.jacobians import (
    BlendedJacobian,
    ColouredJacobian,
    DenseJacobian,
    DiagonalJacobian,
    JacobianEstimate,
    LowRankJacobian,
)

D = torch.float64
SHAPE = (1, 2, 6, 6)
N = 72


def mixture_field(seed=0, weights_seed=None, sigma=0.5):
    """The exact flow of K = 6 components of shape (2, 6, 6), std 0.6, at sigma 0.5, and a state
    between three components. (On a typical path in 72 dimensions the posterior is one-hot and the
    Jacobian is c I to 1e-6; here it is c I plus a strong rank-2 term.)"""
    gen = torch.Generator().manual_seed(seed)
    means = 0.5 * torch.randn(6, *SHAPE[1:], generator=gen, dtype=D)
    flow = GaussianMixtureFlow(means, 0.6)
    w = torch.softmax(0.3 * torch.randn(6, generator=gen, dtype=D), 0)
    x = (1 - sigma) * means[:3].mean(0, keepdim=True) + 0.15 * torch.randn(SHAPE, generator=gen, dtype=D)
    if weights_seed is not None:
        w = torch.softmax(torch.randn(6, generator=torch.Generator().manual_seed(weights_seed), dtype=D), 0)
    return (lambda z: flow.velocity(z, sigma, w)), x


def local_field(c, radius=1, seed=0):
    """Depthwise (2r+1)^2 conv, tanh, 1x1 channel mixing: a Jacobian banded with radius r in space."""
    gen = torch.Generator().manual_seed(seed)
    k = 2 * radius + 1
    dw = torch.randn(c, 1, k, k, generator=gen, dtype=D)
    mix = torch.randn(c, c, 1, 1, generator=gen, dtype=D)

    def f(z):
        return F.conv2d(torch.tanh(F.conv2d(z, dw, padding=radius, groups=c)), mix) + 0.5 * z**2

    return f


def dense(f, x):
    return torch.autograd.functional.jacobian(lambda z: f(z.reshape(x.shape)).reshape(-1), x.reshape(-1))


def image(c, h, w, seed=1):
    return torch.randn(1, c, h, w, generator=torch.Generator().manual_seed(seed), dtype=D)


@pytest.fixture(scope="module")
def mixture():
    f, x = mixture_field()
    return f, x, dense(f, x)


def test_dense_matches_autograd_and_counts_n_jvps(mixture):
    f, x, jac = mixture
    counter = NFECounter()
    est = DenseJacobian().estimate(f, x, counter)
    assert est.structure == "dense" and est.data.shape == (N, N)
    assert (est.data - jac).abs().max() < 1e-10
    assert est.cost == {"jvp": N} and counter.by_kind == {"jvp": N}
    v = torch.randn(N, dtype=D)
    torch.testing.assert_close(est.matvec(v), jac @ v, rtol=0, atol=1e-10)


def test_exact_probing_refuses_large_states(mixture):
    f, x, _ = mixture
    for est in (DenseJacobian(max_size=N - 1), DiagonalJacobian(max_size=N - 1)):
        with pytest.raises(InvalidArgumentError, match="structured") as info:
            est.estimate(f, x)
        assert info.value.argument == "x"


def test_exact_diagonal(mixture):
    f, x, jac = mixture
    est = DiagonalJacobian().estimate(f, x)
    assert est.structure == "diagonal" and est.cost == {"jvp": N}
    assert (est.data - jac.diagonal()).abs().max() < 1e-10


def test_stochastic_diagonal_converges_and_is_unbiased(mixture):
    f, x, jac = mixture
    diag, seeds = jac.diagonal(), range(4)
    errors, big = {}, []
    for k in (4, 64, 1024):
        runs = [DiagonalJacobian(probes=k, seed=s).estimate(f, x) for s in seeds]
        assert all(r.cost == {"jvp": k} for r in runs)
        errors[k] = sum(float((r.data - diag).norm()) for r in runs) / len(runs)
        big = [r.data for r in runs]
    # Error ~ 1/sqrt(k): a factor 4 per step in expectation; ask for 2.
    assert errors[64] < errors[4] / 2 and errors[1024] < errors[64] / 2, errors
    # Unbiased: the mean of 4 x 1024 probes is within 5 standard errors of the truth, entrywise.
    # The variance of one probe's entry i is sum_{j != i} J_ij^2.
    var = (jac**2).sum(1) - diag**2
    mean = torch.stack(big).mean(0)
    assert bool(((mean - diag).abs() <= 5 * (var / (1024 * len(seeds))).sqrt() + 1e-12).all())


@pytest.mark.parametrize("hw", [(6, 6), (12, 8)])
def test_coloured_blocks_and_band_are_exact_on_a_local_field(hw):
    c = 3
    f, x = local_field(c), image(c, *hw)
    jac = dense(f, x)
    band = ColouredJacobian(radius=1).estimate(f, x)
    assert band.structure == "sparse" and band.cost == {"jvp": 9 * c}  # independent of H and W
    assert (band.to_dense() - jac).abs().max() < 1e-10
    blocks = ColouredJacobian(radius=1, block=(2, 2)).estimate(f, x)
    assert blocks.structure == "block" and blocks.cost == {"jvp": 9 * c}
    assert blocks.data.shape == (hw[0] * hw[1] // 4, 4 * c, 4 * c)
    idx = blocks.index
    assert sorted(idx.reshape(-1).tolist()) == list(range(x.numel()))
    assert (blocks.data - jac[idx[:, :, None], idx[:, None, :]]).abs().max() < 1e-10
    diag = DiagonalJacobian(radius=1).estimate(f, x)  # coloured diagonal: (r+1)^2 C JVPs
    assert diag.cost == {"jvp": 4 * c}
    for est in (band, blocks, diag):
        assert (est.diagonal() - jac.diagonal()).abs().max() < 1e-10


@given(st.integers(1, 3), st.integers(1, 7), st.integers(1, 7), st.integers(0, 2))
@settings(max_examples=12)
def test_band_is_exact_for_any_grid_and_radius(c, h, w, r):
    f, x = local_field(c, radius=r, seed=h + w), image(c, h, w)[0]  # unbatched (C, H, W) state
    est = ColouredJacobian(radius=r).estimate(f, x)
    assert est.cost == {"jvp": c * min(2 * r + 1, h) * min(2 * r + 1, w)}
    assert (est.to_dense() - dense(f, x)).abs().max() < 1e-10
    i = est.data.indices()
    key = i[0] * x.numel() + i[1]
    assert est.data.is_coalesced() and bool((key[1:] > key[:-1]).all())  # built sorted, no repeats


def test_coloured_blocks_on_the_mixture_converge_with_the_colouring_distance(mixture):
    f, x, jac = mixture
    errors = []
    for r in range(5):
        est = ColouredJacobian(radius=r, block=(2, 2)).estimate(f, x)
        assert est.cost == {"jvp": 2 * min(2 + r, 6) ** 2}
        truth = jac[est.index[:, :, None], est.index[:, None, :]]
        errors.append(float((est.data - truth).norm() / truth.norm()))
    print("coloured block-diagonal relative error on the mixture, radius 0..4:", errors)
    assert errors[0] > 0.1  # the mixture's Jacobian is not local
    assert all(a > b for a, b in itertools.pairwise(errors)), errors
    assert errors[-1] < 1e-12  # colour period 6 = the grid: every position has its own colour


def test_low_rank_is_exact_for_a_rank_k_field():
    gen = torch.Generator().manual_seed(3)
    u, v = torch.randn(N, 5, generator=gen, dtype=D), torch.randn(N, 5, generator=gen, dtype=D)

    def f(z):
        return (u @ torch.tanh(v.T @ z.reshape(-1))).reshape(z.shape)

    x = torch.randn(SHAPE, generator=gen, dtype=D)
    jac = dense(f, x)
    est = LowRankJacobian(rank=5, oversampling=3).estimate(f, x)
    assert est.structure == "low_rank" and est.data[0].shape == (N, 5) and est.data[1].shape == (N, 5)
    assert (est.to_dense() - jac).abs().max() < 1e-8
    assert est.cost == {"jvp": 8, "vjp": 8, "forward": 1}
    powered = LowRankJacobian(rank=5, oversampling=3, power_iterations=1).estimate(f, x)
    assert (powered.to_dense() - jac).abs().max() < 1e-8
    assert powered.cost == {"jvp": 16, "vjp": 16, "forward": 2}


def test_low_rank_error_on_the_mixture_decreases_with_rank(mixture):
    f, x, jac = mixture
    errors = [float((LowRankJacobian(rank=k).estimate(f, x).to_dense() - jac).norm()) for k in (2, 16, 40)]
    assert errors[0] > errors[1] > errors[2], errors
    full = LowRankJacobian(rank=N, oversampling=0).estimate(f, x)
    assert (full.to_dense() - jac).abs().max() < 1e-10


@pytest.mark.parametrize(
    "estimator",
    [
        DenseJacobian(),
        DiagonalJacobian(),
        ColouredJacobian(radius=4, block=(2, 2)),  # colour period 6 = the grid: exact blocks
        LowRankJacobian(rank=N, oversampling=0),
        ColouredJacobian(radius=1),  # a band: not exact on the mixture
    ],
    ids=["dense", "diagonal", "block", "low_rank", "sparse"],
)
def test_blended_jacobian_blends_and_reuses_its_cache(estimator):
    f_a, x = mixture_field()
    f_b, _ = mixture_field(weights_seed=1)  # the same flow under another condition (weights)
    e_a, e_b = estimator.estimate(f_a, x), estimator.estimate(f_b, x)
    blended = BlendedJacobian(estimator, reuse_steps=2)
    counter = NFECounter()
    est = blended.estimate(f_a, f_b, x, 0.3, step=0, counter=counter)
    assert est.structure == e_a.structure
    assert (est.to_dense() - (0.3 * e_b.to_dense() + 0.7 * e_a.to_dense())).abs().max() < 1e-12
    truth = 0.3 * dense(f_b, x) + 0.7 * dense(f_a, x)
    if isinstance(estimator, DiagonalJacobian):
        truth = torch.diag(truth.diagonal())
    elif est.structure == "block":
        truth = JacobianEstimate("block", truth[est.index[:, :, None], est.index[:, None, :]], {}, est.index).to_dense()
    if est.structure != "sparse":
        assert (est.to_dense() - truth).abs().max() < 1e-10
    assert est.cost == {k: 2 * v for k, v in e_a.cost.items()} and counter.by_kind == est.cost
    x_later = x + 0.1
    again = blended.estimate(f_a, f_b, x_later, 0.6, step=2, counter=counter)  # within reuse_steps: cached
    assert sum(again.cost.values()) == 0 and counter.by_kind == est.cost
    # The cached Jacobians, estimated at x, blended with the new weight.
    assert (again.to_dense() - (0.6 * e_b.to_dense() + 0.4 * e_a.to_dense())).abs().max() < 1e-12
    assert blended.estimate(f_a, f_b, x_later, 0.6, step=3).cost == est.cost  # expired: re-estimated
    assert blended.estimate(f_a, f_b, x_later, 0.6, step=3, keys=("a", "c")).cost == e_a.cost  # new condition key


def test_blended_alpha_0_or_1_estimates_one_side_only(mixture):
    f, x, jac = mixture

    def never(z):
        raise AssertionError("the side with weight 0 was evaluated")

    for alpha, f_a, f_b in ((1.0, never, f), (0.0, f, never)):
        est = BlendedJacobian(DenseJacobian()).estimate(f_a, f_b, x, alpha, step=0)
        assert est.cost == {"jvp": N}
        assert (est.to_dense() - jac).abs().max() < 1e-10


def test_finite_differences_agree_with_forward_mode(mixture):
    f, x, jac = mixture
    fd = DenseJacobian(mode="fd").estimate(f, x)
    assert (fd.data - jac).abs().max() < 1e-6
    assert fd.cost == {"forward": 2 * N}
    g, y = local_field(2), image(2, 6, 6)
    a = ColouredJacobian(radius=1, block=(3, 3), mode="fd").estimate(g, y)
    b = ColouredJacobian(radius=1, block=(3, 3)).estimate(g, y)
    assert (a.data - b.data).abs().max() < 1e-6 and a.cost == {"forward": 2 * 2 * 16}
    assert DiagonalJacobian(probes=8, mode="fd").estimate(f, x).cost == {"forward": 16}


def test_vmap_and_loop_agree_and_unvmappable_fields_fall_back():
    f, x = local_field(2), image(2, 5, 5)

    def branchy(z):  # data-dependent control flow: torch.func.vmap refuses it
        return f(z) if bool(z.sum() > -1e9) else -f(z)

    ref = ColouredJacobian(radius=1).estimate(f, x, NFECounter()).to_dense()
    for g, chunk in ((f, 0), (f, 4), (branchy, 16)):
        for mode in ("jvp", "fd"):
            est = ColouredJacobian(radius=1, chunk_size=chunk, mode=mode).estimate(g, x)
            assert (est.to_dense() - ref).abs().max() < (1e-12 if mode == "jvp" else 1e-6)


def test_estimates_are_consistent_across_representations():
    f, x = local_field(2), image(2, 4, 4)
    v = torch.randn(x.numel(), dtype=D)
    for est in (
        DenseJacobian().estimate(f, x),
        DiagonalJacobian(probes=3).estimate(f, x),
        ColouredJacobian(radius=1).estimate(f, x),
        ColouredJacobian(radius=0, block=(2, 2)).estimate(f, x),
        LowRankJacobian(rank=4).estimate(f, x),
    ):
        m = est.to_dense()
        torch.testing.assert_close(est.matvec(v), m @ v, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(est.diagonal(), m.diagonal(), rtol=1e-12, atol=1e-12)


def test_bad_inputs_raise_typed_errors_naming_the_argument(mixture):
    f, x, _ = mixture
    bad_x = x.clone()
    bad_x[0, 0, 0, 0] = float("nan")
    cases = [
        (NonFiniteError, "x", lambda: DenseJacobian().estimate(f, bad_x)),
        (ShapeError, "f", lambda: DenseJacobian().estimate(lambda z: z.reshape(-1), x)),
        (ShapeError, "f", lambda: LowRankJacobian(rank=2).estimate(lambda z: z[..., :3], x)),
        (NonFiniteError, "f", lambda: DiagonalJacobian(probes=2).estimate(lambda z: z / 0.0, x)),
        (InvalidArgumentError, "f", lambda: DenseJacobian().estimate("f", x)),
        (InvalidArgumentError, "counter", lambda: DenseJacobian().estimate(f, x, counter={})),
        (InvalidArgumentError, "mode", lambda: DenseJacobian(mode="reverse")),
        (InvalidArgumentError, "max_size", lambda: DenseJacobian(max_size=0)),
        (InvalidArgumentError, "fd_step", lambda: DenseJacobian(fd_step=-1.0)),
        (InvalidArgumentError, "chunk_size", lambda: DenseJacobian(chunk_size=-1)),
        (InvalidArgumentError, "probes", lambda: DiagonalJacobian(probes=0)),
        (InvalidArgumentError, "probes", lambda: DiagonalJacobian(probes=4, radius=1)),
        (InvalidArgumentError, "radius", lambda: ColouredJacobian(radius=-1)),
        (InvalidArgumentError, "block", lambda: ColouredJacobian(block=(2,))),
        (InvalidArgumentError, "block", lambda: ColouredJacobian(block=(2, 0))),
        (ShapeError, "x", lambda: ColouredJacobian().estimate(f, x.reshape(-1))),
        (ShapeError, "x", lambda: ColouredJacobian(block=(4, 4)).estimate(f, x)),
        (InvalidArgumentError, "rank", lambda: LowRankJacobian(rank=0)),
        (InvalidArgumentError, "rank", lambda: LowRankJacobian(rank=N + 1).estimate(f, x)),
        (InvalidArgumentError, "oversampling", lambda: LowRankJacobian(oversampling=-1)),
        (InvalidArgumentError, "reuse_steps", lambda: BlendedJacobian(DenseJacobian(), reuse_steps=-1)),
        (InvalidArgumentError, "estimator", lambda: BlendedJacobian(object())),
        (InvalidArgumentError, "alpha", lambda: BlendedJacobian(DenseJacobian()).estimate(f, f, x, 1.5, 0)),
        (InvalidArgumentError, "step", lambda: BlendedJacobian(DenseJacobian()).estimate(f, f, x, 0.5, -1)),
        (InvalidArgumentError, "counter", lambda: BlendedJacobian(DenseJacobian()).estimate(f, f, x, 0.5, 0, counter=3)),
        (InvalidArgumentError, "structure", lambda: JacobianEstimate("banded", x, {})),
        (ShapeError, "v", lambda: JacobianEstimate("diagonal", x.reshape(-1), {}).matvec(x)),
        (InvalidArgumentError, "estimate", lambda: JacobianEstimate("diagonal", torch.ones(5000, dtype=D), {}).to_dense()),
    ]
    for error, argument, call in cases:
        with pytest.raises(error) as info:
            call()
        assert info.value.argument == argument, (argument, info.value)
        assert str(info.value).startswith(argument)
