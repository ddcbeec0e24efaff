"""What ``flowctl bench`` shares across model families: its settings from the command line, and
writing its report."""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace

from .report import markdown, write_outputs
from .runner import BenchConfig, BenchResult

QUICK = dict(steps=12, seeds=2, pairs_per_bucket=1, sweep=(0.3, 0.6), sweep_pairs=1, repeats=1, shooting_iterations=2, components=24, size=16)
"""``--quick`` on the Gaussian mixture: a smoke run, not for figures."""


def bench_config(args: argparse.Namespace, defaults: BenchConfig, quick: dict) -> BenchConfig:
    """The benchmark's settings: ``defaults`` (the model's), ``quick`` over them with --quick,
    and every option given on the command line over both."""
    config = replace(defaults, **quick) if args.quick else defaults
    given = {
        "steps": args.steps, "seeds": args.seeds, "seed": args.seed, "pairs_per_bucket": args.pairs_per_bucket,
        "shooting_iterations": args.shooting_iterations, "budget": args.budget, "sweep_pairs": args.sweep_pairs, "repeats": args.repeats,
        "policy": args.policy,
        "strategies": None if args.methods is None else tuple(m.strip() for m in args.methods.split(",") if m.strip()),
    }
    config = replace(config, **{k: v for k, v in given.items() if v is not None})
    return replace(config, pairs_per_bucket=None) if args.all_pairs else config


def report(result: BenchResult, out: str) -> None:
    """Write the benchmark's files to ``out``, the tables to stdout and the paths to stderr."""
    paths = write_outputs(result, out)
    print(markdown(result))
    print("wrote " + ", ".join(str(p) for p in paths.values()), file=sys.stderr)
