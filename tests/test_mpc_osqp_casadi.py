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
from scipy import sparse

from flowctl.errors import InvalidArgumentError, NonFiniteError, ShapeError
from flowctl.mpc.casadi_backend import CasadiQPBackend, CasadiQPOptions
from flowctl.mpc.osqp_backend import OSQPBackend, OSQPOptions
from flowctl.mpc.problem import Linearisation, MPCConfig, objective, predict
from flowctl.mpc.qp_matrices import QPLayout, csc_from_triplets, make_solution
from flowctl.ocp.problem import SolverError, SolveStatus

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

AD = np.array([
    [1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.1, 0.0, 0.0, 0.0, 0.0, 0.0],
    [0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.1, 0.0, 0.0, 0.0, 0.0],
    [0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.1, 0.0, 0.0, 0.0],
    [0.0488, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0016, 0.0, 0.0, 0.0992, 0.0, 0.0],
    [0.0, -0.0488, 0.0, 0.0, 1.0, 0.0, 0.0, -0.0016, 0.0, 0.0, 0.0992, 0.0],
    [0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0992],
    [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0],
    [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0],
    [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0],
    [0.9734, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0488, 0.0, 0.0, 0.9846, 0.0, 0.0],
    [0.0, -0.9734, 0.0, 0.0, 0.0, 0.0, 0.0, -0.0488, 0.0, 0.0, 0.9846, 0.0],
    [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.9846],
])
BD = np.array([
    [0.0, -0.0726, 0.0, 0.0726],
    [-0.0726, 0.0, 0.0726, 0.0],
    [-0.0152, 0.0152, -0.0152, 0.0152],
    [-0.0, -0.0006, -0.0, 0.0006],
    [0.0006, 0.0, -0.0006, 0.0000],
    [0.0106, 0.0106, 0.0106, 0.0106],
    [0, -1.4512, 0.0, 1.4512],
    [-1.4512, 0.0, 1.4512, 0.0],
    [-0.3049, 0.3049, -0.3049, 0.3049],
    [-0.0, -0.0236, 0.0, 0.0236],
    [0.0236, 0.0, -0.0236, 0.0],
    [0.2107, 0.2107, 0.2107, 0.2107],
])
U0 = 10.5916
UMIN = np.array([9.6, 9.6, 9.6, 9.6]) - U0
UMAX = np.array([13.0, 13.0, 13.0, 13.0]) - U0
XMIN = np.array([-np.pi / 6, -np.pi / 6, -np.inf, -np.inf, -np.inf, -1.0] + [-np.inf] * 6)
XMAX = np.array([np.pi / 6, np.pi / 6] + [np.inf] * 10)
QDIAG = np.array([0.0, 0.0, 10.0, 10.0, 10.0, 10.0, 0.0, 0.0, 0.0, 5.0, 5.0, 5.0])
XR = np.array([0.0, 0.0, 1.0] + [0.0] * 9)
N, NSIM = 10, 15
TIGHT = {"eps_abs": 1e-8, "eps_rel": 1e-8, "max_iter": 10000, "polishing": True}


def plain_osqp_closed_loop(nsim=NSIM):
    """OSQP's MPC example as it is written (x_0 a variable, every bound a row, warm start)."""
    nx, nu = BD.shape
    x0 = np.zeros(nx)
    Q = sparse.diags(QDIAG)
    QN = Q
    R = 0.1 * sparse.eye(4)
    P = sparse.block_diag([sparse.kron(sparse.eye(N), Q), QN, sparse.kron(sparse.eye(N), R)], format="csc")
    q = np.hstack([np.kron(np.ones(N), -Q @ XR), -QN @ XR, np.zeros(N * nu)])
    Ax = sparse.kron(sparse.eye(N + 1), -sparse.eye(nx)) + sparse.kron(sparse.eye(N + 1, k=-1), sparse.csc_matrix(AD))
    Bu = sparse.kron(sparse.vstack([sparse.csc_matrix((1, N)), sparse.eye(N)]), sparse.csc_matrix(BD))
    Aeq = sparse.hstack([Ax, Bu])
    leq = np.hstack([-x0, np.zeros(N * nx)])
    ueq = leq
    Aineq = sparse.eye((N + 1) * nx + N * nu)
    lineq = np.hstack([np.kron(np.ones(N + 1), XMIN), np.kron(np.ones(N), UMIN)])
    uineq = np.hstack([np.kron(np.ones(N + 1), XMAX), np.kron(np.ones(N), UMAX)])
    A = sparse.vstack([Aeq, Aineq], format="csc")
    l, u = np.hstack([leq, lineq]), np.hstack([ueq, uineq])
    prob = osqp.OSQP()
    prob.setup(P, q, A, l, u, warm_starting=True, verbose=False, **TIGHT)
    controls, states = [], [x0]
    for _ in range(nsim):
        res = prob.solve(raise_error=False)
        assert res.info.status == "solved"
        ctrl = res.x[-N * nu : -(N - 1) * nu]
        x0 = AD @ x0 + BD @ ctrl
        l[:nx], u[:nx] = -x0, -x0
        prob.update(l=l, u=u)
        controls.append(ctrl), states.append(x0)
    return np.array(controls), np.array(states)


def quadcopter_config() -> MPCConfig:
    nx, nu = BD.shape
    return MPCConfig(
        nx=nx, nu=nu, horizon=N, q=t64(QDIAG), q_terminal=t64(QDIAG), r=0.1, s=0.0,
        u_lower=t64(UMIN), u_upper=t64(UMAX), x_lower=t64(XMIN), x_upper=t64(XMAX),
    )


def ours_closed_loop(backend, nsim=NSIM):
    nx, nu = BD.shape
    lin = Linearisation(t64(np.tile(AD, (N, 1, 1))), t64(np.tile(BD, (N, 1, 1))), torch.zeros(N, nx))
    ref, u_prev = t64(np.tile(XR, (N, 1))), torch.zeros(nu)
    backend.build()
    x, controls, states = np.zeros(nx), [], [np.zeros(nx)]
    for _ in range(nsim):
        sol = backend.solve(lin, t64(x), ref, u_prev)
        ctrl = sol.controls[0].numpy()
        x = AD @ x + BD @ ctrl
        controls.append(ctrl), states.append(x)
    return np.array(controls), np.array(states)


@pytest.mark.parametrize("backend", list(BACKENDS))
def test_quadcopter_closed_loop_matches_plain_osqp(backend, capfd):
    plain_u, plain_x = plain_osqp_closed_loop()
    u, x = ours_closed_loop(BACKENDS[backend](quadcopter_config()))
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
