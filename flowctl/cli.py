"""The ``flowctl`` command line."""

from __future__ import annotations

import argparse
import sys

from .demo import DemoConfig, run_demo
from .errors import FlowctlError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="flowctl", description="Control theory for flow-matching models.")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="prompt switch on the exact Gaussian-mixture flow; prints a table")
    defaults = DemoConfig()
    demo.add_argument("--steps", type=int, default=defaults.steps, help="sampler steps (default %(default)s)")
    demo.add_argument("--resume-step", type=int, default=defaults.resume_step, help="step B resumes from A (default %(default)s)")
    demo.add_argument("--seeds", type=int, default=defaults.seeds, help="noise samples (default %(default)s)")
    demo.add_argument("--seed", type=int, default=defaults.seed, help="master seed (default %(default)s)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "demo":
            config = DemoConfig(steps=args.steps, resume_step=args.resume_step, seeds=args.seeds, seed=args.seed)
            print(run_demo(config).table())
    except FlowctlError as exc:
        print(f"flowctl {args.command}: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
