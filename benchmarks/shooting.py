"""Shooting benchmarks, in one run:

1. CasADi's Van der Pol example: flowctl's CasadiShooting against CasADi's plain formulation
   (its docs/examples/python/direct_{single,multiple}_shooting.py), and flowctl's TorchShooting
   (Levenberg-Marquardt with dense steps, and matrix-free with conjugate gradients; multiple
   shooting with all intervals as one batch, and interval by interval) on the same problem.
2. The transition problem (docs/shooting.md) on the exact Gaussian-mixture flow (smooth random means, two random prompts):
   shooting with each terminal residual and transcription against direct switch, the no-op floor
   and B from scratch at the same forward-NFE budget, scored against B's reference.

Van der Pol: every method solves cold (same initial guess, no warm start). CasADi rows, and the
batched torch row (``BATCHED_METHODS``, tens of milliseconds): one untimed solve, then
``--repeats`` timed ones; build time is the median of ``--builds`` builds. The other torch rows
take seconds, so they have their own ``--torch-repeats`` and one build: dense rows
(``TORCH_METHODS``) one untimed solve, then ``--torch-repeats`` timed ones; the matrix-free row
(``MATRIX_FREE_METHODS``, over a minute) one timed solve, after the dense rows. To add a
method, append a ``(name, setup)`` pair to one of these lists: ``setup()`` builds and returns a ``solve()`` callable that returns
``(objective, iterations, seconds, extra)``, ``extra`` a dict of further figures (NFE by kind,
constraint violation, status), empty where there are none.

Transition: every shooting row plans once per ``--transition-repeats`` (planning time is the
median; quality and NFE are deterministic and taken from the last plan), then continues with
plain Euler under prompt B to the end of the grid.

    .venv/bin/python benchmarks/shooting.py [--repeats 20] [--torch-repeats 3]
        [--transition-repeats 3] [--van-der-pol-only] [--out results/shooting.json]

``--van-der-pol-only`` skips the transition part (its report then has no "transition" entry).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import statistics
import time
from pathlib import Path

import casadi
import torch

from flowctl import CountedDynamics, NFECounter, SigmaGrid, integrate, metrics
from flowctl.systems.gaussian_mixture import smooth_image_means
from flowctl.ocp import LeastSquaresOptions, TorchOptions, TorchShooting
from flowctl.ocp.casadi_backend import CasadiOptions, CasadiShooting
from flowctl.ocp.examples import VAN_DER_POL_OPTIMUM, van_der_pol_problem
from flowctl.ocp.transition import (
    NoiseAnchor,
    TransitionWeights,
    VelocityConsistency,
    transition_problem,
)
from flowctl.schedules import StepSchedule
from flowctl.systems import GaussianMixtureFlow

# The tensors here are tiny (a 2-state ODE, a 4 x 3 x 16 x 16 batch): intra-op threads only
# add overhead and noise to the timings, so torch runs on one thread.
torch.set_num_threads(1)

TOL = CasadiOptions().tol
NFE_KINDS = ("forward", "jvp", "vjp")


# ---------------------------------------------------------------------------------------------
# Van der Pol
# ---------------------------------------------------------------------------------------------


def ours(transcription: str, expand: bool = True):
    def setup():
        options = CasadiOptions(warm_start=False, expand=expand)
        shooting = CasadiShooting(van_der_pol_problem(), transcription, options)
        shooting.build()

        def solve():
            r = shooting.solve()
            return r.objective, r.iterations, r.wall_time, {"constraint_violation": r.constraint_violation}

        return solve

    return setup


# Tolerances at which both transcriptions reach the optimum to 1e-6 (the defaults, 1e-6 each,
# stop 3.4e-5 above it in single shooting); the CasADi rows run IPOPT at tol 1e-10.
TORCH_OPTIONS = LeastSquaresOptions(tol=1e-8, constraint_tol=1e-8)


def torch_shooting(transcription: str, linear_solver: str, batch_intervals: bool = True):
    """flowctl's TorchShooting with ``TORCH_OPTIONS`` and the given linear solver, cold; multiple
    shooting integrates all intervals as one batch unless ``batch_intervals`` is False."""

    def setup():
        least_squares = dataclasses.replace(TORCH_OPTIONS, linear_solver=linear_solver)
        options = TorchOptions(least_squares, warm_start=False, batch_intervals=batch_intervals)
        shooting = TorchShooting(van_der_pol_problem(), transcription, options)

        def solve():
            r = shooting.solve(raise_on_failure=False)
            extra = {
                "status": r.status.value,
                "nfe": {kind: float(r.nfe.get(kind, 0)) for kind in NFE_KINDS},
                "constraint_violation": r.constraint_violation,
            }
            return r.objective, r.iterations, r.wall_time, extra

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
            return float(sol["f"]), int(solver.stats()["iter_count"]), seconds, {}

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
BATCHED_METHODS = [
    ("torch multiple (dense, batched)", torch_shooting("multiple", "dense")),
]
TORCH_METHODS = [
    ("torch single (dense)", torch_shooting("single", "dense")),
    ("torch multiple (dense, interval by interval)", torch_shooting("multiple", "dense", batch_intervals=False)),
]
MATRIX_FREE_METHODS = [  # single shooting only: matrix-free multiple shooting takes over three minutes
    ("torch single (cg)", torch_shooting("single", "cg")),
]
RATIOS = [
    ("ours/plain single", "ours single", "plain single"),
    ("ours/plain multiple", "ours multiple", "plain multiple"),
    ("ours (MX)/plain single", "ours single (MX, expand=False)", "plain single"),
    ("ours (MX)/plain multiple", "ours multiple (MX, expand=False)", "plain multiple"),
    ("torch multiple (dense, batched)/ours multiple", "torch multiple (dense, batched)", "ours multiple"),
    ("torch multiple (dense, batched)/plain multiple", "torch multiple (dense, batched)", "plain multiple"),
    ("torch single (dense)/ours multiple", "torch single (dense)", "ours multiple"),
    ("torch multiple (interval by interval)/(batched)", "torch multiple (dense, interval by interval)",
     "torch multiple (dense, batched)"),
    ("torch single (cg)/(dense)", "torch single (cg)", "torch single (dense)"),
]


def measure(setup, repeats: int, builds: int, untimed_first: bool = True) -> dict:
    build_times = []
    for _ in range(builds):
        start = time.perf_counter()
        solve = setup()
        build_times.append(time.perf_counter() - start)
    if untimed_first:
        solve()  # first-call initialisation
    runs = [solve() for _ in range(repeats)]
    seconds = [s for _, _, s, _ in runs]
    objective, iterations, _, extra = runs[-1]
    return {
        "build_median_s": statistics.median(build_times),
        "solve_median_s": statistics.median(seconds),
        "solve_max_s": max(seconds),
        "iterations": iterations,
        "objective": objective,
        "objective_error": objective - VAN_DER_POL_OPTIMUM,
        **extra,
    }


def van_der_pol_section(args) -> dict:
    rows = {name: measure(setup, args.repeats, args.builds) for name, setup in METHODS}
    rows.update({name: measure(setup, args.repeats, 1) for name, setup in BATCHED_METHODS})
    rows.update({name: measure(setup, args.torch_repeats, 1) for name, setup in TORCH_METHODS})
    rows.update({name: measure(setup, 1, 1, untimed_first=False) for name, setup in MATRIX_FREE_METHODS})
    ratios = {key: rows[a]["solve_median_s"] / rows[b]["solve_median_s"] for key, a, b in RATIOS}

    print(f"## Van der Pol (N=20, RK4 x4), cold solves; optimum {VAN_DER_POL_OPTIMUM}\n")
    print(f"CasADi rows: IPOPT tol {TOL:g}, {args.repeats} repeats. Torch rows: Levenberg-Marquardt + augmented "
          f"Lagrangian, float64, tol {TORCH_OPTIONS.tol:g}, constraint_tol {TORCH_OPTIONS.constraint_tol:g}; "
          f"batched: {args.repeats} repeats; other dense rows: {args.torch_repeats} repeat(s), each after an "
          f"untimed solve; matrix-free (cg, {TORCH_OPTIONS.cg_iterations} CG iterations, cg_tol "
          f"{TORCH_OPTIONS.cg_tol:g}): one solve.")
    print("'ours' CasADi rows use expand=True (SX evaluation) while the plain example uses MX; "
          "the '(MX, expand=False)' rows are the like-for-like comparison.\n")
    print("| method | build ms (median) | solve ms (median) | solve ms (max) | iterations | objective "
          "| objective - optimum | constraint violation | NFE forward | NFE jvp | NFE vjp |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, r in rows.items():
        nfe = r.get("nfe")
        nfe_cells = " | ".join(f"{nfe[k]:g}" for k in NFE_KINDS) if nfe else "- | - | -"
        violation = f"{r['constraint_violation']:.1e}" if "constraint_violation" in r else "-"
        status = f" ({r['status']})" if r.get("status", "solved") != "solved" else ""
        print(f"| {name}{status} | {1e3 * r['build_median_s']:.1f} | {1e3 * r['solve_median_s']:.1f} | "
              f"{1e3 * r['solve_max_s']:.1f} | {r['iterations']} | {r['objective']:.9f} | "
              f"{r['objective_error']:+.1e} | {violation} | {nfe_cells} |")
    print("\nSolve-time ratios (median): " + ", ".join(f"{key} {v:.2f}" for key, v in ratios.items()))
    return {
        "problem": "van_der_pol",
        "optimum": VAN_DER_POL_OPTIMUM,
        "tol": TOL,
        "repeats": args.repeats,
        "torch_repeats": args.torch_repeats,
        "torch_options": dataclasses.asdict(TORCH_OPTIONS),
        "builds": args.builds,
        "methods": rows,
        "ratios_solve_median": ratios,
    }


# ---------------------------------------------------------------------------------------------
# Transition on the exact Gaussian-mixture flow
# ---------------------------------------------------------------------------------------------

STEPS, SHIFT, RESUME, HORIZON, SEEDS = 28, 3.0, 8, 3, 4
COMPONENTS, CHANNELS, SIZE, STD, PROMPT_SHIFT, SEED = 64, 3, 16, 0.5, 2.0, 0
DATA_RANGE, SSIM_WINDOW = 2.0, 7
WEIGHTS = TransitionWeights(terminal=1.0, effort=1e-4)
TRANSITION_OPTIONS = TorchOptions(LeastSquaresOptions(max_iterations=30, constraint_tol=1e-4))


def mixture_setting() -> dict:
    """64 smooth random means, two random weight vectors as prompts, 4 seeds of noise."""
    gen = torch.Generator().manual_seed(SEED)
    means = smooth_image_means(COMPONENTS, CHANNELS, SIZE, gen).float()
    flow = GaussianMixtureFlow(means, STD)
    logits = torch.randn(COMPONENTS, generator=gen)
    w_a = torch.softmax(logits, 0)
    w_b = torch.softmax(logits + PROMPT_SHIFT * torch.randn(COMPONENTS, generator=gen), 0)
    noise = torch.randn(SEEDS, CHANNELS, SIZE, SIZE, generator=gen)
    return {"flow": flow, "w_a": w_a, "w_b": w_b, "noise": noise, "grid": SigmaGrid.create(STEPS, SHIFT)}


def terminal_residuals(s: dict):
    """(name, factory) for each terminal residual; factories take the counted model."""
    grid, w_b, noise = s["grid"], s["w_b"], s["noise"]
    sigma_end = float(grid.sigmas[RESUME + HORIZON])
    step = float(grid.sigmas[RESUME + HORIZON + 1] - grid.sigmas[RESUME + HORIZON])
    return [
        ("noise anchor (1 segment)", lambda m: NoiseAnchor(m, w_b, noise, sigma_end, segments=1)),
        ("noise anchor (4 segments, one rollout)", lambda m: NoiseAnchor(m, w_b, noise, sigma_end, segments=4)),
        ("noise anchor (4 segments, multiple_shooting=True)", lambda m: NoiseAnchor(m, w_b, noise, sigma_end, segments=4, multiple_shooting=True)),
        ("velocity consistency", lambda m: VelocityConsistency(m, w_b, sigma_end, step)),
    ]


def transition_section(args) -> dict:
    s = mixture_setting()
    flow, grid, w_a, w_b, noise = s["flow"], s["grid"], s["w_a"], s["w_b"], s["noise"]
    run_a = integrate(flow, noise, grid, w_a, keep=[RESUME])
    reference = integrate(flow, noise, grid, w_b, keep="final").final
    x_k = run_a.states[RESUME]
    counter = NFECounter()
    model = CountedDynamics(flow, counter)

    def score(final: torch.Tensor) -> dict:
        return {
            "psnr_db": float(metrics.psnr(final, reference, data_range=DATA_RANGE).mean()),
            "ssim": float(metrics.ssim(final, reference, data_range=DATA_RANGE, window_size=SSIM_WINDOW).mean()),
        }

    def continue_b(x: torch.Tensor, start: int) -> tuple[torch.Tensor, float]:
        t0 = time.perf_counter()
        final = integrate(model, x, grid, w_b, start=start, keep="final").final
        return final, time.perf_counter() - t0

    def nfe() -> dict:
        return {kind: float(counter.by_kind.get(kind, 0)) for kind in NFE_KINDS}

    # How well each terminal residual tells B's reference apart from direct switch: |r|^2 at
    # step k + H on B's reference trajectory and on direct switch's (uncounted diagnostics).
    end = RESUME + HORIZON
    on_reference = integrate(flow, noise, grid, w_b, keep=[end]).states[end]
    on_direct = integrate(flow, x_k, grid, w_b, start=RESUME, keep=[end]).states[end]
    with torch.no_grad():
        residual_check = {
            name: {"reference": float(make(flow)(on_reference).square().sum()),
                   "direct_switch": float(make(flow)(on_direct).square().sum())}
            for name, make in terminal_residuals(s)
            if "multiple_shooting" not in name  # the same residual as the one-rollout 4 segments
        }

    rows: dict[str, dict] = {}
    rows["A as is (no-op floor)"] = {**score(run_a.final), "nfe": dict.fromkeys(NFE_KINDS, 0.0),
                                     "planning_s": 0.0, "continuation_s": 0.0, "status": "-"}
    counter.reset()
    final, seconds = continue_b(x_k, RESUME)
    rows["direct switch"] = {**score(final), "nfe": nfe(), "planning_s": 0.0, "continuation_s": seconds,
                             "status": "-"}
    direct_forward = rows["direct switch"]["nfe"]["forward"]

    for name, make_terminal in terminal_residuals(s):
        for transcription in ("single", "multiple"):
            problem = transition_problem(
                model, grid, x_k, RESUME, w_a, w_b, horizon=HORIZON, schedule=StepSchedule(),
                terminal=make_terminal(model), weights=WEIGHTS,
            )
            plans = []
            for _ in range(args.transition_repeats):
                solver = TorchShooting(problem, transcription, TRANSITION_OPTIONS, counter=counter)
                plans.append(solver.solve(raise_on_failure=False))
            result = plans[-1]
            counter.reset()
            final, seconds = continue_b(result.states[-1], RESUME + HORIZON)
            continuation = nfe()
            rows[f"shooting {transcription}, {name}"] = {
                **score(final),
                # one plan's evaluations plus the continuation's
                "nfe": {kind: float(result.nfe.get(kind, 0)) + continuation[kind] for kind in NFE_KINDS},
                "planning_s": statistics.median(p.wall_time for p in plans),
                "planning_max_s": max(p.wall_time for p in plans),
                "continuation_s": seconds,
                "status": result.status.value,
                "iterations": result.iterations,
                "objective": result.objective,
                "constraint_violation": result.constraint_violation,
            }

    short_steps = STEPS - RESUME
    counter.reset()
    t0 = time.perf_counter()
    short = integrate(model, noise, SigmaGrid.create(short_steps, SHIFT), w_b, keep="final").final
    seconds = time.perf_counter() - t0
    rows[f"B from scratch, {short_steps} steps"] = {**score(short), "nfe": nfe(), "planning_s": 0.0,
                                                   "continuation_s": seconds, "status": "-"}

    print("\n## Transition on the exact Gaussian-mixture flow\n")
    print(f"{COMPONENTS} components of {CHANNELS}x{SIZE}x{SIZE}, std {STD}, {STEPS} Euler steps (shift {SHIFT}), "
          f"{SEEDS} seeds in one batch, float32. Resume at step k={RESUME}, horizon H={HORIZON}, "
          f"StepSchedule, weights terminal={WEIGHTS.terminal:g} effort={WEIGHTS.effort:g}, "
          f"LM max_iterations=30 constraint_tol=1e-4. Every row continues with Euler under B to step "
          f"{STEPS}; NFE counts evaluations after step k (planning + continuation; B from scratch: its "
          f"whole run, {short_steps} steps = direct switch's {direct_forward:g} forward). PSNR (data range "
          f"{DATA_RANGE:g}) and SSIM (window {SSIM_WINDOW}) to B's reference from the same noise, mean "
          f"over seeds. Planning time: median of {args.transition_repeats} solve(s).\n")
    print("| method | PSNR (dB) | SSIM | NFE forward | NFE jvp | NFE vjp | planning s | status "
          "| objective | constraint violation |")
    print("|---|---:|---:|---:|---:|---:|---:|---|---:|---:|")
    for name, r in rows.items():
        n = r["nfe"]
        status = r["status"] + (f" ({r['iterations']} it)" if "iterations" in r else "")
        solved = f"{r['objective']:.4f} | {r['constraint_violation']:.1e}" if "objective" in r else "- | -"
        print(f"| {name} | {r['psnr_db']:.2f} | {r['ssim']:.4f} | {n['forward']:g} | {n['jvp']:g} | {n['vjp']:g} "
              f"| {r['planning_s']:.2f} | {status} | {solved} |")
    print(f"\nTerminal residual |r|^2 at step k+H={end} (uncontrolled states; the solves above minimise "
          f"w_T |r|^2 + effort):\n")
    print("| terminal residual | on B's reference | on direct switch |")
    print("|---|---:|---:|")
    for name, r in residual_check.items():
        print(f"| {name} | {r['reference']:.4f} | {r['direct_switch']:.4f} |")
    return {
        "problem": "transition_gaussian_mixture",
        "setting": {
            "components": COMPONENTS, "channels": CHANNELS, "size": SIZE, "std": STD,
            "prompt_shift": PROMPT_SHIFT, "seed": SEED, "seeds": SEEDS, "steps": STEPS, "shift": SHIFT,
            "resume_step": RESUME, "horizon": HORIZON, "dtype": "float32",
            "weights": {"terminal": WEIGHTS.terminal, "effort": WEIGHTS.effort, "smoothness": WEIGHTS.smoothness},
            "least_squares": {"max_iterations": 30, "constraint_tol": 1e-4},
            "data_range": DATA_RANGE, "ssim_window": SSIM_WINDOW,
            "transition_repeats": args.transition_repeats,
        },
        "methods": rows,
        "terminal_residual_sumsq": residual_check,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=20, help="timed solves per CasADi row")
    parser.add_argument("--builds", type=int, default=3, help="builds per CasADi row")
    parser.add_argument("--torch-repeats", type=int, default=3, help="timed solves per seconds-long dense torch Van der Pol row")
    parser.add_argument("--transition-repeats", type=int, default=3, help="plans per transition shooting row")
    parser.add_argument("--van-der-pol-only", action="store_true", help="skip the transition part")
    parser.add_argument("--out", type=Path, default=Path("results/shooting.json"))
    args = parser.parse_args()
    for name in ("repeats", "builds", "torch_repeats", "transition_repeats"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")

    start = time.perf_counter()
    van_der_pol = van_der_pol_section(args)
    transition = None if args.van_der_pol_only else transition_section(args)
    total = time.perf_counter() - start
    print(f"\nTotal run time: {total:.1f} s on {os.cpu_count()} CPU core(s), torch threads 1.")

    args.out.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "casadi": casadi.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "total_run_s": total,
        "van_der_pol": van_der_pol,
        **({} if transition is None else {"transition": transition}),
    }
    args.out.write_text(json.dumps(_finite(report), indent=2, allow_nan=False))
    print(f"wrote {args.out}")


def _finite(value):
    """``value`` with non-finite floats (PSNR of identical images is inf) as strings: strict JSON."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


if __name__ == "__main__":
    main()
