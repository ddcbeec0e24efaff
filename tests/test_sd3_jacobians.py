"""JVP / VJP and structured Jacobians of the tiny MMDiT (flowctl.adapters.sd3.jacobians)."""

from contextlib import nullcontext

import pytest
import torch

pytest.importorskip("diffusers")

from flowctl.adapters.sd3.condition import SD3Condition  # noqa: E402
from flowctl.adapters.sd3.dynamics import SD3Dynamics  # noqa: E402
from flowctl.adapters.sd3.jacobians import (  # noqa: E402
    ProductCost,
    block_error,
    coloured_diagonal,
    jvp,
    math_attention,
    measure_estimate,
    patch_blocks,
    probed_diagonal,
    vjp,
)
from sd3_tiny import tiny_embeddings, tiny_transformer  # noqa: E402

from flowctl.dynamics import NFECounter  # noqa: E402
from flowctl.errors import InvalidArgumentError, ShapeError, UnknownNameError  # noqa: E402
from flowctl.jacobians import DenseJacobian  # noqa: E402
from flowctl.mpc import (  # noqa: E402
    MPCConfig,
    OSQPBackend,
    StateLayout,
    StructuredBackend,
    euler_linearisation,
    objective,
    predict,
)
from flowctl.status import SolveStatus  # noqa: E402

SHAPE = (1, 4, 8, 8)  # n = 256: the dense Jacobian is 256 x 256
SIGMA = 0.6


def _field(model, dtype, *, math=True):
    """The transformer at SIGMA as a field x -> v; ``math``: under math_attention(), as
    SD3Dynamics.derivatives() runs it (forward-mode AD needs the MATH kernel)."""
    emb = {k: v.to(dtype) for k, v in tiny_embeddings().items()}
    timestep = torch.tensor([SIGMA * 1000.0], dtype=dtype)

    def field(x):
        with math_attention() if math else nullcontext():
            return model(hidden_states=x, encoder_hidden_states=emb["prompt_embeds"],
                         pooled_projections=emb["pooled_prompt_embeds"], timestep=timestep, return_dict=False)[0]

    return field


@pytest.fixture(scope="module")
def f64():
    """The tiny MMDiT with patch size 2 in float64, its field at SIGMA, a latent, the exact Jacobian."""
    field = _field(tiny_transformer(0, patch_size=2).double(), torch.float64)
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    with math_attention():
        dense = DenseJacobian().estimate(field, x).data
    return field, x, dense


def _directions(seed, k=2):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(SHAPE, generator=gen, dtype=torch.float64) for _ in range(k)]


def test_jvp_matches_central_differences(f64):
    field, x, _ = f64
    (v,) = _directions(2, 1)
    counter = NFECounter()
    value, jv = jvp(field, x, v, counter)
    h = 1e-5
    with torch.no_grad():
        fd = (field(x + h * v) - field(x - h * v)) / (2 * h)
        torch.testing.assert_close(value, field(x), rtol=1e-12, atol=1e-12)
    assert float((jv - fd).norm() / jv.norm()) < 1e-7
    assert dict(counter.by_kind) == {"jvp": 1}


def test_vjp_is_the_transpose_of_the_jvp(f64):
    field, x, dense = f64
    v, w = _directions(3)
    counter = NFECounter()
    _, jv = jvp(field, x, v)
    _, jtw = vjp(field, x, w, counter)
    lhs, rhs = float((jv * w).sum()), float((v * jtw).sum())
    assert abs(lhs - rhs) <= 1e-12 * max(abs(lhs), 1.0)
    torch.testing.assert_close(jtw.reshape(-1), dense.T @ w.reshape(-1), rtol=1e-10, atol=1e-12)
    assert dict(counter.by_kind) == {"forward": 1, "vjp": 1}


def test_forward_ad_fails_with_the_default_cpu_attention_kernel(f64):
    """On this CPU build the default kernel (fused flash attention for CPU) has no forward-AD
    formula; math_attention() is what makes jvp work."""
    _, x, _ = f64
    field = _field(tiny_transformer(0, patch_size=2).double(), torch.float64, math=False)
    (v,) = _directions(4, 1)
    with pytest.raises(NotImplementedError, match="forward AD"), torch.no_grad():
        torch.func.jvp(field, (x,), (v,))
    assert torch.isfinite(jvp(field, x, v)[1]).all()


def test_exact_colouring_gives_the_dense_jacobian_blocks(f64):
    field, x, dense = f64
    c, h, w = SHAPE[1:]
    exact = patch_blocks(2, radius=h - 2).estimate(field, x)  # period h: every patch its own colour
    assert exact.structure == "block" and exact.data.shape == (16, 16, 16)  # 16 patches of C p^2 = 16
    assert exact.cost == {"jvp": c * h * w}
    assert block_error(exact, dense) < 1e-12
    torch.testing.assert_close(exact.data, dense[exact.index[:, :, None], exact.index[:, None, :]], rtol=1e-12, atol=1e-14)
    diagonal = coloured_diagonal(2, radius=h - 1).estimate(field, x)
    torch.testing.assert_close(diagonal.data, dense.diagonal(), rtol=1e-12, atol=1e-14)


