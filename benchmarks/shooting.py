"""Shooting on CasADi's Van der Pol example: flowctl's CasadiShooting against CasADi's plain
formulation (its docs/examples/python/direct_{single,multiple}_shooting.py), in one run.

Every method solves cold (same initial guess, no warm start) ``--repeats`` times after one
untimed solve; build time is the median of ``--builds`` separate builds. To add a method,
append a ``(name, setup)`` pair to ``METHODS``: ``setup()`` builds and returns a ``solve()``
callable that returns ``(objective, iterations, seconds)``.

    .venv/bin/python benchmarks/shooting.py [--repeats 20] [--out results/shooting.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import casadi

from flowctl.ocp.casadi_backend import CasadiOptions, CasadiShooting
from flowctl.ocp.examples import VAN_DER_POL_OPTIMUM, van_der_pol_problem

TOL = CasadiOptions().tol


def ours(transcription: str, expand: bool = True):
    def setup():
        options = CasadiOptions(warm_start=False, expand=expand)
        shooting = CasadiShooting(van_der_pol_problem(), transcription, options)
        shooting.build()

        def solve():
            r = shooting.solve()
            return r.objective, r.iterations, r.wall_time

        return solve

    return setup


def plain(multiple: bool):
    """CasADi's example as written there: MX symbols, one RK4 F with M = 4, x0 fixed by bounds."""

    def setup():
        T, N, M = 10.0, 20, 4
        DT = T / N / M
        x1, x2, u = casadi.MX.sym("x1"), casadi.MX.sym("x2"), casadi.MX.sym("u")
        x = casadi.vertcat(x1, x2)
        xdot = casadi.vertcat((1 - x2**2) * x1 - x2 + u, x1)
        f = casadi.Function("f", [x, u], [xdot, x1**2 + x2**2 + u**2])
        X0, U = casadi.MX.sym("X0", 2), casadi.MX.sym("U")
        X, Q = X0, 0
        for _ in range(M):
            k1, k1_q = f(X, U)
            k2, k2_q = f(X + DT / 2 * k1, U)
            k3, k3_q = f(X + DT / 2 * k2, U)
            k4, k4_q = f(X + DT * k3, U)
            X = X + DT / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
            Q = Q + DT / 6 * (k1_q + 2 * k2_q + 2 * k3_q + k4_q)
        F = casadi.Function("F", [X0, U], [X, Q])
        w, w0, lbw, ubw, g, lbg, ubg, J = [], [], [], [], [], [], [], 0
        Xk = casadi.MX([0, 1])
        if multiple:
            Xk = casadi.MX.sym("X0", 2)
            w, w0, lbw, ubw = [Xk], [0, 1], [0, 1], [0, 1]
        for k in range(N):
            Uk = casadi.MX.sym(f"U_{k}")
            w, w0, lbw, ubw = w + [Uk], w0 + [0], lbw + [-1], ubw + [1]
            Xk_end, Jk = F(Xk, Uk)
            J = J + Jk
            if multiple:
                Xk = casadi.MX.sym(f"X_{k + 1}", 2)
                w, w0 = w + [Xk], w0 + [0, 0]
                lbw, ubw = lbw + [-0.25, -casadi.inf], ubw + [casadi.inf, casadi.inf]
                g, lbg, ubg = g + [Xk_end - Xk], lbg + [0, 0], ubg + [0, 0]
            else:
                Xk = Xk_end
                g, lbg, ubg = g + [Xk[0]], lbg + [-0.25], ubg + [casadi.inf]
        opts = {"print_time": False, "ipopt.print_level": 0, "ipopt.sb": "yes", "ipopt.tol": TOL}
        nlp = {"f": J, "x": casadi.vertcat(*w), "g": casadi.vertcat(*g)}
        solver = casadi.nlpsol("solver", "ipopt", nlp, opts)

        def solve():
            start = time.perf_counter()
            sol = solver(x0=w0, lbx=lbw, ubx=ubw, lbg=lbg, ubg=ubg)
            seconds = time.perf_counter() - start
            return float(sol["f"]), int(solver.stats()["iter_count"]), seconds

        return solve

    return setup


METHODS = [
    ("ours single", ours("single")),
    ("plain single", plain(multiple=False)),
    ("ours multiple", ours("multiple")),
    ("plain multiple", plain(multiple=True)),
    ("ours single (MX, expand=False)", ours("single", expand=False)),
    ("ours multiple (MX, expand=False)", ours("multiple", expand=False)),
]
RATIOS = [("single", "ours single", "plain single"), ("multiple", "ours multiple", "plain multiple")]


def measure(setup, repeats: int, builds: int) -> dict:
    build_times = []
    for _ in range(builds):
        start = time.perf_counter()
        solve = setup()
        build_times.append(time.perf_counter() - start)
    solve()  # untimed: first-call initialisation
    runs = [solve() for _ in range(repeats)]
    seconds = [s for _, _, s in runs]
    return {
        "build_median_s": statistics.median(build_times),
        "solve_median_s": statistics.median(seconds),
        "solve_max_s": max(seconds),
        "iterations": runs[-1][1],
        "objective": runs[-1][0],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--builds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("results/shooting.json"))
    args = parser.parse_args()
    rows = {name: measure(setup, args.repeats, args.builds) for name, setup in METHODS}
    ratios = {key: rows[a]["solve_median_s"] / rows[b]["solve_median_s"] for key, a, b in RATIOS}

    print(f"Van der Pol (N=20, RK4 x4, IPOPT tol {TOL:g}), cold solves, {args.repeats} repeats, "
          f"optimum {VAN_DER_POL_OPTIMUM}\n")
    print("| method | build ms (median) | solve ms (median) | solve ms (max) | iterations | objective |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, r in rows.items():
        print(f"| {name} | {1e3 * r['build_median_s']:.1f} | {1e3 * r['solve_median_s']:.1f} | "
              f"{1e3 * r['solve_max_s']:.1f} | {r['iterations']} | {r['objective']:.9f} |")
    print("\n" + "  ".join(f"ours/plain {key}: {v:.2f}" for key, v in ratios.items()))

    args.out.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "problem": "van_der_pol",
        "casadi": casadi.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "tol": TOL,
        "repeats": args.repeats,
        "methods": rows,
        "ratios_solve_median": ratios,
    }
    args.out.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
