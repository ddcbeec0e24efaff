"""``flowctl generate | continue | bench`` on any model family's model (the parser is in
:mod:`flowctl.cli`); a family supplies only its ``load_model(args, say) -> LoadedModel``.

- ``generate``: a prompt from scratch to a PNG; the run's resumable states go into ``--cache``
  (created if missing).
- ``continue``: a prompt from the cache, which must exist: the most similar cached prompt under
  the same model and settings is continued with ``--strategy`` from the step the policy chooses;
  on a miss the prompt is generated from scratch and stored.
- ``bench``: the caching benchmark's protocol on the model.

Each prints a JSON summary (``bench``: the report's tables, and it writes the benchmark's files)
on stdout and progress on stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TextIO

import torch
from tqdm.auto import tqdm

from flowctl.bench.command import bench_config, report
from flowctl.bench.runner import BenchConfig, BenchModel, run_benchmark
from flowctl.cache import CachedGenerator, CacheStore, get_policy, open_store
from flowctl.dynamics import derivative_mode
from flowctl.errors import InvalidArgumentError
from flowctl.sampling import SigmaGrid
from flowctl.text import TextEncoder
from flowctl.transitions import Strategy

from flowctl.adapters.sd3.loop import to_pil
from flowctl.adapters.common import make_strategy

# The benchmark's defaults on a checkpoint of any family (BenchConfig's fields), before the
# command line's options: the strategies within one evaluation of the direct switch.
CHEAP = ("direct", "linear", "sigmoid", "closed-form", "secant", "offset")
CHECKPOINT_BENCH = BenchConfig(seeds=1, pairs_per_bucket=1, sweep_pairs=0, repeats=1, shooting_iterations=2, strategies=CHEAP)
CHECKPOINT_QUICK = dict(steps=8)


@dataclass(frozen=True)
class LoadedModel:
    """A model as the commands use it.

    Attributes:
        dynamics: the guided velocity on (1, C, h, w) states, with its prompt encoder
            (``condition``, ``velocity``, ``fingerprint``, ``device``).
        guidance: its guidance scale (part of the cache key).
        encoder: the cache's similarity key.
        noise: seed -> (starting noise (1, C, h, w), the generator's state before the draw).
        grid: (steps, noise) -> the sampler's sigma grid.
        to_image: the final state -> images in [-1, 1].
        bench_model: (seeds, seed) -> the benchmark's view of the model.
        bench_defaults, quick: the benchmark's settings on this model, and those of --quick.
        patch_size: side of the state's patches the transformer tokenises (the MPC Jacobian's
            blocks).
    """

    dynamics: Any
    guidance: float
    encoder: TextEncoder
    noise: Callable[[int], tuple[torch.Tensor, torch.Tensor]]
    grid: Callable[[int, torch.Tensor], SigmaGrid]
    to_image: Callable[[torch.Tensor], torch.Tensor]
    bench_model: Callable[[int, int], BenchModel]
    bench_defaults: BenchConfig
    quick: dict
    patch_size: int


ModelLoader = Callable[[argparse.Namespace, Callable[[str], None]], LoadedModel]
"""A family's ``load_model(args, say)``: the model ``args.model`` names, with the command line's
settings; ``say`` prints a progress line."""


class _Progress:
    """A dynamics that advances a progress bar at every model evaluation."""

    def __init__(self, dynamics: Any, bar: Any):
        self.dynamics, self.bar = dynamics, bar

    @property
    def fingerprint(self) -> str:
        return self.dynamics.fingerprint

    def condition(self, prompt: str) -> Any:
        return self.dynamics.condition(prompt)

    def velocity(self, x, t, cond):
        self.bar.update(1)
        return self.dynamics.velocity(x, t, cond)

    def derivatives(self):
        return derivative_mode(self.dynamics)


def run(args: argparse.Namespace, load_model: ModelLoader, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Run ``flowctl <args.command>`` on the model ``load_model`` loads; raises FlowctlError on
    bad input (checked before the model is loaded where it can be)."""
    out, err = out or sys.stdout, err or sys.stderr
    say = lambda line: print(line, file=err, flush=True)  # noqa: E731
    policy = get_policy(args.policy)
    persistent = open_store(args.cache, argument="--cache") if args.command == "bench" and args.cache is not None else None
    if args.command != "bench":
        if not args.prompt.strip():
            raise InvalidArgumentError("prompt", "must not be empty")
        persistent = open_store(args.cache, create=False, argument="--cache") if args.command == "continue" else None  # generate makes one
    loaded = load_model(args, say)
    dynamics = loaded.dynamics
    if args.command == "bench":
        config = bench_config(args, loaded.bench_defaults, loaded.quick)
        result = run_benchmark(config, model=loaded.bench_model(config.seeds, config.seed), encoder=loaded.encoder, progress=say, persistent=persistent)
        report(result, args.out)
        return 0
    strategy = None
    if args.command == "continue":
        given = {"shooting_iterations": args.shooting_iterations, "budget": args.budget}
        strategy = make_strategy(args.strategy, patch_size=loaded.patch_size, **{k: v for k, v in given.items() if v is not None})

    noise, state = loaded.noise(args.seed)
    grid = loaded.grid(args.steps, noise)
    store = CacheStore(dynamics.device, persistent=persistent or open_store(args.cache, argument="--cache"))
    with tqdm(desc=args.command, unit="eval", file=err, total=None) as bar:
        model = _Progress(dynamics, bar)
        cached = CachedGenerator(model, loaded.encoder, store, grid, policy=policy, namespace=args.namespace, guidance=loaded.guidance)
        start = time.perf_counter()
        if strategy is None:
            summary = _generate(cached, args.prompt, noise, state)
        else:
            summary = _continue(cached, args.prompt, noise, state, strategy)
        summary["seconds"] = time.perf_counter() - start
    final = summary.pop("final")
    to_pil(loaded.to_image(final))[0].save(args.out)
    summary |= {"prompt": args.prompt, "model": dynamics.fingerprint, "steps": grid.steps,
                "guidance": loaded.guidance, "image": str(args.out)}
    print(json.dumps(summary, indent=2), file=out)
    return 0


def _continue(cached: CachedGenerator, prompt: str, noise, state, strategy: Strategy) -> dict[str, Any]:
    """``prompt`` continued from the most similar cached run (from scratch, and stored, on a miss)."""
    result = cached.generate(prompt, noise, generator_state=state, strategy=strategy)
    decision, match = result.lookup.decision, result.lookup.match
    return {
        "hit": result.hit,
        "similarity": decision.similarity,
        "cached_prompt": match.prompt if match else None,
        "resume_step": decision.resume_step if result.hit else None,
        "horizon": decision.transition_steps if result.hit else None,
        "strategy": result.transition.strategy if result.hit else None,
        "status": result.transition.status.value if result.hit else None,
        "message": result.transition.message if result.hit else None,
        "fallbacks": result.transition.fallbacks if result.hit else None,
        "entry_id": result.entry_id,
        "nfe": result.nfe,
        "timings": result.timings,
        "final": result.final,
    }


def _generate(cached: CachedGenerator, prompt: str, noise, state) -> dict[str, Any]:
    """``prompt`` from scratch, stored with the states the policy resumes from."""
    result = cached.fill(prompt, noise, generator_state=state)
    return {"entry_id": result.entry_id, "cached_steps": list(cached.policy.cached_steps(cached.grid.steps)),
            "nfe": result.nfe, "timings": result.timings, "final": result.final}