def test_cheap_colouring_folds_cross_patch_terms_into_the_blocks(f64):
    """Attention is global: with radius 0 (C p^2 = 16 JVPs) the blocks carry folded cross-patch
    terms, a nonzero but (on this model) small relative error; so does the diagonal."""
    field, x, dense = f64
    cheap = patch_blocks(2).estimate(field, x)
    assert cheap.cost == {"jvp": 16}
    assert 1e-6 < block_error(cheap, dense) < 0.5
    diag = coloured_diagonal(2).estimate(field, x)  # radius p - 1: the colouring of the blocks
    assert diag.cost == {"jvp": 16} and 1e-6 < block_error(diag, dense) < 0.5
    torch.testing.assert_close(diag.data, cheap.diagonal(), rtol=1e-12, atol=1e-14)
    # radius 0 colours the four pixels of a patch alike; the patch embedding couples them directly
    naive = coloured_diagonal(2, radius=0).estimate(field, x)
    assert naive.cost == {"jvp": 4} and block_error(naive, dense) > 10 * block_error(diag, dense)


@pytest.mark.parametrize("patch_size", [1, 2])
def test_estimator_costs_are_as_documented(patch_size):
    field = _field(tiny_transformer(0, patch_size=patch_size), torch.float32)
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(5))
    counter = NFECounter()
    for radius in (0, 1):
        est = patch_blocks(patch_size, radius).estimate(field, x, counter)
        assert est.cost == {"jvp": 4 * (patch_size + radius) ** 2}  # C (p + r)^2
        assert est.data.shape == (64 // patch_size**2, 4 * patch_size**2, 4 * patch_size**2)
    probes = probed_diagonal(6, seed=1).estimate(field, x, counter)
    assert probes.structure == "diagonal" and probes.cost == {"jvp": 6}
    assert counter.by_kind["jvp"] == 4 * patch_size**2 + 4 * (patch_size + 1) ** 2 + 6


def test_measured_estimate_converts_its_cost_with_measured_rates():
    field = _field(tiny_transformer(0, patch_size=2), torch.float32)
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(6))
    counter = NFECounter()
    measured = measure_estimate(patch_blocks(2), field, x, repeats=2, counter=counter)
    rates = measured.product_cost.rates
    assert rates["forward"] == 1.0 and rates["jvp"] > 0 and rates["vjp"] > 0
    assert measured.estimate.cost == {"jvp": 16} and dict(counter.by_kind) == {"jvp": 16}
    assert measured.nfe_equivalents == pytest.approx(16 * rates["jvp"])
    assert measured.wall_nfe == pytest.approx(measured.seconds / measured.product_cost.forward_s)
    with pytest.raises(UnknownNameError):
        measured.product_cost.nfe_equivalents({"hessian": 1})
    with pytest.raises(InvalidArgumentError):
        ProductCost(0.0, 1.0, 1.0, 1.0, 1)


def test_bad_arguments_raise_typed_errors(f64):
    field, x, dense = f64
    with pytest.raises(ShapeError):
        jvp(field, x, torch.ones(3, dtype=torch.float64))
    with pytest.raises(InvalidArgumentError, match="field"):
        vjp("not a field", x, x)
    with pytest.raises(ShapeError):
        block_error(patch_blocks(2).estimate(field, x), dense[:10, :10])
    with pytest.raises(InvalidArgumentError, match="estimator"):
        measure_estimate(object(), field, x)


@pytest.mark.parametrize("kind", ["block", "diagonal"])
def test_estimates_feed_the_structured_backend(f64, kind):
    """MMDiT estimate -> euler_linearisation -> StructuredBackend; the optimum equals OSQP's on
    the same linearisation."""
    field, x, _ = f64
    estimate = (patch_blocks(2) if kind == "block" else coloured_diagonal(2)).estimate(field, x)
    layout = StateLayout.of(estimate)
    n, horizon = x.numel(), 2
    ds = torch.tensor([-0.05, -0.05], dtype=torch.float64)
    with torch.no_grad():
        v = field(x)
    lin = euler_linearisation(estimate, ds, v, x)
    target = (x - SIGMA * v).reshape(-1)  # steer toward the denoised estimate x0_hat
    reference = layout.permute(target.expand(horizon, n))
    x0, u_prev = layout.permute(x.reshape(-1)), torch.zeros(n, dtype=torch.float64)
    config = MPCConfig(nx=n, nu=n, horizon=horizon, q=1.0, r=0.1)
    options = dict(block_size=layout.block_size) if kind == "block" else {}
    sol = StructuredBackend(config, kind, **options).solve(lin, x0, reference, u_prev)
    assert sol.status is SolveStatus.SOLVED
    torch.testing.assert_close(sol.states, predict(lin, x0, sol.controls))
    ref_sol = OSQPBackend(config, kind, **options).solve(lin, x0, reference, u_prev)
    torch.testing.assert_close(sol.controls, ref_sol.controls, rtol=1e-5, atol=1e-6)
    zero = torch.zeros(horizon, n, dtype=torch.float64)
    assert sol.objective < objective(config, predict(lin, x0, zero), zero, reference, u_prev)


def test_guided_sd3_dynamics_velocity_is_a_field():
    """The adapter's guided velocity (CFG batch of two) as the field: a JVP matches finite
    differences and the exact colouring recovers the dense blocks."""
    dynamics = SD3Dynamics(tiny_transformer(0, patch_size=2).double())
    cond = SD3Condition(**{k: v.double() for k, v in tiny_embeddings().items()}, guidance_scale=4.0)
    field = lambda x: dynamics.velocity(x, SIGMA, cond)  # noqa: E731
    x, v = _directions(9)
    _, jv = jvp(field, x, v)
    with torch.no_grad():
        fd = (field(x + 1e-5 * v) - field(x - 1e-5 * v)) / 2e-5
    assert float((jv - fd).norm() / jv.norm()) < 1e-7
    x = x[:, :, :4, :4]  # n = 64: the dense Jacobian by 64 JVPs
    with dynamics.derivatives():
        dense = DenseJacobian().estimate(field, x).data
        assert block_error(patch_blocks(2, radius=2).estimate(field, x), dense) < 1e-12
