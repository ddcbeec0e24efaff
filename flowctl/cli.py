"""The ``flowctl`` command line."""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace

from .bench.report import markdown, write_outputs
from .bench.runner import BenchConfig, run_benchmark
from .errors import FlowctlError

QUICK = dict(steps=12, seeds=2, pairs_per_bucket=1, sweep=(0.3, 0.6), sweep_pairs=1, repeats=1, shooting_iterations=2, components=24, size=16)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="flowctl", description="Control theory for flow-matching models.")
    sub = parser.add_subparsers(dest="command", required=True)
    bench = sub.add_parser(
        "bench",
        help="the cross-prompt caching benchmark on the embedded default model",
        description="Runs every transition strategy on the shipped prompt pairs and writes results.json, "
        "report.md (the tables), speedup_psnr.svg and grid.png.",
    )
    d = BenchConfig()
    bench.add_argument("--out", default="results/bench", help="output folder (default %(default)s)")
    bench.add_argument("--steps", type=int, default=d.steps, help="sampler steps (default %(default)s)")
    bench.add_argument("--seeds", type=int, default=d.seeds, help="noise samples per pair (default %(default)s)")
    bench.add_argument("--seed", type=int, default=d.seed, help="seed of the noise (default %(default)s)")
    bench.add_argument("--policy", default=d.policy, help="'seed' or 'nirvana' (default %(default)s)")
    bench.add_argument("--pairs-per-bucket", type=int, default=d.pairs_per_bucket, help="pairs per similarity bucket (default %(default)s)")
    bench.add_argument("--all-pairs", action="store_true", help="every shipped pair")
    bench.add_argument("--shooting-iterations", type=int, default=d.shooting_iterations, help="planning budget (default %(default)s)")
    bench.add_argument("--quick", action="store_true", help="a small smoke run (seconds), not for figures")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        config = BenchConfig(
            steps=args.steps, seeds=args.seeds, seed=args.seed, policy=args.policy,
            pairs_per_bucket=None if args.all_pairs else args.pairs_per_bucket,
            shooting_iterations=args.shooting_iterations,
        )
        if args.quick:
            config = replace(config, **QUICK)
        result = run_benchmark(config, progress=lambda line: print(line, file=sys.stderr, flush=True))
        paths = write_outputs(result, args.out)
    except FlowctlError as exc:
        print(f"flowctl {args.command}: error: {exc}", file=sys.stderr)
        return 2
    print(markdown(result))
    print("wrote " + ", ".join(str(p) for p in paths.values()), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
