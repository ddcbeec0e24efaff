"""The ``flowctl`` command line.

- ``flowctl generate PROMPT`` writes a PNG and stores the run in a cache directory;
  ``flowctl continue PROMPT`` continues the most similar cached run with ``--strategy``;
- ``flowctl bench`` runs the caching benchmark and writes its tables, plot and image grid;
- ``flowctl cache list|inspect|clear`` shows and empties a cache directory.

``--model`` is ``embedded`` (the shipped shapes MMDiT, the default), a local checkpoint directory
of a model family an installed adapter registers (:mod:`flowctl.families`; SD3 / SD3.5 with
flowctl's own), or for ``bench`` also ``gmm`` (the exact prompted Gaussian mixture). Errors on
bad input are one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import sys

from .bench.command import QUICK, bench_config, report
from .bench.runner import BenchConfig, run_benchmark
from .errors import FlowctlError, InvalidArgumentError
from .families import family_for
from .transitions import STRATEGY_NAMES


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="flowctl", description="Control theory for flow-matching models.")
    sub = parser.add_subparsers(dest="command", required=True)
    model = argparse.ArgumentParser(add_help=False)
    model.add_argument("--dtype", default="float32", choices=("float32", "float16", "bfloat16"), help="weights and states (default %(default)s; float16 not on the CPU)")
    model.add_argument("--device", default="cpu", help="'cpu', 'cuda', 'cuda:1', ... (default %(default)s)")
    model.add_argument("--guidance", type=float, default=None, help="classifier-free guidance scale, on when > 1 (default: the embedded model's 4, a checkpoint's 7)")
    model.add_argument("--negative-prompt", default="", help="negative prompt under guidance (default empty)")
    model.add_argument("--height", type=int, default=None, help="image height in pixels, checkpoints only (default: the model's)")
    model.add_argument("--width", type=int, default=None, help="image width in pixels, checkpoints only (default: the model's)")
    model.add_argument("--no-t5", action="store_true", help="load a checkpoint without its T5 encoder (zeros for its tokens)")
    model.add_argument("--max-sequence-length", type=int, default=256, help="T5 tokens of a checkpoint (default %(default)s)")
    model.add_argument("--encoder", default=None, choices=("sd3", "minilm"), help="similarity encoder: SD3's pooled CLIP (a checkpoint's default) or all-MiniLM-L6-v2 (the embedded model's)")
    model.add_argument("--policy", default="seed", help="'seed' or 'nirvana': similarity -> resume step (default %(default)s)")
    model.add_argument("--shooting-iterations", type=int, default=None, help="Levenberg-Marquardt iterations of the shooting and MPC strategies at most")
    model.add_argument("--budget", type=float, default=None, help="NFE-equivalents every planner may spend beyond its continuation (default 1)")

    image = argparse.ArgumentParser(add_help=False)
    image.add_argument("prompt", help="the prompt")
    image.add_argument("--model", default="embedded", help="'embedded' (the shipped shapes model, default) or a local SD3 checkpoint directory")
    image.add_argument("--steps", type=int, default=28, help="denoising steps (default %(default)s)")
    image.add_argument("--seed", type=int, default=0, help="seed of the noise (default %(default)s)")
    image.add_argument("--cache", default="flowctl-cache", help="cache directory or postgresql:// URL (default %(default)s)")
    image.add_argument("--namespace", default="default", help="the cache tenant (default %(default)s)")
    image.add_argument("--out", default="flowctl.png", help="image file to write (default %(default)s)")
    sub.add_parser("generate", parents=[image, model], help="a prompt from scratch to a PNG; the run is stored in the cache (created if missing)")
    cont = sub.add_parser("continue", parents=[image, model], help="a prompt continued from the most similar cached run (from scratch on a miss)")
    cont.add_argument("--strategy", default="direct", choices=STRATEGY_NAMES, help="transition strategy (default %(default)s)")

    bench = sub.add_parser(
        "bench", parents=[model],
        help="the cross-prompt caching benchmark (default: on the embedded model)",
        description="Runs the transition strategies on the shipped prompt pairs and writes results.json, "
        "report.md (the tables), speedup_psnr.svg and grid.png. Unset options take the model's defaults.",
    )
    bench.add_argument("--model", default="embedded", help="'embedded' (default), 'gmm' (the exact prompted Gaussian mixture) or a local SD3 checkpoint directory")
    bench.add_argument("--out", default="results/bench", help="output folder (default %(default)s)")
    bench.add_argument("--steps", type=int, default=None, help="sampler steps")
    bench.add_argument("--seeds", type=int, default=None, help="noise samples per pair")
    bench.add_argument("--seed", type=int, default=None, help="seed of the noise")
    bench.add_argument("--pairs-per-bucket", type=int, default=None, help="pairs per similarity bucket")
    bench.add_argument("--all-pairs", action="store_true", help="every shipped pair")
    bench.add_argument("--methods", default=None, help=f"comma-separated, of {', '.join(STRATEGY_NAMES)}")
    bench.add_argument("--sweep-pairs", type=int, default=None, help="most similar pairs swept over the resume step")
    bench.add_argument("--repeats", type=int, default=None, help="timing repeats of the cheap methods")
    bench.add_argument("--quick", action="store_true", help="a small smoke run, not for figures")
    bench.add_argument("--cache", default=None, help="also keep the cached runs in this store (a directory or a postgresql:// URL; namespace flowctl-bench), whose look-ups are then timed")
    _add_cache(sub)
    return parser


def _add_cache(sub: argparse._SubParsersAction) -> None:
    cache = sub.add_parser("cache", help="list, inspect or clear a persistent cache (a directory or PostgreSQL)")
    commands = cache.add_subparsers(dest="cache_command", required=True)
    where = argparse.ArgumentParser(add_help=False)
    where.add_argument("--cache", required=True, help="the cache directory, or a postgresql:// URL")
    where.add_argument("--namespace", default=None, help="only this tenant's entries (default: all)")
    commands.add_parser("list", parents=[where], help="one JSON line per entry (no tensor is read)")
    inspect = commands.add_parser("inspect", parents=[where], help="one entry in full: sigma, timestep and dt at each cached step")
    inspect.add_argument("id", help="the entry's id")
    clear = commands.add_parser("clear", parents=[where], help="delete the entries (of --namespace, or all with --all)")
    clear.add_argument("--all", action="store_true", help="every namespace (required without --namespace)")


def _cache(args: argparse.Namespace) -> int:
    from .cache import open_store
    from .cache.inspect import describe, summary

    if args.namespace is not None and not args.namespace.strip():
        raise InvalidArgumentError("--namespace", "must not be empty")
    if args.cache_command == "clear" and args.namespace is None and not args.all:
        raise InvalidArgumentError("--namespace", "name the namespace to clear, or pass --all")
    store = open_store(args.cache, create=False, argument="--cache")
    try:
        if args.cache_command == "list":
            for record in store.records(args.namespace):
                print(json.dumps(summary(record)))
        elif args.cache_command == "inspect":
            record = next((r for r in store.records(args.namespace) if r.entry_id == args.id), None)
            if record is None:
                raise InvalidArgumentError("id", f"no entry {args.id!r} in {args.cache!r}" + (f", namespace {args.namespace!r}" if args.namespace else ""))
            print(json.dumps(describe(store.get(record.entry_id, record.namespace)), indent=2))
        else:
            deleted = store.clear(args.namespace)
            print(json.dumps({"deleted": deleted, "left": len(store)}))
        for entry_id, why in store.quarantined.items():
            print(f"quarantined {entry_id}: {why}", file=sys.stderr)
    finally:
        store.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    name = f"flowctl {args.command}" + (f" {args.cache_command}" if args.command == "cache" else "")
    try:
        if args.command == "cache":
            return _cache(args)
        if args.command == "bench" and args.model == "gmm":
            return _bench_gmm(args)
        return family_for(args.model).run(args)
    except FlowctlError as exc:
        print(f"{name}: error: {exc}", file=sys.stderr)
        return 2


def _bench_gmm(args: argparse.Namespace) -> int:
    config = bench_config(args, BenchConfig(), QUICK)
    from .cache import open_store

    persistent = None if args.cache is None else open_store(args.cache, argument="--cache")
    result = run_benchmark(config, progress=lambda line: print(line, file=sys.stderr, flush=True), persistent=persistent)
    report(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
