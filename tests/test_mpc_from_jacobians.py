"""MPC linearisations of a flow's controlled Euler step from Jacobian estimates (flowctl.mpc.euler)."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from flowctl.errors import InvalidArgumentError, ShapeError
from flowctl.jacobians import (
    ColouredJacobian,
    DiagonalJacobian,
    JacobianEstimate,
    LowRankJacobian,
)
from flowctl.mpc import (
    Linearisation,
    MPCConfig,
    OSQPBackend,
    StateLayout,
    StructuredBackend,
    euler_linearisation,
    predict,
)
from flowctl.status import SolveStatus

F64 = dict(dtype=torch.float64)


def _patch_index(c, h, w, p):
    """Flat indices of each p x p patch's entries (all channels), patches in row-major order."""
    flat = torch.arange(c * h * w).reshape(c, h, w)
    return torch.stack([flat[:, i:i + p, j:j + p].reshape(-1) for i in range(0, h, p) for j in range(0, w, p)])


def _linear_block_field(seed, index):
    """``v(x) = M x + m`` with M block-diagonal on the (scattered) blocks ``index`` (nb, bs)."""
    gen = torch.Generator().manual_seed(seed)
    nb, bs = index.shape
    blocks = torch.randn(nb, bs, bs, generator=gen, **F64) / bs**0.5
    m = torch.randn(index.numel(), generator=gen, **F64)
    matrix = torch.zeros(index.numel(), index.numel(), **F64)
    matrix[index[:, :, None], index[:, None, :]] = blocks
    return (lambda x: (matrix @ x.reshape(-1) + m).reshape(x.shape)), blocks, matrix


def _euler(field, x, ds, u):
    return x + ds * (field(x) + u)


