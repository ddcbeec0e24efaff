"""The ``flowctl`` command line.

``flowctl bench`` runs the caching benchmark on the embedded default model; ``flowctl cache
list|inspect|clear`` shows and empties a persistent cache directory; ``flowctl sd3
generate|continue|bench`` runs SD3 / SD3.5 from a local checkpoint directory through the adapter
(:mod:`flowctl.adapters.sd3.commands`), which is imported, with diffusers, only for those commands.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace

from .bench.report import markdown, write_outputs
from .bench.runner import BenchConfig, run_benchmark
from .errors import FlowctlError, InvalidArgumentError
from .transitions import STRATEGY_NAMES

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
    _add_cache(sub)
    _add_sd3(sub)
    return parser


def _add_cache(sub: argparse._SubParsersAction) -> None:
    cache = sub.add_parser("cache", help="list, inspect or clear a persistent cache directory")
    commands = cache.add_subparsers(dest="cache_command", required=True)
    where = argparse.ArgumentParser(add_help=False)
    where.add_argument("--dir", required=True, help="the cache directory (a DiskStore)")
    where.add_argument("--namespace", default=None, help="only this tenant's entries (default: all)")
    commands.add_parser("list", parents=[where], help="one JSON line per entry (no tensor is read)")
    inspect = commands.add_parser("inspect", parents=[where], help="one entry in full: sigma, timestep and dt at each cached step")
    inspect.add_argument("id", help="the entry's id")
    clear = commands.add_parser("clear", parents=[where], help="delete the entries (of --namespace, or all with --all)")
    clear.add_argument("--all", action="store_true", help="every namespace (required without --namespace)")


def _cache(args: argparse.Namespace) -> int:
    from .cache.inspect import describe, open_existing, summary

    store = open_existing(args.dir)
    records = [r for r in store.index() if args.namespace in (None, r.namespace)]
    if args.cache_command == "list":
        for record in sorted(records, key=lambda r: r.created):
            print(json.dumps(summary(record)))
    elif args.cache_command == "inspect":
        record = next((r for r in records if r.entry_id == args.id), None)
        if record is None:
            raise InvalidArgumentError("id", f"no entry {args.id!r} in {args.dir!r}" + (f", namespace {args.namespace!r}" if args.namespace else ""))
        print(json.dumps(describe(store.read(record.entry_id)), indent=2))
    else:
        if args.namespace is None and not args.all:
            raise InvalidArgumentError("--namespace", "name the namespace to clear, or pass --all")
        for record in records:
            store.delete(record.entry_id)
        print(json.dumps({"deleted": len(records), "left": len(store)}))
    for entry_id, why in store.skipped.items():
        print(f"skipped {entry_id}: {why}", file=sys.stderr)
    return 0


SD3_STRATEGIES = STRATEGY_NAMES


def _add_sd3(sub: argparse._SubParsersAction) -> None:
    sd3 = sub.add_parser(
        "sd3",
        help="SD3 / SD3.5 from a local checkpoint: generate, continue from the cache, benchmark",
        description="Stable Diffusion 3 through diffusers (pip install flowctl[sd3]); the checkpoint is a local "
        "diffusers directory and nothing is downloaded. See docs/sd3.md.",
    )
    commands = sd3.add_subparsers(dest="sd3_command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--model", required=True, help="checkpoint directory (diffusers layout, model_index.json)")
    common.add_argument("--dtype", default="float32", choices=("float32", "float16", "bfloat16"), help="weights and latents (default %(default)s; float16 not on the CPU)")
    common.add_argument("--device", default="cpu", help="'cpu', 'cuda', 'cuda:1', ... (default %(default)s)")
    common.add_argument("--steps", type=int, default=28, help="denoising steps (default %(default)s)")
    common.add_argument("--guidance", type=float, default=7.0, help="classifier-free guidance scale, on when > 1 (default %(default)s)")
    common.add_argument("--negative-prompt", default="", help="negative prompt under guidance (default empty)")
    common.add_argument("--height", type=int, default=None, help="image height in pixels (default: the model's)")
    common.add_argument("--width", type=int, default=None, help="image width in pixels (default: the model's)")
    common.add_argument("--seed", type=int, default=0, help="seed of the noise (default %(default)s)")
    common.add_argument("--no-t5", action="store_true", help="load without the T5 encoder (zeros for its tokens; saves memory)")
    common.add_argument("--max-sequence-length", type=int, default=256, help="T5 tokens (default %(default)s)")
    common.add_argument("--encoder", default="sd3", choices=("sd3", "minilm"), help="similarity encoder: SD3's pooled CLIP or all-MiniLM-L6-v2 (default %(default)s)")
    common.add_argument("--policy", default="seed", help="'seed' or 'nirvana': similarity -> resume step (default %(default)s)")
    common.add_argument("--shooting-iterations", type=int, default=2, help="planning budget of shooting and mpc (default %(default)s)")
    cache = argparse.ArgumentParser(add_help=False)
    cache.add_argument("--prompt", required=True, help="the prompt")
    cache.add_argument("--cache", required=True, help="cache directory (a DiskStore; created if missing)")
    cache.add_argument("--namespace", default="default", help="the cache tenant (default %(default)s)")
    cache.add_argument("--out", default="sd3.png", help="image file to write (default %(default)s)")
    commands.add_parser("generate", parents=[common, cache], help="generate from scratch and store the run in the cache")
    cont = commands.add_parser("continue", parents=[common, cache], help="continue the most similar cached prompt (generate on a miss)")
    cont.add_argument("--strategy", default="direct", choices=SD3_STRATEGIES, help="transition strategy (default %(default)s)")
    bench = commands.add_parser("bench", parents=[common], help="the caching benchmark on shipped prompt pairs (flowctl bench's protocol)")
    bench.add_argument("--pairs-per-bucket", type=int, default=1, help="shipped pairs per similarity bucket (default %(default)s)")
    bench.add_argument("--seeds", type=int, default=1, help="noise samples per pair (default %(default)s)")
    bench.add_argument("--methods", default="direct,linear,sigmoid,closed-form", help=f"comma-separated, of {', '.join(SD3_STRATEGIES)} (default %(default)s)")
    bench.add_argument("--sweep-pairs", type=int, default=0, help="most similar pairs swept over the resume step (default %(default)s)")
    bench.add_argument("--repeats", type=int, default=1, help="timing repeats of the cheap methods (default %(default)s)")
    bench.add_argument("--out", default="results/sd3", help="output folder (default %(default)s)")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "sd3":
        return _sd3(args)
    if args.command == "cache":
        try:
            return _cache(args)
        except FlowctlError as exc:
            print(f"flowctl cache {args.cache_command}: error: {exc}", file=sys.stderr)
            return 2
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


def _sd3(args: argparse.Namespace) -> int:
    try:
        from .adapters.sd3.commands import run
    except ImportError as exc:
        print(f"flowctl sd3: error: the SD3 adapter needs the 'sd3' extra: pip install flowctl[sd3] ({exc})", file=sys.stderr)
        return 2
    try:
        return run(args)
    except FlowctlError as exc:
        print(f"flowctl sd3 {args.sd3_command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
