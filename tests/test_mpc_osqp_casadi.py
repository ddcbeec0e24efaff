"""OSQP and CasADi backends of the MPC QP: LQR golden references, OSQP's quadcopter example,
structured linearisations, bad input and failures."""

from __future__ import annotations

import numpy as np
import osqp
import pytest
import scipy.linalg
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from flowctl.errors import InvalidArgumentError, NonFiniteError, ShapeError
from flowctl.mpc.casadi_backend import CasadiQPBackend, CasadiQPOptions
from flowctl.mpc.examples import quadcopter
from flowctl.mpc.osqp_backend import OSQPBackend, OSQPOptions
from flowctl.mpc.problem import Linearisation, MPCConfig, objective, predict
from flowctl.mpc.qp_layout import QPLayout, all_finite, csc_from_triplets
from flowctl.mpc.qp_prediction import prediction_matrix
from flowctl.mpc import qp_prediction
from flowctl.mpc.sparse_backend import make_solution
from flowctl.errors import SolverError
from flowctl.status import SolveStatus

BACKENDS = {"osqp": OSQPBackend, "casadi": CasadiQPBackend}


def t64(a) -> torch.Tensor:
    return torch.as_tensor(np.asarray(a, dtype=np.float64))


def time_varying_lin(rng, np_, nx, nu, *, scale=0.5, c=False) -> Linearisation:
    a = rng.normal(scale=scale, size=(np_, nx, nx)) + np.eye(nx)
    b = rng.normal(size=(np_, nx, nu))
    cc = rng.normal(size=(np_, nx)) if c else np.zeros((np_, nx))
    return Linearisation(t64(a), t64(b), t64(cc))


# ---------------------------------------------------------------------------------------------
# LQR: backward Riccati recursion and DARE
# ---------------------------------------------------------------------------------------------


def riccati_first_gain(a, b, q, qn, r):
    """K_0 of the finite-horizon LQR with cost sum_{i=1}^{N-1} x'Qx + x_N'QN x_N + sum u'Ru."""
    p = np.diag(qn)
    for k in range(a.shape[0] - 1, -1, -1):
        ak, bk = a[k], b[k]
        gain = np.linalg.solve(np.diag(r) + bk.T @ p @ bk, bk.T @ p @ ak)
        if k == 0:
            return gain
        p = np.diag(q) + ak.T @ p @ (ak - bk @ gain)
        p = 0.5 * (p + p.T)