@given(st.integers(0, 10_000), st.integers(1, 4))
@settings(max_examples=15)
def test_block_linearisation_reproduces_euler_steps_of_a_linear_field(seed, horizon):
    gen = torch.Generator().manual_seed(seed)
    shape, n, bs = (1, 2, 3, 4), 24, 6
    index = torch.randperm(n, generator=gen).reshape(n // bs, bs)  # scattered blocks
    field, blocks, _ = _linear_block_field(seed, index)
    estimate = JacobianEstimate("block", blocks, {"jvp": 0.0}, index)
    xbar = torch.randn(shape, generator=gen, **F64)
    ds = -0.1 - 0.2 * torch.rand(horizon, generator=gen, **F64)
    planned = torch.randn(horizon, *shape, generator=gen, **F64)
    lin = euler_linearisation(estimate, ds, field(xbar), xbar, planned)
    layout = StateLayout.of(estimate)
    assert lin.structure == "block" and lin.a.shape == (horizon, n // bs, bs, bs) and layout.block_size == bs
    # from any state (not only xbar), with any correction du: the linear field's exact Euler steps
    x0 = torch.randn(shape, generator=gen, **F64)
    du = torch.randn(horizon, n, generator=gen, **F64)
    states = predict(lin, layout.permute(x0.reshape(-1)), layout.permute(du))
    x = x0
    for i in range(horizon):
        x = _euler(field, x, ds[i], planned[i] + du[i].reshape(shape))
        torch.testing.assert_close(layout.unpermute(states[i + 1]), x.reshape(-1), rtol=1e-12, atol=1e-12)


def test_diagonal_linearisation_reproduces_euler_steps_and_its_layout_is_the_identity():
    gen = torch.Generator().manual_seed(3)
    shape, n = (1, 2, 4, 4), 32
    d, m = torch.randn(n, generator=gen, **F64), torch.randn(n, generator=gen, **F64)
    field = lambda x: (d * x.reshape(-1) + m).reshape(x.shape)  # noqa: E731
    estimate = DiagonalJacobian(radius=0).estimate(field, torch.randn(shape, generator=gen, **F64))
    torch.testing.assert_close(estimate.data, d)  # the coloured diagonal of a diagonal field is exact
    layout = StateLayout.of(estimate)
    v = torch.randn(n, **F64)
    assert layout.order is None and layout.permute(v) is v and layout.unpermute(v) is v
    xbar, x0 = torch.randn(shape, generator=gen, **F64), torch.randn(shape, generator=gen, **F64)
    ds = torch.tensor([-0.25, -0.125], **F64)
    lin = euler_linearisation(estimate, ds, field(xbar), xbar)  # no planned controls: ubar = 0
    assert lin.structure == "diagonal" and lin.a.shape == lin.b.shape == lin.c.shape == (2, n)
    u = torch.randn(2, n, generator=gen, **F64)
    states = predict(lin, x0.reshape(-1), u)
    x = x0
    for i in range(2):
        x = _euler(field, x, ds[i], u[i].reshape(shape))
        torch.testing.assert_close(states[i + 1], x.reshape(-1), rtol=1e-12, atol=1e-12)


def test_coloured_patch_estimate_of_a_patch_local_field_feeds_the_structured_backend():
    """ColouredJacobian's own index (channels x patch pixels) through the adapter: StructuredBackend
    on the permuted block QP gives the optimum OSQP finds on the unpermuted dense QP."""
    c, h, w, p = 2, 4, 6, 2
    shape, n, horizon = (1, c, h, w), c * h * w, 3
    field, _, matrix = _linear_block_field(7, _patch_index(c, h, w, p))
    gen = torch.Generator().manual_seed(8)
    xbar = torch.randn(shape, generator=gen, **F64)
    estimate = ColouredJacobian(block=(p, p), radius=0).estimate(field, xbar)
    assert estimate.cost == {"jvp": c * p * p}  # C (p + r)^2 JVPs
    torch.testing.assert_close(estimate.to_dense(), matrix, rtol=1e-9, atol=1e-9)  # exact: no cross-patch terms
    ds = torch.tensor([-0.2, -0.15, -0.1], **F64)
    planned = 0.1 * torch.randn(horizon, n, generator=gen, **F64)
    reference = torch.randn(horizon, n, generator=gen, **F64)
    config = MPCConfig(nx=n, nu=n, horizon=horizon, q=1.0, r=0.05, s=0.1)
    layout = StateLayout.of(estimate)
    lin = euler_linearisation(estimate, ds, field(xbar), xbar, planned)
    x0, u_prev = xbar.reshape(-1), torch.zeros(n, **F64)
    sol = StructuredBackend(config, "block", block_size=layout.block_size).solve(
        lin, layout.permute(x0), layout.permute(reference), layout.permute(u_prev))
    assert sol.status is SolveStatus.SOLVED
    # the same QP in the state's own order, dense A_i = I + ds_i M
    eye = torch.eye(n, **F64)
    dense = Linearisation(
        a=torch.stack([eye + dsi * matrix for dsi in ds]), b=torch.stack([dsi * eye for dsi in ds]),
        c=torch.stack([dsi * (field(xbar).reshape(-1) - matrix @ x0 + planned[i]) for i, dsi in enumerate(ds)]),
    )
    ref_sol = OSQPBackend(config, "dense").solve(dense, x0, reference, u_prev)
    torch.testing.assert_close(layout.unpermute(sol.controls), ref_sol.controls, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(layout.unpermute(sol.states), ref_sol.states, rtol=1e-5, atol=1e-6)


@given(st.integers(0, 10_000))
@settings(max_examples=10)
def test_permute_and_unpermute_are_inverse(seed):
    gen = torch.Generator().manual_seed(seed)
    index = torch.randperm(12, generator=gen).reshape(3, 4)
    layout = StateLayout.of(JacobianEstimate("block", torch.randn(3, 4, 4, generator=gen), {}, index))
    v = torch.randn(2, 12, generator=gen)
    torch.testing.assert_close(layout.unpermute(layout.permute(v)), v, rtol=0, atol=0)
    torch.testing.assert_close(layout.permute(v)[:, :4], v[:, index[0]], rtol=0, atol=0)


def test_bad_inputs_raise_typed_errors():
    x = torch.randn(1, 2, 2, 2, **F64)
    diag = JacobianEstimate("diagonal", torch.ones(8, **F64), {})
    low_rank = LowRankJacobian(rank=1).estimate(lambda z: 2.0 * z, x)
    with pytest.raises(InvalidArgumentError, match="'diagonal' or 'block'"):
        euler_linearisation(low_rank, [-0.1], x, x)
    with pytest.raises(InvalidArgumentError, match="JacobianEstimate"):
        euler_linearisation(torch.ones(8), [-0.1], x, x)
    with pytest.raises(ShapeError, match="velocity"):
        euler_linearisation(diag, [-0.1], torch.ones(9, **F64), x)
    with pytest.raises(ShapeError, match="ds"):
        euler_linearisation(diag, [[-0.1]], x, x)
    with pytest.raises(ShapeError, match="planned"):
        euler_linearisation(diag, [-0.1, -0.1], x, x, planned=torch.zeros(1, 8, **F64))
    with pytest.raises(ShapeError, match="v"):
        StateLayout.of(diag).permute(torch.ones(7))
    with pytest.raises(InvalidArgumentError, match="dtype"):
        euler_linearisation(diag, [-0.1], x, x, dtype=torch.int64)


def test_a_half_precision_estimate_gives_a_linearisation_in_the_requested_dtype():
    half = JacobianEstimate("block", torch.randn(2, 4, 4).half(), {}, torch.arange(8).reshape(2, 4))
    x = torch.randn(8).half()
    lin = euler_linearisation(half, [-0.1, -0.2], x, x, dtype=torch.float32)
    assert lin.a.dtype == lin.b.dtype == lin.c.dtype == torch.float32
    torch.testing.assert_close(lin.a[1], torch.eye(4) - 0.2 * half.data.float())
