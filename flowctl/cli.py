"""The ``flowctl`` command line.

- ``flowctl generate PROMPT`` writes an image and stores the run in a cache directory;
  ``flowctl continue PROMPT`` continues the most similar cached run with ``--strategy``;
- ``flowctl bench`` runs the caching benchmark and writes its tables, plot and image grid;
- ``flowctl cache list|inspect|clear`` shows and empties a cache directory.

``--model`` is ``embedded`` (the shipped shapes MMDiT, the default), a local checkpoint directory
of a model family an installed adapter registers (:mod:`flowctl.families`; SD3 / SD3.5 and FLUX.1 with
flowctl's own), or for ``bench`` also ``gmm`` (the exact prompted Gaussian mixture).

Bad input is one line on stderr (``flowctl <command>: error: ...``) and exit status 2, found
before any model is loaded and before anything is written: numbers in the ranges their ``--help``
states, names non-empty, the device present, the output path and the cache writable.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

from ._checks import check_device
from .bench.command import QUICK, bench_config, report
from .bench.runner import BenchConfig, run_benchmark
from .cache.policy import POLICIES
from .errors import FlowctlError, InvalidArgumentError, UnknownNameError
from .families import family_for
from .transitions import STRATEGY_NAMES

SEED_MAX = 2**64 - 1  # torch.Generator.manual_seed takes a uint64
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
# The model options; `bench --model gmm` takes none of them.
MODEL_DEFAULTS = dict(dtype="float32", device="cpu", guidance=None, negative_prompt="", height=None, width=None,
                      no_t5=False, max_sequence_length=256, encoder=None)


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line on stderr and exit status 2 (no usage
    block: ``--help`` shows it)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def _integer(low: int, high: int, multiple: int = 1) -> Callable[[str], int]:
    """An argparse type: an integer in ``low..high``, a multiple of ``multiple``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer in {low}..{high}, got {_shown(text)}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be in {low}..{high}, got {value}")
        if value % multiple:
            raise argparse.ArgumentTypeError(f"must be a multiple of {multiple}, got {value}")
        return value

    return parse