@settings(max_examples=6, deadline=None)
@given(
    nx=st.integers(1, 4), nu=st.integers(1, 3), np_=st.integers(1, 6), seed=st.integers(0, 2**31 - 1),
)
@pytest.mark.parametrize("backend", list(BACKENDS))
def test_unconstrained_first_control_is_finite_horizon_lqr(backend, nx, nu, np_, seed):
    rng = np.random.default_rng(seed)
    lin = time_varying_lin(rng, np_, nx, nu)
    q, qn, r = rng.uniform(0.0, 2.0, nx), rng.uniform(0.0, 2.0, nx), rng.uniform(0.1, 2.0, nu)
    config = MPCConfig(nx=nx, nu=nu, horizon=np_, q=t64(q), q_terminal=t64(qn), r=t64(r))
    x0 = rng.normal(size=nx)
    sol = BACKENDS[backend](config).solve(lin, t64(x0), torch.zeros(np_, nx), torch.zeros(nu))
    gain = riccati_first_gain(lin.a.numpy(), lin.b.numpy(), q, qn, r)
    assert sol.status is SolveStatus.SOLVED
    assert sol.controls.dtype == torch.float64 and sol.controls.shape == (np_, nu)
    np.testing.assert_allclose(sol.controls[0].numpy(), -gain @ x0, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("backend", list(BACKENDS))
def test_long_horizon_first_control_is_infinite_horizon_lqr(backend):
    rng = np.random.default_rng(3)
    nx, nu, np_ = 4, 2, 60
    a = rng.normal(size=(nx, nx))
    a *= 0.9 / max(abs(np.linalg.eigvals(a)))  # stable-ish
    b = rng.normal(size=(nx, nu))
    q, r = rng.uniform(0.5, 2.0, nx), rng.uniform(0.5, 2.0, nu)
    p = scipy.linalg.solve_discrete_are(a, b, np.diag(q), np.diag(r))
    gain = np.linalg.solve(np.diag(r) + b.T @ p @ b, b.T @ p @ a)
    config = MPCConfig(nx=nx, nu=nu, horizon=np_, q=t64(q), r=t64(r))
    lin = Linearisation(t64(np.tile(a, (np_, 1, 1))), t64(np.tile(b, (np_, 1, 1))), torch.zeros(np_, nx))
    x0 = rng.normal(size=nx)
    sol = BACKENDS[backend](config).solve(lin, t64(x0), torch.zeros(np_, nx), torch.zeros(nu))
    np.testing.assert_allclose(sol.controls[0].numpy(), -gain @ x0, atol=1e-5, rtol=0)


def condensed_optimum(config: MPCConfig, lin: Linearisation, x0, reference, u_prev):
    """The unconstrained QP solved as one least-squares problem in the controls (numpy)."""
    a, b = (t.numpy() for t in lin.dense())
    c = lin.c.numpy()
    np_, nc, nx, nu = config.horizon, config.control_horizon, config.nx, config.nu
    # x_i = F_i x0 + G_i U + h_i with U = (u_0..u_{Nc-1})
    f, g, h = np.eye(nx), np.zeros((nx, nc * nu)), np.zeros(nx)
    rows, rhs = [], []
    for i in range(np_):
        j = min(i, nc - 1)
        f, g, h = a[i] @ f, a[i] @ g, a[i] @ h + c[i]
        g[:, j * nu : (j + 1) * nu] += b[i]
        w = np.sqrt((config.QN if i == np_ - 1 else config.Q).numpy())
        rows.append(w[:, None] * g)
        rhs.append(w * (reference[i] - f @ x0 - h))
    sr, ss = np.sqrt(config.R.numpy()), np.sqrt(config.S.numpy())
    for j in range(nc):
        e = np.zeros((nu, nc * nu))
        e[:, j * nu : (j + 1) * nu] = np.diag(sr)
        rows.append(e), rhs.append(np.zeros(nu))
        d = np.zeros((nu, nc * nu))
        d[:, j * nu : (j + 1) * nu] = np.diag(ss)
        if j > 0:
            d[:, (j - 1) * nu : j * nu] = -np.diag(ss)
        rows.append(d), rhs.append(ss * u_prev if j == 0 else np.zeros(nu))
    u, *_ = np.linalg.lstsq(np.vstack(rows), np.concatenate(rhs), rcond=None)
    return u.reshape(nc, nu)


@pytest.mark.parametrize("backend", list(BACKENDS))
def test_control_horizon_rate_term_reference_and_affine_term(backend):
    rng = np.random.default_rng(5)
    nx, nu, np_, nc = 3, 2, 7, 3
    lin = time_varying_lin(rng, np_, nx, nu, scale=0.3, c=True)
    config = MPCConfig(
        nx=nx, nu=nu, horizon=np_, control_horizon=nc, q=t64(rng.uniform(0.5, 2, nx)),
        q_terminal=t64(rng.uniform(0.5, 3, nx)), r=t64(rng.uniform(0.1, 1, nu)), s=t64([0.7, 0.0]),
    )
    x0, ref, up = rng.normal(size=nx), rng.normal(size=(np_, nx)), rng.normal(size=nu)
    sol = BACKENDS[backend](config).solve(lin, t64(x0), t64(ref), t64(up))
    np.testing.assert_allclose(sol.controls.numpy(), condensed_optimum(config, lin, x0, ref, up), atol=1e-6)
    np.testing.assert_allclose(sol.states.numpy(), predict(lin, t64(x0), sol.controls).numpy(), atol=1e-12)
    assert sol.objective == pytest.approx(objective(config, sol.states, sol.controls, t64(ref), t64(up)), rel=1e-12)


# ---------------------------------------------------------------------------------------------
# OSQP's quadcopter example
# ---------------------------------------------------------------------------------------------

QUAD = quadcopter()
AD, BD = QUAD.ad.numpy(), QUAD.bd.numpy()
UMIN, XR = QUAD.u_lower.numpy(), QUAD.reference.numpy()
N, NSIM = QUAD.horizon, QUAD.steps
TIGHT = {"eps_abs": 1e-8, "eps_rel": 1e-8, "max_iter": 10000, "polishing": True}


def plain_osqp_closed_loop(nsim=NSIM):
    """OSQP's MPC example as it is written (x_0 a variable, every bound a row, warm start)."""
    nx = QUAD.nx
    x0 = QUAD.x0.numpy().copy()
    form = QUAD.osqp_form()
    l, u = form.l, form.u
    prob = osqp.OSQP()
    prob.setup(form.P, form.q, form.A, l, u, warm_starting=True, verbose=False, **TIGHT)
    controls, states = [], [x0]
    for _ in range(nsim):
        res = prob.solve(raise_error=False)
        assert res.info.status == "solved"
        ctrl = res.x[form.first_control]
        x0 = AD @ x0 + BD @ ctrl
        l[:nx], u[:nx] = -x0, -x0
        prob.update(l=l, u=u)
        controls.append(ctrl), states.append(x0)
    return np.array(controls), np.array(states)


def quadcopter_config() -> MPCConfig:
    return QUAD.config()


def ours_closed_loop(backend, nsim=NSIM):
    nu = BD.shape[1]
    lin = QUAD.model().linearise(QUAD.x0, 0.0)
    ref, u_prev = QUAD.model().reference(0.0), torch.zeros(nu, dtype=torch.float64)
    backend.build()
    x, controls, states = QUAD.x0.numpy().copy(), [], [QUAD.x0.numpy().copy()]
    for _ in range(nsim):
        sol = backend.solve(lin, t64(x), ref, u_prev)
        ctrl = sol.controls[0].numpy()
        x = AD @ x + BD @ ctrl
        controls.append(ctrl), states.append(x)
    return np.array(controls), np.array(states)


@pytest.mark.parametrize("pattern", [False, True])
@pytest.mark.parametrize("backend", list(BACKENDS))
def test_quadcopter_closed_loop_matches_plain_osqp(backend, pattern, capfd):
    plain_u, plain_x = plain_osqp_closed_loop()
    kwargs = {"pattern": QUAD.pattern} if pattern else {}
    u, x = ours_closed_loop(BACKENDS[backend](quadcopter_config(), **kwargs))
    np.testing.assert_allclose(u, plain_u, atol=1e-5, rtol=0)
    np.testing.assert_allclose(x, plain_x, atol=1e-5, rtol=0)
    assert np.abs(plain_u).max() > 0.5 and np.isclose(plain_u.min(), UMIN[0])  # input bounds active
    out, err = capfd.readouterr()
    assert out == "" and err == ""  # no OSQP error print (e.g. an update of the wrong length)


def test_quadcopter_qp_is_smaller_than_the_example_and_keeps_zero_entries():
    layout = QPLayout(quadcopter_config(), "dense", None, bounds_as_rows=True)
    nx, nu = BD.shape
    assert layout.n == N * nx + N * nu  # x_0 is data, not a variable
    assert layout.m == N * nx + N * nu + N * 3  # dynamics, input rows, 3 finite state bounds
    # every entry of the dense A_1..A_9 and B_0..B_9 is in the pattern, zeros of AD included
    assert layout.nnz_a == N * nx + (N - 1) * nx * nx + N * nx * nu + N * nu + N * 3


def test_quadcopter_qp_with_pattern_has_only_the_structural_nonzeros():
    nx, nu = BD.shape
    assert torch.equal(QUAD.a_mask, QUAD.ad != 0) and torch.equal(QUAD.b_mask, QUAD.bd != 0)
    nnz_ad, nnz_bd = int(QUAD.a_mask.sum()), int(QUAD.b_mask.sum())
    assert (nnz_ad, nnz_bd) == (np.count_nonzero(AD), np.count_nonzero(BD)) == (26, 32)
    layout = QPLayout(quadcopter_config(), "dense", None, bounds_as_rows=True, pattern=QUAD.pattern)
    assert (layout.n, layout.m) == (N * nx + N * nu, N * nx + N * nu + N * 3)
    assert layout.nnz_a == N * nx + (N - 1) * nnz_ad + N * nnz_bd + N * nu + N * 3 == 744
    assert QUAD.osqp_form().A.nnz == 1044  # OSQP's own QP: x_0 a variable, every bound a row


def test_examples_are_fresh_and_exact():
    one, two = quadcopter(), quadcopter()
    one.ad[0, 0] = 5.0  # tensors are not shared between calls
    assert two.ad[0, 0] == 1.0
    assert two.ad.dtype == torch.float64 and two.ad.shape == (12, 12) and two.bd.shape == (12, 4)
    assert two.u_lower.tolist() == (np.array([9.6] * 4) - 10.5916).tolist()
    assert two.x_lower[0] == -np.pi / 6 and two.x_lower[5] == -1.0 and two.x_upper[2] == np.inf
    config = two.config()
    assert (config.nx, config.nu, config.horizon, config.control_horizon) == (12, 4, 10, 10)
    assert torch.equal(config.R, torch.full((4,), 0.1, dtype=torch.float64)) and bool((config.S == 0).all())
    lin = two.model().linearise(two.x0, 0.0)
    assert lin.a.shape == (10, 12, 12) and torch.equal(lin.a[3], two.ad) and torch.equal(lin.b[9], two.bd)
    assert torch.equal(two.plant(two.x0, torch.ones(4, dtype=torch.float64)), two.bd.sum(1))


# ---------------------------------------------------------------------------------------------
# Structural sparsity pattern of a "dense" QP
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", list(BACKENDS))
@pytest.mark.parametrize("which, step, where", [("a", 3, (0, 1)), ("a", 0, (6, 0)), ("b", 7, (0, 0))])
def test_nonzero_outside_the_pattern_is_refused_by_name(backend, which, step, where):
    solver = BACKENDS[backend](quadcopter_config(), pattern=QUAD.pattern)
    lin, ref, up = QUAD.model().linearise(QUAD.x0, 0.0), QUAD.model().reference(0.0), torch.zeros(4, dtype=torch.float64)
    good = solver.solve(lin, QUAD.x0, ref, up)
    getattr(lin, which)[step][where] = 0.25  # outside the mask (a zero of Ad / Bd)
    with pytest.raises(InvalidArgumentError) as e:
        solver.solve(lin, QUAD.x0, ref, up)
    assert e.value.argument == "linearisation"
    assert f"{which.upper()}_{step} has the nonzero 0.25 at {where}" in str(e.value)
    # nothing was written into the solver: a fitting step solves as before
    again = solver.solve(QUAD.model().linearise(QUAD.x0, 0.0), QUAD.x0, ref, up)
    np.testing.assert_allclose(again.controls.numpy(), good.controls.numpy(), atol=1e-6)


def test_pattern_argument_checks():
    config = quadcopter_config()
    a_mask, b_mask = QUAD.pattern
    for pattern, error in (
        ((a_mask.double(), b_mask), InvalidArgumentError),  # not boolean
        ((a_mask, b_mask[:, :3]), ShapeError),
        ((a_mask.T[:4], b_mask), ShapeError),
        ((a_mask,), InvalidArgumentError),
        (a_mask, InvalidArgumentError),
        ((a_mask.tolist(), b_mask), InvalidArgumentError),
    ):
        for backend in BACKENDS.values():
            with pytest.raises(error) as e:
                backend(config, pattern=pattern)
            assert e.value.argument == "pattern"
    square = MPCConfig(nx=4, nu=4, horizon=3)
    with pytest.raises(InvalidArgumentError) as e:
        OSQPBackend(square, "diagonal", pattern=(torch.ones(4, 4, dtype=torch.bool), torch.ones(4, 4, dtype=torch.bool)))
    assert e.value.argument == "pattern"
    # numpy boolean masks are taken too
    OSQPBackend(config, pattern=(a_mask.numpy(), b_mask.numpy())).build()


def random_masked_problem(rng, nx, nu, np_, nc, density):
    a_mask = rng.random((nx, nx)) < density
    np.fill_diagonal(a_mask, True)
    b_mask = rng.random((nx, nu)) < density
    a = np.where(a_mask, rng.normal(scale=0.4, size=(np_, nx, nx)), 0.0)
    b = np.where(b_mask, rng.normal(size=(np_, nx, nu)), 0.0)
    a[-1][a_mask & (rng.random((nx, nx)) < 0.3)] = 0.0  # a structural entry may hold a zero in some step
    lin = Linearisation(t64(a), t64(b), t64(0.1 * rng.normal(size=(np_, nx))))
    config = MPCConfig(
        nx=nx, nu=nu, horizon=np_, control_horizon=nc, q=t64(rng.uniform(0.5, 2, nx)), r=t64(rng.uniform(0.1, 1, nu)),
        s=0.3, u_lower=-0.5, u_upper=0.5,
    )
    x0, ref, up = t64(rng.normal(size=nx)), t64(rng.normal(size=(np_, nx))), t64(rng.normal(size=nu))
    return config, (torch.from_numpy(a_mask), torch.from_numpy(b_mask)), lin, x0, ref, up


@settings(max_examples=10, deadline=None)
@given(
    nx=st.integers(1, 5), nu=st.integers(1, 3), np_=st.integers(1, 5), nc_frac=st.floats(0.0, 1.0),
    density=st.floats(0.0, 1.0), seed=st.integers(0, 2**31 - 1),
)
@pytest.mark.parametrize("backend", list(BACKENDS))
def test_pattern_gives_the_same_solution_as_every_entry(backend, nx, nu, np_, nc_frac, density, seed):
    rng = np.random.default_rng(seed)
    nc = max(1, round(nc_frac * np_))
    config, pattern, lin, x0, ref, up = random_masked_problem(rng, nx, nu, np_, nc, density)
    masked, full = BACKENDS[backend](config, pattern=pattern), BACKENDS[backend](config)
    # two different steps through one backend: the second writes new values into the pattern
    _, _, lin2, x2, ref2, up2 = random_masked_problem(np.random.default_rng(seed + 1), nx, nu, np_, nc, 0.0)
    lin2 = Linearisation(lin.a * 0.9 + torch.where(pattern[0], 0.05, 0.0), lin.b * 1.1, lin2.c)
    for step in ((lin, x0, ref, up), (lin2, x2, ref2, up2)):
        sol, sol_full = masked.solve(*step), full.solve(*step)
        np.testing.assert_allclose(sol.controls.numpy(), sol_full.controls.numpy(), atol=1e-6)
        np.testing.assert_allclose(sol.states.numpy(), predict(step[0], step[1], sol.controls).numpy(), atol=1e-12)


@pytest.mark.parametrize("pattern", [False, True])
def test_values_changed_in_place_or_only_in_a0_are_seen(pattern):
    rng = np.random.default_rng(8)
    config, masks, lin, x0, ref, up = random_masked_problem(rng, 4, 2, 4, 3, 0.5)
    solver = OSQPBackend(config, pattern=masks if pattern else None)
    for _ in range(3):  # the same data again and again (the cached path)
        sol = solver.solve(lin, x0, ref, up)

    def fresh():
        return OSQPBackend(config).solve(lin, x0, ref, up)

    np.testing.assert_allclose(sol.controls.numpy(), fresh().controls.numpy(), atol=1e-7)
    lin.a[0] *= 1.5  # only A_0 (right-hand side) changes, in place
    sol = solver.solve(lin, x0, ref, up)
    np.testing.assert_allclose(sol.controls.numpy(), fresh().controls.numpy(), atol=1e-7)
    np.testing.assert_allclose(sol.states.numpy(), predict(lin, x0, sol.controls).numpy(), atol=1e-12)
    lin.a[2] *= 0.5  # a matrix in the QP changes, in place
    lin.b[1] *= -1.0
    sol = solver.solve(lin, x0, ref, up)
    np.testing.assert_allclose(sol.controls.numpy(), fresh().controls.numpy(), atol=1e-7)
    np.testing.assert_allclose(sol.states.numpy(), predict(lin, x0, sol.controls).numpy(), atol=1e-12)


@settings(max_examples=10, deadline=None)
@given(nx=st.integers(1, 6), nu=st.integers(1, 4), np_=st.integers(1, 8), nc=st.integers(1, 8), seed=st.integers(0, 2**31 - 1))
def test_prediction_matrix_is_the_recursion(nx, nu, np_, nc, seed):
    nc = min(nc, np_)
    rng = np.random.default_rng(seed)
    lin = time_varying_lin(rng, np_, nx, nu, c=True)
    config = MPCConfig(nx=nx, nu=nu, horizon=np_, control_horizon=nc)
    layout = QPLayout(config, "dense", None, bounds_as_rows=True)
    x0, u = t64(rng.normal(size=nx)), t64(rng.normal(size=(nc, nu)))
    d = layout.numbers(lin, x0, torch.zeros(np_, nx, dtype=torch.float64), torch.zeros(nu, dtype=torch.float64))
    matrix = prediction_matrix(layout, d.a, d.b)
    assert matrix.shape == (np_ * nx, nx + nc * nu + np_ * nx)
    expected = predict(lin, x0, u).numpy()
    np.testing.assert_allclose(qp_prediction.predict(layout, d, u.numpy()), expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(qp_prediction.predict(layout, d, u.numpy(), matrix), expected, rtol=1e-12, atol=1e-12)


def test_prediction_matrix_only_for_small_dense_problems():
    config, lin, *_ = structured_problem("diagonal", np.random.default_rng(0))
    layout = QPLayout(config, "diagonal", None, bounds_as_rows=True)
    assert prediction_matrix(layout, lin.a.numpy(), lin.b.numpy()) is None
    big = MPCConfig(nx=60, nu=60, horizon=10)
    layout = QPLayout(big, "dense", None, bounds_as_rows=True)
    assert prediction_matrix(layout, np.zeros((10, 60, 60)), np.zeros((10, 60, 60))) is None


# ---------------------------------------------------------------------------------------------
# The quick checks of the per-step path
# ---------------------------------------------------------------------------------------------


def test_all_finite():
    for n in (0, 5, 5000):
        v = np.linspace(-1.0, 1.0, n)
        assert all_finite(v)
        if n:
            for bad in (np.nan, np.inf, -np.inf):
                w = v.copy()
                w[n // 2] = bad
                assert not all_finite(w)
    assert all_finite(np.array([1e200, -1e300, 3.0]))  # squares overflow, values are finite


@pytest.mark.parametrize("backend", list(BACKENDS))
def test_bad_step_data_is_refused_by_name(backend):
    config, lin, x0, ref, up = structured_problem("diagonal", np.random.default_rng(11))
    solver = BACKENDS[backend](config, "diagonal")
    solver.solve(lin, x0, ref, up)
    cases = []
    for name, value in (("x0", np.nan), ("x0", np.inf), ("reference", -np.inf), ("u_prev", np.nan)):
        args = {"x0": x0.clone(), "reference": ref.clone(), "u_prev": up.clone()}
        args[name].view(-1)[2] = value
        cases.append((args, NonFiniteError, name))
    cases += [
        ({"x0": x0.numpy(), "reference": ref, "u_prev": up}, InvalidArgumentError, "x0"),
        ({"x0": x0.long(), "reference": ref, "u_prev": up}, InvalidArgumentError, "x0"),
        ({"x0": x0.to(torch.complex128), "reference": ref, "u_prev": up}, InvalidArgumentError, "x0"),
        ({"x0": x0, "reference": ref, "u_prev": up[:3]}, ShapeError, "u_prev"),
        ({"x0": x0, "reference": ref[None], "u_prev": up}, ShapeError, "reference"),
    ]
    for args, error, name in cases:
        with pytest.raises(error) as e:
            solver.solve(lin, args["x0"], args["reference"], args["u_prev"])
        assert e.value.argument == name
    for field in ("a", "b", "c"):  # a linearisation changed in place after its checks
        bad = Linearisation(lin.a.clone(), lin.b.clone(), lin.c.clone(), "diagonal")
        getattr(bad, field)[1, 2] = np.nan
        with pytest.raises(NonFiniteError) as e:
            solver.solve(bad, x0, ref, up)
        assert e.value.argument == "linearisation"
    # huge but finite data pass the quick check's fallback; grad and float32 inputs are taken
    layout = solver.layout
    layout.numbers(lin, torch.full_like(x0, 1e200), ref, up)
    sol = solver.solve(lin, x0.float().requires_grad_(), ref.float(), up)
    assert sol.success and sol.controls.dtype == torch.float64


def test_warm_start_switch():
    config = quadcopter_config()
    nx, nu = BD.shape
    lin = Linearisation(t64(np.tile(AD, (N, 1, 1))), t64(np.tile(BD, (N, 1, 1))), torch.zeros(N, nx))
    ref, x0 = t64(np.tile(XR, (N, 1))), torch.zeros(nx)
    iters = {}
    for warm in (True, False):
        backend = OSQPBackend(config, options=OSQPOptions(warm_start=warm))
        iters[warm] = [backend.solve(lin, x0, ref, torch.zeros(nu)).iterations for _ in range(2)]
    assert iters[False][0] == iters[False][1]  # cold start: the same run twice
    assert iters[True][1] < iters[True][0]


# ---------------------------------------------------------------------------------------------
# Structures
# ---------------------------------------------------------------------------------------------


def structured_problem(structure, rng, nx=6, np_=5, nc=3, bs=3):
    if structure == "diagonal":
        a, b = 1.0 + 0.3 * rng.normal(size=(np_, nx)), rng.uniform(0.5, 1.5, (np_, nx))
    else:
        a = np.eye(bs) + 0.3 * rng.normal(size=(np_, nx // bs, bs, bs))
        b = np.eye(bs) + 0.3 * rng.normal(size=(np_, nx // bs, bs, bs))
    lin = Linearisation(t64(a), t64(b), t64(0.1 * rng.normal(size=(np_, nx))), structure=structure)
    config = MPCConfig(
        nx=nx, nu=nx, horizon=np_, control_horizon=nc, q=t64(rng.uniform(0.5, 2, nx)), q_terminal=5.0,
        r=0.1, s=t64(rng.uniform(0, 1, nx)), u_lower=-0.4, u_upper=0.4, x_lower=-1.5, x_upper=t64([1.5] * (nx - 1) + [np.inf]),
    )
    x0, ref, up = rng.normal(size=nx), rng.normal(scale=2.0, size=(np_, nx)), rng.normal(size=nx)
    return config, lin, t64(x0), t64(ref), t64(up)


@pytest.mark.parametrize("backend", list(BACKENDS))
@pytest.mark.parametrize("structure", ["diagonal", "block"])
def test_structured_linearisation_equals_dense(backend, structure):
    config, lin, x0, ref, up = structured_problem(structure, np.random.default_rng(11))
    bs = 3 if structure == "block" else None
    sol = BACKENDS[backend](config, structure, block_size=bs).solve(lin, x0, ref, up)
    a, b = lin.dense()
    dense = Linearisation(a, b, lin.c)
    sol_dense = BACKENDS[backend](config).solve(dense, x0, ref, up)
    np.testing.assert_allclose(sol.controls.numpy(), sol_dense.controls.numpy(), atol=1e-6)
    np.testing.assert_allclose(sol.states.numpy(), predict(dense, x0, sol.controls).numpy(), atol=1e-12)
    assert (sol.controls.abs() > 0.4 - 1e-6).any()  # some bound is active
    assert sol.objective == pytest.approx(sol_dense.objective, rel=1e-6)


@pytest.mark.parametrize("plugin", ["qrqp", "qpoases", "highs"])
def test_other_casadi_plugins_agree(plugin, capfd):
    config, lin, x0, ref, up = structured_problem("diagonal", np.random.default_rng(2))
    ref_sol = OSQPBackend(config, "diagonal").solve(lin, x0, ref, up)
    sol = CasadiQPBackend(config, "diagonal", options=CasadiQPOptions(plugin=plugin)).solve(lin, x0, ref, up)
    np.testing.assert_allclose(sol.controls.numpy(), ref_sol.controls.numpy(), atol=1e-5)
    assert capfd.readouterr().out == ""


def test_float32_linearisation():
    config, lin, x0, ref, up = structured_problem("block", np.random.default_rng(4))
    lin32 = Linearisation(lin.a.float(), lin.b.float(), lin.c.float(), structure="block")
    sol = OSQPBackend(config, "block", block_size=3).solve(lin32, x0.float(), ref.float(), up.float())
    assert sol.controls.dtype == torch.float64 and sol.states.dtype == torch.float64


# ---------------------------------------------------------------------------------------------
# Bad input and failures
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", list(BACKENDS))
def test_wrong_linearisation_is_refused_by_name(backend):
    config, lin, x0, ref, up = structured_problem("block", np.random.default_rng(0))
    solver = BACKENDS[backend](config, "block", block_size=3)
    a, b = lin.dense()
    with pytest.raises(InvalidArgumentError) as e:
        solver.solve(Linearisation(a, b, lin.c), x0, ref, up)  # dense, built for block
    assert e.value.argument == "linearisation"
    f64 = {"dtype": torch.float64}
    two = Linearisation(torch.ones(5, 2, 2, 2, **f64), torch.ones(5, 2, 2, 2, **f64), torch.zeros(5, 4, **f64), structure="block")
    with pytest.raises(ShapeError) as e:  # nx 4 instead of 6
        solver.solve(two, x0, ref, up)
    assert e.value.argument == "linearisation"
    blocks2 = Linearisation(torch.ones(5, 3, 2, 2, **f64), torch.ones(5, 3, 2, 2, **f64), lin.c, structure="block")
    with pytest.raises(ShapeError) as e:  # blocks of 2, built for 3
        solver.solve(blocks2, x0, ref, up)
    assert e.value.argument == "linearisation"
    short = Linearisation(lin.a[:4], lin.b[:4], lin.c[:4], structure="block")
    with pytest.raises(ShapeError) as e:
        solver.solve(short, x0, ref, up)
    assert e.value.argument == "linearisation"
    with pytest.raises(ShapeError) as e:
        solver.solve(lin, x0, ref[:3], up)
    assert e.value.argument == "reference"


def test_nan_in_linearisation_and_crossed_bounds_are_refused():
    a = torch.ones(3, 2, 2, dtype=torch.float64)
    a[1, 0, 1] = float("nan")
    with pytest.raises(NonFiniteError):
        Linearisation(a, torch.ones(3, 2, 1, dtype=torch.float64), torch.zeros(3, 2, dtype=torch.float64))
    with pytest.raises(InvalidArgumentError, match="u_lower"):
        MPCConfig(nx=2, nu=1, horizon=3, u_lower=1.0, u_upper=-1.0)


def test_construction_checks():
    config = MPCConfig(nx=4, nu=2, horizon=3)
    for kwargs, name in (
        ({"structure": "sparse"}, "structure"),
        ({"structure": "diagonal"}, "structure"),  # nu != nx
        ({"block_size": 2}, "block_size"),
    ):
        with pytest.raises(InvalidArgumentError) as e:
            OSQPBackend(config, **kwargs)
        assert e.value.argument == name
    square = MPCConfig(nx=4, nu=4, horizon=3)
    for bs, name in ((None, "block_size"), (3, "block_size")):
        with pytest.raises(InvalidArgumentError) as e:
            CasadiQPBackend(square, "block", block_size=bs)
        assert e.value.argument == name
    with pytest.raises(InvalidArgumentError):
        OSQPOptions(eps_abs=0.0)
    with pytest.raises(InvalidArgumentError):
        OSQPOptions(max_iter=0)
    with pytest.raises(InvalidArgumentError):
        CasadiQPOptions(plugin="gurobi")
    layout = QPLayout(config, "dense", None, bounds_as_rows=True)
    with pytest.raises(ShapeError) as e:
        layout.check_lengths(np.zeros(layout.nnz_a - 1), np.zeros(layout.n), np.zeros(layout.m), np.zeros(layout.m))
    assert e.value.argument == "Ax"


def test_csc_keeps_explicit_entries():
    indptr, indices, position = csc_from_triplets(np.array([1, 0, 1]), np.array([0, 1, 1]), (2, 2))
    assert indptr.tolist() == [0, 1, 3] and indices.tolist() == [1, 0, 1] and position.tolist() == [0, 1, 2]
    with pytest.raises(RuntimeError):
        csc_from_triplets(np.array([0, 0]), np.array([1, 1]), (2, 2))


def infeasible_problem():
    """x_1 = x_0 + u_0 with |u| <= 1 cannot reach x_1 >= 5 from x_0 = 0."""
    config = MPCConfig(nx=1, nu=1, horizon=2, u_lower=-1.0, u_upper=1.0, x_lower=5.0)
    one = torch.ones(2, 1, 1, dtype=torch.float64)
    lin = Linearisation(one, one, torch.zeros(2, 1, dtype=torch.float64))
    return config, lin, torch.zeros(1, dtype=torch.float64), torch.zeros(2, 1, dtype=torch.float64), torch.zeros(1, dtype=torch.float64)


@pytest.mark.parametrize("backend, plugin", [("osqp", None), ("casadi", "osqp"), ("casadi", "qrqp")])
def test_infeasible_qp_raises_unless_asked_not_to(backend, plugin):
    config, lin, x0, ref, up = infeasible_problem()
    kwargs = {} if plugin is None else {"options": CasadiQPOptions(plugin=plugin)}
    solver = BACKENDS[backend](config, **kwargs)
    expected = {SolveStatus.INFEASIBLE} if plugin != "qrqp" else {SolveStatus.INFEASIBLE, SolveStatus.FAILED}
    with pytest.raises(SolverError) as e:
        solver.solve(lin, x0, ref, up)
    assert e.value.result.status in expected
    sol = solver.solve(lin, x0, ref, up, raise_on_failure=False)
    assert sol.status in expected and not sol.success and sol.message
    # the backend recovers: a feasible step after the failure solves
    feasible = Linearisation(lin.a, lin.b, torch.full((2, 1), 5.0, dtype=torch.float64))
    assert solver.solve(feasible, x0, ref, up).success


def test_max_iterations_is_a_failure():
    config = quadcopter_config()
    nx, nu = BD.shape
    lin = Linearisation(t64(np.tile(AD, (N, 1, 1))), t64(np.tile(BD, (N, 1, 1))), torch.zeros(N, nx))
    solver = OSQPBackend(config, options=OSQPOptions(max_iter=3, polish=False))
    sol = solver.solve(lin, torch.zeros(nx), t64(np.tile(XR, (N, 1))), torch.zeros(nu), raise_on_failure=False)
    assert sol.status is SolveStatus.MAX_ITERATIONS
    with pytest.raises(SolverError):
        solver.solve(lin, torch.zeros(nx), t64(np.tile(XR, (N, 1))), torch.zeros(nu))


def test_solved_status_with_nan_solution_is_reported_failed():
    config, lin, x0, ref, up = infeasible_problem()
    layout = QPLayout(config, "dense", None, bounds_as_rows=True)
    d = layout.numbers(lin, x0, ref, up)
    z = np.full(layout.n, np.nan)
    sol = make_solution(layout, d, z, SolveStatus.SOLVED, "solved", 5, 0.0)
    assert sol.status is SolveStatus.FAILED and "NaN" in sol.message
