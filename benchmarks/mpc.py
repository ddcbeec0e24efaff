"""MPC QP backends, side by side on the same QP.

Sections (``SECTIONS``, run in order; each a ``(name, function)`` pair whose function takes the
parsed arguments, prints markdown tables and returns a JSON-able dict):

1. ``quadcopter``: OSQP's quadcopter MPC example (:func:`flowctl.mpc.examples.quadcopter`:
   nx = 12, nu = 4, N = 10, 15 closed-loop steps from hover, reference altitude 1). Rows:
   flowctl's OSQPBackend ("dense": every entry of A_i, B_i in the QP; and with
   ``pattern=(Ad != 0, Bd != 0)``: only the structural nonzeros, as OSQP's example), each also
   with a linearisation whose values change every step (forcing OSQP's matrix update and
   re-factorisation, as a linearising MPC does); the plain OSQP loop as OSQP's example writes it
   (x_0 a variable, every bound a row, only the nonzeros in the pattern; update l/u, solve); the
   same plain loop on flowctl's QP (x_0 eliminated, finite bounds only; full or ``pattern``
   A_i blocks), which separates the formulation's cost from the backend's per-call work; and
   CasadiQPBackend (osqp plugin without / with the pattern, qrqp plugin). Two settings: "tight"
   (flowctl's defaults: eps 1e-8, polishing) and "example" (the settings OSQP's example runs
   with: eps 1e-3, no polishing); the plain loops run with the same settings as ours. The
   issue's goal: ours / plain OSQP per-step median <= 1.2x.
2. ``sd3``: the SD3-scale QP, a diagonal linearisation of a 1x16x128x128 latent (nx = nu =
   262,144, Np = Nc = 5; :func:`sd3_data`), torch on 2 threads. StructuredBackend at full scale
   (float32 and float64, unbounded and with |u| <= 0.5; goal: unbounded <= 3 ms per step);
   OSQPBackend("diagonal") and StructuredBackend on slices of 1,024, 4,096 and 16,384
   coordinates of the same data (OSQP on the whole QP is too big to time repeatedly), OSQP's
   time extrapolated linearly to 262,144 from the largest slice (per-coordinate cost shown at
   each slice); the optimum of both compared on the 4,096 slice.

To add a section, write ``def my_section(args) -> dict`` and append ``("my-section",
my_section)`` to ``SECTIONS``; add any options it needs to ``main``'s parser.
``time_closed_loop`` and ``summarise`` implement the closed-loop timing protocol below for any
``setup() -> step(x) -> (u, info)`` (``info`` holds "iterations" and, where known, "solver_s",
the seconds of the solver call); ``time_solves`` times repeated solves of one backend.

Timing protocol (docs/conventions.md): setup (build) time is reported apart from the
per-step time. Quadcopter: for each method one untimed warm-up closed loop, then ``--repeats``
closed loops, each from a fresh setup, the methods taking turns; in each loop every step's wall
time (the solve call, and for the plain loop its l/u update) is taken, and the loop's median and
maximum over steps; the table gives the medians over loops of those. The plant's propagation is
not timed; torch runs on one thread. "per-call overhead" is the step median minus the median
time of the solver call itself (for OSQP, ``OSQP.solve()`` with its Python wrapper). SD3 scale:
``--sd3-solves`` timed solves after warm-up, the measured state moving between solves.

    .venv/bin/python benchmarks/mpc.py [--steps 15] [--repeats 20] [--sd3-solves 10]
        [--sections quadcopter sd3] [--out results/mpc.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import casadi
import numpy as np
import osqp
import scipy
import torch
from scipy import sparse

from flowctl import SigmaGrid
from flowctl.mpc.casadi_backend import CasadiQPBackend, CasadiQPOptions
from flowctl.mpc.examples import quadcopter
from flowctl.mpc.osqp_backend import OSQPBackend, OSQPOptions
from flowctl.mpc.problem import Linearisation, MPCConfig
from flowctl.mpc.qp_layout import QPLayout, StepNumbers
from flowctl.mpc.structured import StructuredBackend, StructuredOptions

torch.set_num_threads(1)

# A step takes the plant state and returns (applied control, {"iterations": .., "solver_s": ..}).
Step = Callable[[np.ndarray], tuple[np.ndarray, dict[str, float]]]
Setup = Callable[[], Step]


def time_closed_loop(setup: Setup, plant: Callable[[np.ndarray, np.ndarray], np.ndarray], x0: np.ndarray, steps: int):
    """One closed loop from a fresh setup: (setup seconds, step seconds, infos, controls, states)."""
    t0 = time.perf_counter()
    step = setup()
    setup_s = time.perf_counter() - t0
    x, times, infos, controls, states = x0.copy(), [], [], [], [x0.copy()]
    for _ in range(steps):
        t0 = time.perf_counter()
        u, info = step(x)
        times.append(time.perf_counter() - t0)
        infos.append(info)
        x = plant(x, u)
        controls.append(u), states.append(x)
    return setup_s, times, infos, np.array(controls), np.array(states)


def summarise(methods: dict[str, Setup], plant, x0: np.ndarray, steps: int, repeats: int) -> dict[str, dict[str, Any]]:
    """The timing protocol for each method: one untimed warm-up loop, then ``repeats`` timed
    loops, the methods taking turns (so that drift of the machine's speed hits all alike);
    medians over loops of each loop's setup time, median step and maximum step."""
    for setup in methods.values():
        time_closed_loop(setup, plant, x0, steps)
    runs: dict[str, list] = {name: [] for name in methods}
    for _ in range(repeats):
        for name, setup in methods.items():
            runs[name].append(time_closed_loop(setup, plant, x0, steps))
    rows = {}
    for name, loops in runs.items():
        infos, controls, states = loops[-1][2], loops[-1][3], loops[-1][4]
        solver = [statistics.median(i["solver_s"] for i in loop[2]) for loop in loops if all("solver_s" in i for i in loop[2])]
        rows[name] = {
            "setup_ms": 1e3 * statistics.median(loop[0] for loop in loops),
            "step_median_ms": 1e3 * statistics.median(statistics.median(loop[1]) for loop in loops),
            "step_max_ms": 1e3 * statistics.median(max(loop[1]) for loop in loops),
            "solver_median_ms": 1e3 * statistics.median(solver) if solver else None,
            "iterations": [int(i["iterations"]) for i in infos],
            "controls": controls,
            "states": states,
        }
    return rows


# ---------------------------------------------------------------------------------------------
# OSQP's quadcopter example
# ---------------------------------------------------------------------------------------------

QUAD = quadcopter()
AD, BD = QUAD.ad.numpy(), QUAD.bd.numpy()
XR = QUAD.reference.numpy()
N = QUAD.horizon
NX, NU = QUAD.nx, QUAD.nu

SETTINGS = {
    "tight": {"eps_abs": 1e-8, "eps_rel": 1e-8, "max_iter": 10000, "polish": True},
    "example": {"eps_abs": 1e-3, "eps_rel": 1e-3, "max_iter": 4000, "polish": False},
}


def _plant(x: np.ndarray, u: np.ndarray) -> np.ndarray:
    return AD @ x + BD @ u


def _config() -> MPCConfig:
    return QUAD.config()


def plain_osqp(settings: dict[str, Any]) -> Setup:
    """OSQP's example loop, as its documentation writes it."""

    def setup() -> Step:
        form = QUAD.osqp_form()
        l, u = form.l, form.u
        prob = osqp.OSQP()
        prob.setup(
            form.P, form.q, form.A, l, u, warm_starting=True, verbose=False, eps_abs=settings["eps_abs"], eps_rel=settings["eps_rel"],
            max_iter=settings["max_iter"], polishing=settings["polish"],
        )
        first = [True]

        def step(x: np.ndarray):
            if not first[0]:  # the example updates x_0 after applying the control; same work
                l[:NX], u[:NX] = -x, -x
                prob.update(l=l, u=u)
            first[0] = False
            t0 = time.perf_counter()
            res = prob.solve(raise_error=False)
            solver_s = time.perf_counter() - t0
            if res.info.status != "solved":
                raise RuntimeError(f"OSQP did not solve the problem: {res.info.status}")
            return res.x[form.first_control].copy(), {"iterations": res.info.iter, "solver_s": solver_s}

        return step

    return setup


def plain_osqp_on_our_qp(settings: dict[str, Any], pattern=None) -> Setup:
    """OSQP's example loop (update l/u, solve) on flowctl's QP (its layout: the full 12 x 12 A_i
    pattern, or only ``pattern``'s entries): separates the cost of the QP's formulation from the
    backend's per-call work."""

    def setup() -> Step:
        layout = QPLayout(_config(), "dense", None, bounds_as_rows=True, pattern=pattern)
        zeros_c = np.zeros((N, NX))
        d = StepNumbers(np.tile(AD, (N, 1, 1)), np.tile(BD, (N, 1, 1)), zeros_c, np.zeros(NX), np.tile(XR, (N, 1)), np.zeros(NU))
        ax, q, l, u = layout.step_data(d)
        P = sparse.csc_matrix((layout.p_upper[2], layout.p_upper[1], layout.p_upper[0]), shape=(layout.n, layout.n))
        A = sparse.csc_matrix((ax, layout.a_indices, layout.a_indptr), shape=(layout.m, layout.n))
        prob = osqp.OSQP()
        prob.setup(
            P, q, A, l, u, warm_starting=True, verbose=False, eps_abs=settings["eps_abs"], eps_rel=settings["eps_rel"],
            max_iter=settings["max_iter"], polishing=settings["polish"],
        )
        a0, first = d.a[0], [True]

        def step(x: np.ndarray):
            if not first[0]:
                rhs = -(a0 @ x)
                l[: NX], u[: NX] = rhs, rhs
                prob.update(l=l, u=u)
            first[0] = False
            t0 = time.perf_counter()
            res = prob.solve(raise_error=False)
            solver_s = time.perf_counter() - t0
            if res.info.status != "solved":
                raise RuntimeError(f"OSQP did not solve the problem: {res.info.status}")
            return res.x[layout.n_states : layout.n_states + NU].copy(), {"iterations": res.info.iter, "solver_s": solver_s}

        return step

    return setup


def ours(make_backend: Callable[[], Any], *, changing: bool = False) -> Setup:
    """A flowctl backend in closed loop; ``changing``: A_i, B_i differ (by 1e-13 relative) every step."""

    def setup() -> Step:
        backend = make_backend()
        backend.build()
        a, b = torch.from_numpy(np.tile(AD, (N, 1, 1))), torch.from_numpy(np.tile(BD, (N, 1, 1)))
        lins = [Linearisation(a, b, torch.zeros(N, NX, dtype=torch.float64))]
        if changing:
            lins.append(Linearisation(a * (1 + 1e-13), b, torch.zeros(N, NX, dtype=torch.float64)))
        ref, u_prev = torch.from_numpy(np.tile(XR, (N, 1))), torch.zeros(NU, dtype=torch.float64)
        k = [0]

        def step(x: np.ndarray):
            lin = lins[k[0] % len(lins)]
            k[0] += 1
            sol = backend.solve(lin, torch.from_numpy(x), ref, u_prev)
            return sol.controls[0].numpy(), {"iterations": sol.iterations, "solver_s": sol.solve_time}

        return step

    return setup


def quadcopter_section(args) -> dict[str, Any]:
    config = _config()
    pattern = QUAD.pattern
    x0 = QUAD.x0.numpy().copy()
    nnz = {
        "osqp_example": QUAD.osqp_form().A.nnz,
        "flowctl_dense_full": QPLayout(config, "dense", None, bounds_as_rows=True).nnz_a,
        "flowctl_dense_pattern": QPLayout(config, "dense", None, bounds_as_rows=True, pattern=pattern).nnz_a,
    }
    out: dict[str, Any] = {
        "problem": QUAD.name, "nx": NX, "nu": NU, "N": N, "steps": args.steps, "nnz_A": nnz, "settings": {},
    }
    print(f"\n## Quadcopter (OSQP's MPC example), {args.steps} closed-loop steps, {args.repeats} repeats\n")
    print(
        f"Nonzeros of the constraint matrix A: OSQP's example {nnz['osqp_example']}; flowctl's \"dense\" QP "
        f"{nnz['flowctl_dense_full']} with every entry of A_i, B_i, {nnz['flowctl_dense_pattern']} with "
        "pattern=(Ad != 0, Bd != 0) (x_0 is data, not a variable, and only finite bounds get rows).\n"
    )
    for label, s in SETTINGS.items():
        opts = OSQPOptions(**s)
        methods = {
            "ours: OSQPBackend": ours(lambda opts=opts: OSQPBackend(config, options=opts)),
            "ours: OSQPBackend, pattern": ours(lambda opts=opts: OSQPBackend(config, options=opts, pattern=pattern)),
            "ours: OSQPBackend, A_i changing": ours(lambda opts=opts: OSQPBackend(config, options=opts), changing=True),
            "ours: OSQPBackend, pattern, A_i changing": ours(
                lambda opts=opts: OSQPBackend(config, options=opts, pattern=pattern), changing=True
            ),
            "plain OSQP loop": plain_osqp(s),
            "plain OSQP loop on flowctl's QP": plain_osqp_on_our_qp(s),
            "plain OSQP loop on flowctl's QP, pattern": plain_osqp_on_our_qp(s, pattern),
            "ours: CasadiQPBackend (osqp)": ours(lambda s=s: CasadiQPBackend(config, options=CasadiQPOptions(plugin="osqp", **s))),
            "ours: CasadiQPBackend (osqp), pattern": ours(
                lambda s=s: CasadiQPBackend(config, options=CasadiQPOptions(plugin="osqp", **s), pattern=pattern)
            ),
            "ours: CasadiQPBackend (qrqp)": ours(
                lambda s=s: CasadiQPBackend(config, options=CasadiQPOptions(plugin="qrqp", eps_abs=max(s["eps_abs"], 1e-8), eps_rel=max(s["eps_rel"], 1e-8)))
            ),
        }
        rows = summarise(methods, _plant, x0, args.steps, args.repeats)
        plain = rows["plain OSQP loop"]
        for row in rows.values():
            row["max_abs_control_diff_vs_plain"] = float(np.abs(row["controls"] - plain["controls"]).max())
            row["max_abs_state_diff_vs_plain"] = float(np.abs(row["states"] - plain["states"]).max())
        ratios = {
            name: rows[name]["step_median_ms"] / plain["step_median_ms"]
            for name in (
                "ours: OSQPBackend", "ours: OSQPBackend, pattern", "ours: OSQPBackend, A_i changing",
                "ours: OSQPBackend, pattern, A_i changing",
            )
        }
        print(f"### settings '{label}': eps_abs {s['eps_abs']:g}, eps_rel {s['eps_rel']:g}, polish {s['polish']}\n")
        print("| method | setup ms | step median ms | step max ms | solver median ms | per-call overhead ms | iterations/step (median) | step median / plain | max abs u diff vs plain |")
        print("|---|---|---|---|---|---|---|---|---|")
        for name, row in rows.items():
            solver = f"{row['solver_median_ms']:.3f}" if row["solver_median_ms"] is not None else "-"
            overhead = f"{row['step_median_ms'] - row['solver_median_ms']:.3f}" if row["solver_median_ms"] is not None else "-"
            its = statistics.median(row["iterations"])
            print(
                f"| {name} | {row['setup_ms']:.2f} | {row['step_median_ms']:.3f} | {row['step_max_ms']:.3f} | {solver} | {overhead} | "
                f"{its:g} | {row['step_median_ms'] / plain['step_median_ms']:.2f}x | {row['max_abs_control_diff_vs_plain']:.1e} |"
            )
        r_full, r_pat = ratios["ours: OSQPBackend"], ratios["ours: OSQPBackend, pattern"]
        print(
            f"\nratio ours/plain (median step), goal <= 1.2x: without pattern {r_full:.2f}x "
            f"({'met' if r_full <= 1.2 else 'NOT met'}), with pattern {r_pat:.2f}x ({'met' if r_pat <= 1.2 else 'NOT met'}); "
            f"with A_i changing every step (OSQP re-factorises): {ratios['ours: OSQPBackend, A_i changing']:.2f}x / "
            f"{ratios['ours: OSQPBackend, pattern, A_i changing']:.2f}x\n"
        )
        for row in rows.values():
            row["controls"], row["states"] = row["controls"].tolist(), row["states"].tolist()
        out["settings"][label] = {
            "options": s, "rows": rows, "ratios_over_plain": ratios,
            "goal_1_2x_met": {"without_pattern": r_full <= 1.2, "with_pattern": r_pat <= 1.2},
        }
    return out


# ---------------------------------------------------------------------------------------------
# SD3 scale: a diagonal linearisation of a 1x16x128x128 latent
# ---------------------------------------------------------------------------------------------

SD3_SHAPE = (1, 16, 128, 128)
SD3_N = 16 * 128 * 128  # 262,144 latent values: nx = nu
SD3_HORIZON = 5  # Np = Nc = 5
SD3_GRID_STEPS = range(8, 13)  # dsigma_i = sigma_{i+1} - sigma_i of SigmaGrid.create(28, 3.0)
SD3_SLICES = (1024, 4096, 16384)
SD3_CHECK_SLICE = 4096
SD3_THREADS = 2
SD3_U_BOUND = 0.5
SD3_GOAL_MS = 3.0  # the seed's per-step budget for the unbounded structured solve


def sd3_data(n_full: int = SD3_N, seed: int = 0) -> dict[str, torch.Tensor]:
    """The per-coordinate data of the SD3-scale QP (float64; a slice is the first k coordinates):
    ``a_i = 1 + dsigma_i j_i`` with the Jacobian diagonal ``j_i ~ -1 + 0.3 N(0, 1)``,
    ``b_i = dsigma_i``, ``c_i ~ 0.01 N(0, 1)``, ``x0 ~ N(0, 1)``, targets ``r_i = x0 + N(0, 1)``
    (another trajectory, O(1) away), ``u_prev ~ 0.1 N(0, 1)``, and ``dx``, a direction along which
    the measured state moves from one timed solve to the next."""
    grid = SigmaGrid.create(28, 3.0)
    steps = torch.tensor(list(SD3_GRID_STEPS))
    ds = (grid.values[steps + 1] - grid.values[steps]).to(torch.float64)  # negative: sigma falls
    gen = torch.Generator().manual_seed(seed)
    f64 = {"dtype": torch.float64}
    j = -1.0 + 0.3 * torch.randn(SD3_HORIZON, n_full, generator=gen, **f64)
    x0 = torch.randn(n_full, generator=gen, **f64)
    return {
        "dsigma": ds,
        "a": 1.0 + ds[:, None] * j,
        "b": ds[:, None].expand(SD3_HORIZON, n_full).contiguous(),
        "c": 0.01 * torch.randn(SD3_HORIZON, n_full, generator=gen, **f64),
        "x0": x0,
        "reference": x0 + torch.randn(SD3_HORIZON, n_full, generator=gen, **f64),
        "u_prev": 0.1 * torch.randn(n_full, generator=gen, **f64),
        "dx": torch.randn(n_full, generator=gen, **f64),
    }


def sd3_config(n: int, bounded: bool) -> MPCConfig:
    kw = {"u_lower": -SD3_U_BOUND, "u_upper": SD3_U_BOUND} if bounded else {}
    return MPCConfig(nx=n, nu=n, horizon=SD3_HORIZON, control_horizon=SD3_HORIZON, q=1.0, r=0.1, s=0.05, **kw)


def sd3_problem(data: dict[str, torch.Tensor], n: int, dtype: torch.dtype):
    """(lin, lin with A_i scaled by 1 + 1e-6, x0, reference, u_prev, dx) on the first n coordinates."""
    t = {k: v[..., :n].contiguous().to(dtype) for k, v in data.items() if k != "dsigma"}
    lin = Linearisation(t["a"], t["b"], t["c"], "diagonal")
    lin_changed = Linearisation(t["a"] * (1 + 1e-6), t["b"], t["c"], "diagonal")
    return lin, lin_changed, t["x0"], t["reference"], t["u_prev"], t["dx"]


def structured_options(dtype: torch.dtype, compile: bool = False) -> StructuredOptions:
    """ADMM settings for the bounded rows: eps 1e-9 (the default) is below float32's resolution."""
    return StructuredOptions(rho=0.1, eps=1e-5 if dtype == torch.float32 else 1e-8, max_iterations=2000, compile=compile)


def time_solves(backend, problem, solves: int, warmup: int, *, changing: bool = False) -> dict[str, Any]:
    """``warmup`` untimed then ``solves`` timed calls of ``backend.solve``; the measured state
    moves along ``dx`` (0.01 per solve) so that a warm-started solver does not see the same QP
    twice; with ``changing`` the linearisation alternates between two (A_i differ by 1e-6
    relative), as in a linearising MPC (OSQP then updates A and re-factorises every step)."""
    lin, lin_changed, x0, reference, u_prev, dx = problem
    t0 = time.perf_counter()
    backend.build()
    setup_s = time.perf_counter() - t0
    times, iterations, sol = [], [], None
    for k in range(warmup + solves):
        x = x0 + (0.01 * k) * dx
        step_lin = lin_changed if changing and k % 2 else lin
        t0 = time.perf_counter()
        sol = backend.solve(step_lin, x, reference, u_prev)
        elapsed = time.perf_counter() - t0
        if k >= warmup:
            times.append(elapsed)
            iterations.append(sol.iterations)
    return {
        "setup_ms": 1e3 * setup_s,
        "step_median_ms": 1e3 * statistics.median(times),
        "step_max_ms": 1e3 * max(times),
        "iterations_median": statistics.median(iterations),
        "solves": solves,
    }


def _times(ratio: float) -> str:
    return f"{ratio:.2f}x" if ratio < 10 else f"{ratio:.0f}x"


def sd3_section(args) -> dict[str, Any]:
    threads = torch.get_num_threads()
    torch.set_num_threads(SD3_THREADS)
    try:
        return _sd3_section(args)
    finally:
        torch.set_num_threads(threads)


def _sd3_section(args) -> dict[str, Any]:
    solves = args.sd3_solves
    data = sd3_data()
    out: dict[str, Any] = {
        "latent": list(SD3_SHAPE), "n": SD3_N, "horizon": SD3_HORIZON, "control_horizon": SD3_HORIZON,
        "weights": {"q": 1.0, "r": 0.1, "s": 0.05}, "u_bound": SD3_U_BOUND, "dsigma": data["dsigma"].tolist(),
        "torch_threads": torch.get_num_threads(), "solves": solves,
    }
    print(f"\n## SD3 scale: diagonal linearisation of a {'x'.join(map(str, SD3_SHAPE))} latent (nx = nu = {SD3_N:,}), Np = Nc = {SD3_HORIZON}\n")
    print(
        f"a_i = 1 + dsigma_i j_i (j_i ~ -1 + 0.3 N(0,1)), b_i = dsigma_i, dsigma = SigmaGrid.create(28, 3.0) steps 8..12 "
        f"({', '.join(f'{d:.4f}' for d in data['dsigma'].tolist())}), c_i ~ 0.01 N(0,1), r_i = x0 + N(0,1), "
        f"q = 1, r = 0.1, s = 0.05. torch threads: {torch.get_num_threads()} (on {os.cpu_count()} CPU cores). "
        f"Per step: median and max of {solves} solves after warm-up, the measured state moving between solves.\n"
    )

    # ---- StructuredBackend at full scale
    print(f"### StructuredBackend at full scale ({SD3_N:,} coordinates)\n")
    print("| dtype | bounds | step median ms | step max ms | ADMM iterations (median) | goal <= 3 ms (unbounded) |")
    print("|---|---|---|---|---|---|")
    full: dict[str, Any] = {}
    for dtype in (torch.float32, torch.float64):
        problem = sd3_problem(data, SD3_N, dtype)
        for bounded, compiled in ((False, False), (False, True), (True, False)):
            config = sd3_config(SD3_N, bounded)
            backend = StructuredBackend(config, "diagonal", options=structured_options(dtype, compiled))
            t0 = time.perf_counter()
            if compiled:  # the first solve compiles; reported apart from the step times
                backend.solve(problem[0], problem[2], problem[3], problem[4])
            compile_s = time.perf_counter() - t0
            row = time_solves(backend, problem, solves, warmup=2 if not bounded else 1)
            if bounded:
                u = backend.solve(problem[0], problem[2], problem[3], problem[4]).controls
                row["fraction_of_controls_at_bound"] = float((u.abs() >= SD3_U_BOUND * (1 - 1e-6)).double().mean())
                row["admm"] = {"rho": backend.options.rho, "eps": backend.options.eps}
            bounds_label = "u in [-0.5, 0.5]" if bounded else ("unbounded, compiled" if compiled else "unbounded")
            if compiled:
                row["compile_s"] = compile_s
            key = f"{str(dtype).removeprefix('torch.')}, {bounds_label}"
            full[key] = row
            goal = "-" if bounded else ("met" if row["step_median_ms"] <= SD3_GOAL_MS else "NOT met")
            its = f"{row['iterations_median']:g}" + (
                f" (rho {backend.options.rho:g}, eps {backend.options.eps:g}; {100 * row['fraction_of_controls_at_bound']:.1f}% of u at a bound)"
                if bounded else ""
            )
            print(
                f"| {str(dtype).removeprefix('torch.')} | {'u in [-0.5, 0.5]' if bounded else ('none, torch.compile (first solve: %.1f s)' % compile_s if compiled else 'none')} | {row['step_median_ms']:.2f} | "
                f"{row['step_max_ms']:.2f} | {its} | {goal} |"
            )
        del problem
    out["structured_full_scale"] = full
    unbounded = {k: r["step_median_ms"] for k, r in full.items() if "unbounded" in k}
    met = {k: t <= SD3_GOAL_MS for k, t in unbounded.items()}
    print(
        f"\nGoal: unbounded structured step <= {SD3_GOAL_MS:g} ms at full scale ({torch.get_num_threads()} torch threads): "
        + "; ".join(f"{k} {t:.2f} ms {'met' if met[k] else 'NOT met'}" for k, t in unbounded.items()) + ".\n"
    )
    out["goal_3ms_met"] = met

    # ---- OSQP and StructuredBackend on slices (float64)
    tight = OSQPOptions()
    loose = OSQPOptions(**SETTINGS["example"])
    methods = {
        "StructuredBackend": lambda n: (StructuredBackend(sd3_config(n, False), "diagonal"), False),
        "OSQPBackend, eps 1e-8 + polish": lambda n: (OSQPBackend(sd3_config(n, False), "diagonal", options=tight), False),
        "OSQPBackend, eps 1e-8 + polish, A_i changing": lambda n: (OSQPBackend(sd3_config(n, False), "diagonal", options=tight), True),
        "OSQPBackend, eps 1e-3": lambda n: (OSQPBackend(sd3_config(n, False), "diagonal", options=loose), False),
        "StructuredBackend, u in [-0.5, 0.5]": lambda n: (
            StructuredBackend(sd3_config(n, True), "diagonal", options=structured_options(torch.float64)), False
        ),
        "OSQPBackend, eps 1e-8 + polish, u in [-0.5, 0.5]": lambda n: (OSQPBackend(sd3_config(n, True), "diagonal", options=tight), False),
    }
    slices: dict[str, dict[int, dict[str, Any]]] = {name: {} for name in methods}
    for n in SD3_SLICES:
        problem = sd3_problem(data, n, torch.float64)
        for name, make in methods.items():
            backend, changing = make(n)
            row = time_solves(backend, problem, solves, warmup=1, changing=changing)
            row["us_per_coordinate"] = 1e3 * row["step_median_ms"] / n
            slices[name][n] = row
    extrapolated = {
        name: rows[SD3_SLICES[-1]]["step_median_ms"] * SD3_N / SD3_SLICES[-1] for name, rows in slices.items()
    }
    print(
        f"### OSQP and StructuredBackend on slices of the same QP (float64, the first n coordinates)\n\n"
        f"Step median ms (us per coordinate) [iterations]; the last column extrapolates linearly from the "
        f"{SD3_SLICES[-1]:,} slice to {SD3_N:,} coordinates (the QP is separable: cost ~ linear in size; "
        f"an extrapolation, not a measurement). OSQP setup (build) ms in the JSON.\n"
    )
    head = " | ".join(f"n = {n:,}" for n in SD3_SLICES)
    print(f"| method | {head} | {SD3_N:,} (extrapolated) |")
    print("|---|" + "---|" * (len(SD3_SLICES) + 1))
    for name, rows in slices.items():
        cells = " | ".join(
            f"{rows[n]['step_median_ms']:.2f} ({rows[n]['us_per_coordinate']:.2f}) [{rows[n]['iterations_median']:g}]" for n in SD3_SLICES
        )
        print(f"| {name} | {cells} | {extrapolated[name]:.0f} |")
    ratio_rows: dict[str, Any] = {}
    print("\nRatio OSQP / StructuredBackend (per-step median, same slice, same bounds):\n")
    print(f"| OSQP row | {head} | {SD3_N:,}: extrapolated OSQP / extrapolated structured | {SD3_N:,}: extrapolated OSQP / measured structured (float64) |")
    print("|---|" + "---|" * (len(SD3_SLICES) + 2))
    for name in methods:
        if not name.startswith("OSQP"):
            continue
        bounded = "u in" in name
        ref_name = "StructuredBackend, u in [-0.5, 0.5]" if bounded else "StructuredBackend"
        measured = full["float64, u in [-0.5, 0.5]" if bounded else "float64, unbounded"]["step_median_ms"]
        per_slice = {n: slices[name][n]["step_median_ms"] / slices[ref_name][n]["step_median_ms"] for n in SD3_SLICES}
        ratio_rows[name] = {
            "slices": per_slice,
            "extrapolated_over_extrapolated": extrapolated[name] / extrapolated[ref_name],
            "extrapolated_over_measured_full_scale": extrapolated[name] / measured,
        }
        cells = " | ".join(_times(per_slice[n]) for n in SD3_SLICES)
        print(
            f"| {name} | {cells} | {_times(ratio_rows[name]['extrapolated_over_extrapolated'])} | "
            f"{_times(ratio_rows[name]['extrapolated_over_measured_full_scale'])} |"
        )
    out["slices"] = {name: {str(n): row for n, row in rows.items()} for name, rows in slices.items()}
    out["extrapolated_ms"] = extrapolated
    out["ratios_osqp_over_structured"] = {name: {**r, "slices": {str(n): v for n, v in r["slices"].items()}} for name, r in ratio_rows.items()}

    # ---- the same optimum on the check slice
    n = SD3_CHECK_SLICE
    problem = sd3_problem(data, n, torch.float64)
    lin, _, x0, reference, u_prev, _ = problem
    print(f"\n### Same optimum on the {n:,}-coordinate slice (float64; OSQP eps 1e-8 + polish)\n")
    print("| bounds | max abs u diff | objective structured | objective OSQP | objective diff (OSQP - structured) |")
    print("|---|---|---|---|---|")
    check = {}
    for bounded in (False, True):
        config = sd3_config(n, bounded)
        s_sol = StructuredBackend(config, "diagonal", options=structured_options(torch.float64)).solve(lin, x0, reference, u_prev)
        o_sol = OSQPBackend(config, "diagonal", options=tight).solve(lin, x0, reference, u_prev)
        du = float((s_sol.controls - o_sol.controls).abs().max())
        row = {"max_abs_u_diff": du, "objective_structured": s_sol.objective, "objective_osqp": o_sol.objective,
               "objective_diff": o_sol.objective - s_sol.objective}
        check["bounded" if bounded else "unbounded"] = row
        print(
            f"| {'u in [-0.5, 0.5]' if bounded else 'none'} | {du:.1e} | {s_sol.objective:.10g} | {o_sol.objective:.10g} | "
            f"{row['objective_diff']:.1e} |"
        )
    out["optimum_check"] = {"n": n, **check}
    print()
    return out


SECTIONS: list[tuple[str, Callable[[argparse.Namespace], dict[str, Any]]]] = [
    ("quadcopter", quadcopter_section),
    ("sd3", sd3_section),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=15, help="closed-loop steps per loop")
    parser.add_argument("--repeats", type=int, default=20, help="timed closed loops per method")
    parser.add_argument("--sd3-solves", type=int, default=10, help="timed solves per row of the SD3-scale section")
    parser.add_argument("--sections", nargs="*", default=None, help=f"sections to run (default all: {[n for n, _ in SECTIONS]})")
    parser.add_argument("--out", type=Path, default=Path("results/mpc.json"))
    args = parser.parse_args()
    for name in ("steps", "repeats", "sd3_solves"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    known = [n for n, _ in SECTIONS]
    chosen = known if args.sections is None else args.sections
    for name in chosen:
        if name not in known:
            parser.error(f"unknown section {name!r}; known: {known}")

    start = time.perf_counter()
    report: dict[str, Any] = {
        "osqp": osqp.__version__, "casadi": casadi.__version__, "scipy": scipy.__version__, "torch": torch.__version__,
        "python": platform.python_version(), "machine": platform.machine(), "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(), "sections": {},
    }
    for name, section in SECTIONS:
        if name in chosen:
            report["sections"][name] = section(args)
    report["total_run_s"] = time.perf_counter() - start
    print(
        f"Total run time: {report['total_run_s']:.1f} s on {os.cpu_count()} CPU core(s); torch threads 1 "
        f"(the SD3-scale section: {SD3_THREADS})."
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