def _real(low: float, high: float) -> Callable[[str], float]:
    """An argparse type: a finite number in ``[low, high]``."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number in [{low:g}, {high:g}], got {_shown(text)}") from None
        if not math.isfinite(value) or not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be a finite number in [{low:g}, {high:g}], got {_shown(text)}")
        return value

    return parse


def _name(text: str) -> str:
    """An argparse type: a string that is not empty or blank."""
    if not text.strip():
        raise argparse.ArgumentTypeError(f"must not be empty or blank, got {text!r}")
    return text


def _device(text: str) -> str:
    """An argparse type: a device this machine has ('cpu', 'cuda', 'cuda:1', 'mps', ...)."""
    try:
        check_device("device", text)
    except InvalidArgumentError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("device: ")) from None
    return text


def _methods(text: str) -> str:
    """An argparse type: comma-separated distinct strategy names."""
    names = [m.strip() for m in text.split(",")]
    if "" in names:
        raise argparse.ArgumentTypeError(f"an empty name in {text!r}; expected names of {', '.join(STRATEGY_NAMES)}, separated by commas")
    unknown = [m for m in names if m not in STRATEGY_NAMES]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown {', '.join(map(repr, unknown))}; known: {', '.join(STRATEGY_NAMES)}")
    if len(set(names)) < len(names):
        raise argparse.ArgumentTypeError(f"a strategy named twice in {text!r}")
    return ",".join(names)


def _shown(text: str) -> str:
    return repr(text if len(text) <= 40 else text[:40] + "...")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="flowctl", description="Control theory for flow-matching models.")
    sub = parser.add_subparsers(dest="command", required=True)
    model = argparse.ArgumentParser(add_help=False)
    model.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), help="weights and states (default %(default)s; float16 not on the CPU)")
    model.add_argument("--device", type=_device, help="'cpu', 'cuda', 'cuda:1', 'mps', ...: present on this machine (default %(default)s)")
    model.add_argument("--guidance", type=_real(1, 100), help="guidance scale in [1, 100]: classifier-free guidance, on when > 1 (default: the embedded model's 4, an SD3 checkpoint's 7, FLUX.1-schnell off); FLUX.1-dev's embedded guidance (default 3.5)")
    model.add_argument("--negative-prompt", help="negative prompt under guidance (default empty; refused with --guidance 1)")
    model.add_argument("--height", type=_integer(16, 4096, 16), help="image height in pixels, 16..4096, a multiple of 16; checkpoints only (default: the model's)")
    model.add_argument("--width", type=_integer(16, 4096, 16), help="image width in pixels, 16..4096, a multiple of 16; checkpoints only (default: the model's)")
    model.add_argument("--no-t5", action="store_true", help="load a checkpoint without its T5 encoder (zeros for its tokens)")
    model.add_argument("--max-sequence-length", type=_integer(1, 512), help="T5 tokens of a checkpoint, 1..512 (default %(default)s)")
    model.add_argument("--encoder", choices=("sd3", "minilm"), help="similarity encoder: 'sd3' (an SD3 checkpoint's pooled CLIP, its default; a FLUX checkpoint uses its own pooled CLIP unless 'minilm') or 'minilm', all-MiniLM-L6-v2 (the embedded model's)")
    model.add_argument("--policy", default="seed", help=f"similarity -> resume step: {' or '.join(POLICIES)} (default %(default)s)")
    model.add_argument("--shooting-iterations", type=_integer(1, 1000), default=None, help="Levenberg-Marquardt iterations of the shooting and MPC strategies at most, 1..1000")
    model.add_argument("--budget", type=_real(0, 1000), default=None, help="NFE-equivalents in [0, 1000] every planner may spend beyond its continuation (default 1)")
    model.set_defaults(**MODEL_DEFAULTS)

    image = argparse.ArgumentParser(add_help=False)
    image.add_argument("prompt", help="the prompt (not blank)")
    image.add_argument("--model", type=_name, default="embedded", help="'embedded' (the shipped shapes model, default) or a local checkpoint directory")
    image.add_argument("--steps", type=_integer(1, 1000), default=28, help="denoising steps, 1..1000 (default %(default)s)")
    image.add_argument("--seed", type=_integer(0, SEED_MAX), default=0, help="seed of the noise, 0..2^64-1 (default %(default)s)")
    image.add_argument("--cache", type=_name, default="flowctl-cache", help="cache directory or postgresql:// URL (default %(default)s)")
    image.add_argument("--namespace", type=_name, default="default", help="the cache tenant, not blank (default %(default)s)")
    image.add_argument("--out", default="flowctl.png", help=f"image file to write, in an existing folder, ending in {', '.join(IMAGE_SUFFIXES)} (default %(default)s)")
    sub.add_parser("generate", parents=[image, model], help="a prompt from scratch to an image; the run is stored in the cache (created if missing)")
    cont = sub.add_parser("continue", parents=[image, model], help="a prompt continued from the most similar cached run (from scratch on a miss)")
    cont.add_argument("--strategy", default="direct", choices=STRATEGY_NAMES, help="transition strategy (default %(default)s)")

    bench = sub.add_parser(
        "bench", parents=[model],
        help="the cross-prompt caching benchmark (default: on the embedded model)",
        description="Runs the transition strategies on the shipped prompt pairs and writes results.json, "
        "report.md (the tables), speedup_psnr.svg and grid.png. Unset options take the model's defaults.",
    )
    bench.add_argument("--model", type=_name, default="embedded", help="'embedded' (default), 'gmm' (the exact prompted Gaussian mixture, which takes no model options) or a local checkpoint directory")
    bench.add_argument("--out", default="results/bench", help="output folder, created if missing (default %(default)s)")
    bench.add_argument("--steps", type=_integer(4, 1000), default=None, help="sampler steps, 4..1000")
    bench.add_argument("--seeds", type=_integer(1, 1024), default=None, help="noise samples per pair, 1..1024")
    bench.add_argument("--seed", type=_integer(0, SEED_MAX), default=None, help="seed of the noise, 0..2^64-1")
    bench.add_argument("--pairs-per-bucket", type=_integer(1, 1000), default=None, help="pairs per similarity bucket, 1..1000 (not with --all-pairs)")
    bench.add_argument("--all-pairs", action="store_true", help="every shipped pair")
    bench.add_argument("--methods", type=_methods, default=None, help=f"comma-separated, distinct, of {', '.join(STRATEGY_NAMES)}")
    bench.add_argument("--sweep-pairs", type=_integer(0, 1000), default=None, help="most similar pairs swept over the resume step, 0..1000")
    bench.add_argument("--repeats", type=_integer(1, 1000), default=None, help="timing repeats of the cheap methods, 1..1000")
    bench.add_argument("--quick", action="store_true", help="a small smoke run, not for figures")
    bench.add_argument("--cache", type=_name, default=None, help="also keep the cached runs in this store (a directory or a postgresql:// URL; namespace flowctl-bench), whose look-ups are then timed")
    _add_cache(sub)
    return parser


def _add_cache(sub: argparse._SubParsersAction) -> None:
    cache = sub.add_parser("cache", help="list, inspect or clear a persistent cache (a directory or PostgreSQL)")
    commands = cache.add_subparsers(dest="cache_command", required=True)
    where = argparse.ArgumentParser(add_help=False)
    where.add_argument("--cache", type=_name, required=True, help="the cache directory, or a postgresql:// URL")
    where.add_argument("--namespace", type=_name, default=None, help="only this tenant's entries (default: all)")
    commands.add_parser("list", parents=[where], help="one JSON line per entry (no tensor is read)")
    inspect = commands.add_parser("inspect", parents=[where], help="one entry in full: sigma, timestep and dt at each cached step")
    inspect.add_argument("id", type=_name, help="the entry's id")
    clear = commands.add_parser("clear", parents=[where], help="delete the entries (of --namespace, or all with --all)")
    clear.add_argument("--all", action="store_true", help="every namespace (required without --namespace)")


def _check_options(args: argparse.Namespace) -> None:
    """Raise InvalidArgumentError for options that are each valid but do not go together, or
    that the command would ignore (file system and cache checks: :func:`_check_paths`)."""
    if args.command in ("generate", "continue") and not args.prompt.strip():
        raise InvalidArgumentError("prompt", "must not be empty or blank")
    if args.policy not in POLICIES:
        raise UnknownNameError("--policy", args.policy, list(POLICIES))
    if args.command == "bench" and args.model == "gmm":
        given = [name for name, default in MODEL_DEFAULTS.items() if getattr(args, name) != default]
        if given:
            option = "--" + given[0].replace("_", "-")
            raise InvalidArgumentError(option, "the gmm model takes no model options (dtype, device, guidance, prompts, size, encoder)")
    if args.dtype == "float16" and check_device("--device", args.device).type == "cpu":
        raise InvalidArgumentError("--dtype", "float16 is not supported on the CPU; use bfloat16 or float32")
    if args.negative_prompt and args.guidance == 1:
        raise InvalidArgumentError("--negative-prompt", "has no effect with --guidance 1 (guidance off)")
    if args.command == "bench" and args.all_pairs and args.pairs_per_bucket is not None:
        raise InvalidArgumentError("--pairs-per-bucket", "not with --all-pairs (every shipped pair)")
    for option in ("budget", "shooting_iterations"):
        if args.command == "generate" and getattr(args, option) is not None:
            raise InvalidArgumentError("--" + option.replace("_", "-"), "generate runs no transition; continue and bench take it")


def _check_paths(args: argparse.Namespace) -> None:
    """Raise a FlowctlError unless the output can be written and the cache opened for writing
    (an existing cache is opened and closed: a read-only, corrupt or unreachable one fails here;
    a missing one must be creatable, and ``continue`` needs an existing one). Writes nothing."""
    if args.command == "bench":
        _check_folder("--out", Path(args.out))
    else:
        _check_image("--out", args.out)
    if args.cache is None:
        return
    from .cache import open_store
    from .cache.persistent import store_location

    _, remote = store_location(args.cache, "--cache")
    if args.command != "continue" and not remote and not os.path.lexists(args.cache):
        _check_folder("--cache", Path(args.cache))
        return
    open_store(args.cache, create=False, argument="--cache").close()


def _check_image(argument: str, text: str) -> None:
    """Raise unless ``text`` names an image file (by suffix) that can be written in an existing
    folder."""
    path = Path(text)
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        raise InvalidArgumentError(argument, f"{text!r}: expected an image file name ending in {', '.join(IMAGE_SUFFIXES)}")
    if path.is_dir():
        raise InvalidArgumentError(argument, f"{text!r} is a folder; expected an image file name")
    folder = path.parent
    if not folder.is_dir():
        raise InvalidArgumentError(argument, f"{text!r}: " + (f"{folder} is not a folder" if folder.exists() else f"no folder {folder}"))
    if not os.access(folder, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise InvalidArgumentError(argument, f"{text!r}: permission denied (read-only)")


def _check_folder(argument: str, path: Path) -> None:
    """Raise unless ``path`` is a folder this process can write in, or one it can create (its
    nearest existing ancestor is such a folder)."""
    existing = path
    while not os.path.lexists(existing):
        existing = existing.parent
    if not existing.is_dir():
        raise InvalidArgumentError(argument, f"{str(path)!r}: {existing} is " + ("a file, not a folder" if existing == path else "not a folder"))
    if not os.access(existing, os.W_OK | os.X_OK):
        raise InvalidArgumentError(argument, f"{str(path)!r}: permission denied: {existing} is read-only")


def _cache(args: argparse.Namespace) -> int:
    from .cache import open_store
    from .cache.inspect import describe, summary

    if args.cache_command == "clear" and args.namespace is None and not args.all:
        raise InvalidArgumentError("--namespace", "name the namespace to clear, or pass --all")
    store = open_store(args.cache, create=False, writable=args.cache_command == "clear", argument="--cache")
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
    """Run the command line; returns the exit status: 0, 2 on bad input (argparse's own errors
    raise SystemExit(2)), 1 when the machine fails (an OSError: a full disk, ...)."""
    args = _parser().parse_args(argv)
    name = f"flowctl {args.command}" + (f" {args.cache_command}" if args.command == "cache" else "")
    try:
        if args.command == "cache":
            return _cache(args)
        _check_options(args)
        run = _bench_gmm if args.command == "bench" and args.model == "gmm" else family_for(args.model).run
        _check_paths(args)
        return run(args)
    except FlowctlError as exc:
        print(f"{name}: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except OSError as exc:  # the input was good, the machine failed (a full disk, ...)
        print(f"{name}: error: {_one_line(exc)}", file=sys.stderr)
        return 1


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split())


def _bench_gmm(args: argparse.Namespace) -> int:
    config = bench_config(args, BenchConfig(), QUICK)
    from .cache import open_store

    persistent = None if args.cache is None else open_store(args.cache, argument="--cache")
    result = run_benchmark(config, progress=lambda line: print(line, file=sys.stderr, flush=True), persistent=persistent)
    report(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
