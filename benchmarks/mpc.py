"""MPC QP backends, side by side on the same QP.

Sections (``SECTIONS``, run in order; each a ``(name, function)`` pair whose function takes the
parsed arguments, prints a markdown table and returns a JSON-able dict):

1. ``quadcopter``: OSQP's quadcopter MPC example (nx = 12, nu = 4, N = 10, 15 closed-loop steps
   from hover, reference altitude 1). Rows: flowctl's OSQPBackend, the same with a linearisation
   whose values change every step (forcing OSQP's matrix update and re-factorisation, as a
   linearising MPC does), the plain OSQP loop as OSQP's example writes it (x_0 a variable, every
   bound a row, only Ad's nonzeros in the pattern; update l/u, solve), the same plain loop on
   flowctl's QP (x_0 eliminated, finite bounds only, full 12 x 12 A_i blocks: the "dense"
   structure), which separates the formulation's cost from the backend's per-call work, and
   CasadiQPBackend (osqp and qrqp plugins). Two settings:
   "tight" (flowctl's defaults: eps 1e-8, polishing) and "example" (OSQP's defaults the example
   runs with: eps 1e-3, no polishing); the plain loop runs with the same settings as ours.

To add a section (e.g. the SD3-scale structured-vs-OSQP comparison on a 1x16x128x128 diagonal
problem), write ``def my_section(args) -> dict`` and append ``("my-section", my_section)`` to
``SECTIONS``; add any options it needs to ``main``'s parser. ``time_closed_loop`` and
``summarise`` implement the timing protocol below for any ``setup() -> step(x) -> (u, info)``
(``info`` holds "iterations" and, where known, "solver_s", the seconds of the solver call).

Timing protocol (DESIGN.md's house style 10): setup (build) time is reported apart from the
per-step time. For each method: one untimed warm-up closed loop, then ``--repeats`` closed
loops, each from a fresh setup, the methods taking turns; in each loop every step's wall time (the solve call, and for the
plain loop its l/u update) is taken, and the loop's median and maximum over steps; the table
gives the medians over loops of those. The plant's propagation is not timed. torch runs on one
thread.

    .venv/bin/python benchmarks/mpc.py [--steps 15] [--repeats 20] [--out results/mpc.json]
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

from flowctl.mpc.casadi_backend import CasadiQPBackend, CasadiQPOptions
from flowctl.mpc.osqp_backend import OSQPBackend, OSQPOptions
from flowctl.mpc.problem import Linearisation, MPCConfig
from flowctl.mpc.qp_matrices import QPLayout, StepNumbers

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
N = 10
NX, NU = BD.shape

SETTINGS = {
    "tight": {"eps_abs": 1e-8, "eps_rel": 1e-8, "max_iter": 10000, "polish": True},
    "example": {"eps_abs": 1e-3, "eps_rel": 1e-3, "max_iter": 4000, "polish": False},
}


def _plant(x: np.ndarray, u: np.ndarray) -> np.ndarray:
    return AD @ x + BD @ u


def _config() -> MPCConfig:
    t = torch.from_numpy
    return MPCConfig(
        nx=NX, nu=NU, horizon=N, q=t(QDIAG), q_terminal=t(QDIAG), r=0.1, s=0.0,
        u_lower=t(UMIN), u_upper=t(UMAX), x_lower=t(XMIN), x_upper=t(XMAX),
    )


def plain_osqp(settings: dict[str, Any]) -> Setup:
    """OSQP's example loop, as its documentation writes it."""

    def setup() -> Step:
        Q = sparse.diags(QDIAG)
        QN = Q
        R = 0.1 * sparse.eye(4)
        P = sparse.block_diag([sparse.kron(sparse.eye(N), Q), QN, sparse.kron(sparse.eye(N), R)], format="csc")
        q = np.hstack([np.kron(np.ones(N), -Q @ XR), -QN @ XR, np.zeros(N * NU)])
        Ax = sparse.kron(sparse.eye(N + 1), -sparse.eye(NX)) + sparse.kron(sparse.eye(N + 1, k=-1), sparse.csc_matrix(AD))
        Bu = sparse.kron(sparse.vstack([sparse.csc_matrix((1, N)), sparse.eye(N)]), sparse.csc_matrix(BD))
        Aeq = sparse.hstack([Ax, Bu])
        leq = np.hstack([-np.zeros(NX), np.zeros(N * NX)])
        Aineq = sparse.eye((N + 1) * NX + N * NU)
        lineq = np.hstack([np.kron(np.ones(N + 1), XMIN), np.kron(np.ones(N), UMIN)])
        uineq = np.hstack([np.kron(np.ones(N + 1), XMAX), np.kron(np.ones(N), UMAX)])
        A = sparse.vstack([Aeq, Aineq], format="csc")
        l, u = np.hstack([leq, lineq]), np.hstack([leq, uineq])
        prob = osqp.OSQP()
        prob.setup(
            P, q, A, l, u, warm_starting=True, verbose=False, eps_abs=settings["eps_abs"], eps_rel=settings["eps_rel"],
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
            return res.x[-N * NU : -(N - 1) * NU].copy(), {"iterations": res.info.iter, "solver_s": solver_s}

        return step

    return setup


def plain_osqp_on_our_qp(settings: dict[str, Any]) -> Setup:
    """OSQP's example loop (update l/u, solve) on flowctl's QP (its layout, dense A_i pattern):
    separates the cost of the QP's formulation from the backend's per-call work."""

    def setup() -> Step:
        layout = QPLayout(_config(), "dense", None, bounds_as_rows=True)
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
    x0 = np.zeros(NX)
    out: dict[str, Any] = {"problem": "OSQP quadcopter MPC example", "nx": NX, "nu": NU, "N": N, "steps": args.steps, "settings": {}}
    print(f"\n## Quadcopter (OSQP's MPC example), {args.steps} closed-loop steps, {args.repeats} repeats\n")
    for label, s in SETTINGS.items():
        opts = OSQPOptions(**s)
        methods = {
            "ours: OSQPBackend": ours(lambda opts=opts: OSQPBackend(config, options=opts)),
            "ours: OSQPBackend, A_i changing": ours(lambda opts=opts: OSQPBackend(config, options=opts), changing=True),
            "plain OSQP loop": plain_osqp(s),
            "plain OSQP loop on flowctl's QP": plain_osqp_on_our_qp(s),
            "ours: CasadiQPBackend (osqp)": ours(lambda s=s: CasadiQPBackend(config, options=CasadiQPOptions(plugin="osqp", **s))),
            "ours: CasadiQPBackend (qrqp)": ours(
                lambda s=s: CasadiQPBackend(config, options=CasadiQPOptions(plugin="qrqp", eps_abs=max(s["eps_abs"], 1e-8), eps_rel=max(s["eps_rel"], 1e-8)))
            ),
        }
        rows = summarise(methods, _plant, x0, args.steps, args.repeats)
        plain = rows["plain OSQP loop"]
        for row in rows.values():
            row["max_abs_control_diff_vs_plain"] = float(np.abs(row["controls"] - plain["controls"]).max())
            row["max_abs_state_diff_vs_plain"] = float(np.abs(row["states"] - plain["states"]).max())
        ratio = rows["ours: OSQPBackend"]["step_median_ms"] / plain["step_median_ms"]
        ratio_changing = rows["ours: OSQPBackend, A_i changing"]["step_median_ms"] / plain["step_median_ms"]
        print(f"### settings '{label}': eps_abs {s['eps_abs']:g}, eps_rel {s['eps_rel']:g}, polish {s['polish']}\n")
        print("| method | setup ms | step median ms | step max ms | solver median ms | iterations/step (median) | max abs u diff vs plain |")
        print("|---|---|---|---|---|---|---|")
        for name, row in rows.items():
            solver = f"{row['solver_median_ms']:.3f}" if row["solver_median_ms"] is not None else "-"
            its = statistics.median(row["iterations"])
            print(
                f"| {name} | {row['setup_ms']:.2f} | {row['step_median_ms']:.3f} | {row['step_max_ms']:.3f} | {solver} | "
                f"{its:g} | {row['max_abs_control_diff_vs_plain']:.1e} |"
            )
        verdict = "met" if ratio <= 1.2 else "NOT met"
        print(
            f"\nratio ours/plain (median step): {ratio:.2f}x (goal <= 1.2x: {verdict}); "
            f"with A_i changing every step: {ratio_changing:.2f}x\n"
        )
        for row in rows.values():
            row["controls"], row["states"] = row["controls"].tolist(), row["states"].tolist()
        out["settings"][label] = {"options": s, "rows": rows, "ratio_ours_over_plain": ratio, "ratio_changing_over_plain": ratio_changing, "goal_1_2x_met": ratio <= 1.2}
    return out


SECTIONS: list[tuple[str, Callable[[argparse.Namespace], dict[str, Any]]]] = [
    ("quadcopter", quadcopter_section),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=15, help="closed-loop steps per loop")
    parser.add_argument("--repeats", type=int, default=20, help="timed closed loops per method")
    parser.add_argument("--sections", nargs="*", default=None, help=f"sections to run (default all: {[n for n, _ in SECTIONS]})")
    parser.add_argument("--out", type=Path, default=Path("results/mpc.json"))
    args = parser.parse_args()
    for name in ("steps", "repeats"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1")
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
    print(f"Total run time: {report['total_run_s']:.1f} s on {os.cpu_count()} CPU core(s), torch threads 1.")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
