"""The per-step cost of flowctl's hot paths, where its own overhead (checks, host
synchronisations, bookkeeping) is visible: a flow whose evaluation is nearly free.

- ``integrate``: 28 Euler steps of a 2-sample, 3 x 8 x 8 Gaussian-mixture flow, every state kept.
- ``direct switch``: a transition request on that run, continued as prompt B from step 12.
- ``secant``: the same request, corrected by the secant step.
- ``structured MPC step``: one unbounded QP of the structured backend on a 3 x 8 x 8 diagonal
  linearisation, horizon 3, unchecked (``validate=False``), as the MPC loop calls it.

The fastest of ``--repeats`` calls after a warm-up, torch on one thread. ``--compare REV`` measures an
earlier revision of flowctl's core beside this checkout, alternating ``--rounds`` times (a git
worktree of REV in a temporary folder, imported instead of this checkout), and prints each
figure's ratio this / REV (medians over the rounds).

    .venv/bin/python benchmarks/hot_paths.py [--repeats 200] [--compare REV [--rounds 3]]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from flowctl import GaussianMixtureFlow, SigmaGrid, integrate
from flowctl.mpc import Linearisation, MPCConfig, StructuredBackend
from flowctl.systems.gaussian_mixture import smooth_image_means
from flowctl.transitions import DirectSwitch, SecantCorrection, TransitionRequest

torch.set_num_threads(1)


def best_ms(call, repeats: int) -> float:
    """The fastest of ``repeats`` calls after one warm-up, in ms: the code's own cost, least
    disturbed by the machine (as ``timeit`` advises for comparisons)."""
    call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return 1e3 * min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--out", default=None, help="also write the figures as JSON")
    parser.add_argument("--compare", default=None, help="a git revision to measure beside this checkout")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if args.compare:
        compare(args.compare, args.rounds, args.repeats)
        return

    gen = torch.Generator().manual_seed(0)
    flow = GaussianMixtureFlow(smooth_image_means(8, 3, 8, gen), 0.4)
    w_a = torch.softmax(torch.randn(8, generator=gen, dtype=torch.float64), 0)
    w_b = torch.softmax(torch.randn(8, generator=gen, dtype=torch.float64), 0)
    grid = SigmaGrid.create(28, 3.0)
    noise = torch.randn(2, 3, 8, 8, generator=gen, dtype=torch.float64)
    run = integrate(flow, noise, grid, w_a)
    point = run.resume_point(12)

    n = 3 * 8 * 8
    config = MPCConfig(nx=n, nu=n, horizon=3, q=1.0, r=0.1)
    backend = StructuredBackend(config, "diagonal")
    lin = Linearisation(torch.full((3, n), 0.9, dtype=torch.float64), torch.full((3, n), 0.1, dtype=torch.float64),
                        torch.zeros(3, n, dtype=torch.float64), "diagonal")
    x0, ref, u_prev = torch.randn(n, dtype=torch.float64, generator=gen), torch.zeros(3, n, dtype=torch.float64), torch.zeros(n, dtype=torch.float64)

    figures = {
        "integrate, 28 steps (ms)": best_ms(lambda: integrate(flow, noise, grid, w_a), args.repeats),
        "direct switch from step 12 (ms)": best_ms(lambda: DirectSwitch().run(TransitionRequest(flow, point, w_a, w_b)), args.repeats),
        "secant from step 12 (ms)": best_ms(lambda: SecantCorrection().run(TransitionRequest(flow, point, w_a, w_b)), args.repeats),
        "structured MPC step (ms)": best_ms(lambda: backend.solve(lin, x0, ref, u_prev, validate=False), args.repeats),
    }
    figures["one flow evaluation (ms)"] = best_ms(lambda: flow.velocity(noise, grid.t(3), w_a), args.repeats)
    width = max(map(len, figures))
    for name, value in figures.items():
        print(f"{name:<{width}}  {value:8.3f}")
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump(figures, f, indent=2)


# Imports flowctl from the folder given first, bypassing the editable install of this checkout.
_BOOT = """import runpy, sys
sys.meta_path = [f for f in sys.meta_path if 'editable' not in type(f).__module__.lower()]
sys.path.insert(0, sys.argv[1])
sys.argv = [sys.argv[2], *sys.argv[3:]]
runpy.run_path(sys.argv[0], run_name='__main__')
"""


def compare(revision: str, rounds: int, repeats: int) -> None:
    here = Path(__file__).resolve()
    root = here.parents[1]
    with tempfile.TemporaryDirectory() as tmp:
        before = Path(tmp) / "before"
        subprocess.run(["git", "-C", str(root), "worktree", "add", "--detach", "-q", str(before), revision], check=True)
        try:
            runs: dict[str, list[dict]] = {revision: [], "this checkout": []}
            for _ in range(rounds):
                for name, folder in ((revision, before), ("this checkout", root)):
                    out = Path(tmp) / "figures.json"
                    subprocess.run([sys.executable, "-c", _BOOT, str(folder), str(here), "--repeats", str(repeats), "--out", str(out)],
                                   check=True, stdout=subprocess.DEVNULL)
                    runs[name].append(json.loads(out.read_text()))
        finally:
            subprocess.run(["git", "-C", str(root), "worktree", "remove", "--force", str(before)], check=True)
    print(f"| figure | {revision} (median of {rounds}) | this checkout | this / {revision} |")
    print("|---|---:|---:|---:|")
    for key in runs[revision][0]:
        old = statistics.median(r[key] for r in runs[revision])
        new = statistics.median(r[key] for r in runs["this checkout"])
        print(f"| {key} | {old:.3f} | {new:.3f} | {new / old:.2f} |")


if __name__ == "__main__":
    main()
