"""``flowctl generate | continue | bench`` on an MMDiT: the embedded shapes model or a local
SD3 checkpoint (the parser is in :mod:`flowctl.cli`).

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
from pathlib import Path
from typing import Any, TextIO

import torch
from tqdm.auto import tqdm

from flowctl.bench.runner import BenchConfig, BenchModel, run_benchmark
from flowctl.cache import CachedGenerator, CacheStore, get_policy, open_store
from flowctl.bench.command import bench_config, report
from flowctl.adapters.common import noise_latents
from flowctl.errors import InvalidArgumentError
from flowctl.sampling import SigmaGrid
from flowctl.text import MiniLMEncoder, TextEncoder
from flowctl.transitions import STRATEGY_NAMES, Strategy

from . import embedded
from .bench import sd3_model
from .checkpoint import load_pipeline, parse_device, torch_dtype
from .condition import SD3Condition
from .dynamics import SD3Dynamics
from .encoding import SD3PooledEncoder
from .loop import decode, latent_shape, pipeline_grid, to_pil
from .strategies import make_strategy

CHECKPOINT_GUIDANCE = 7.0  # SD3's default guidance scale
# The benchmark's defaults on each model (BenchConfig's fields), before the command line's options.
# The embedded model's fit `make demo` into 10 minutes on 2 cores: the seed's planners run at the
# policy's step, the strategies within one evaluation of the direct switch also over the sweep;
# --methods adds multiple-shooting and velocity-shooting.
CHEAP = ("direct", "linear", "sigmoid", "closed-form", "secant")
EMBEDDED_BENCH = BenchConfig(seeds=2, pairs_per_bucket=4, shooting_iterations=1, repeats=3, sweep_pairs=2,
                             strategies=(*CHEAP, "shooting", "mpc"), sweep_strategies=CHEAP)
EMBEDDED_QUICK = dict(steps=8, seeds=1, pairs_per_bucket=1, sweep=(0.5,), sweep_pairs=1, repeats=1,
                      strategies=STRATEGY_NAMES, sweep_strategies=None)
CHECKPOINT_BENCH = BenchConfig(seeds=1, pairs_per_bucket=1, sweep_pairs=0, repeats=1, shooting_iterations=2, strategies=CHEAP)
CHECKPOINT_QUICK = dict(steps=8)


@dataclass(frozen=True)
class LoadedModel:
    """An MMDiT as the commands use it.

    Attributes:
        dynamics: the guided velocity, with its prompt encoder.
        guidance: its classifier-free guidance scale (part of the cache key).
        encoder: the cache's similarity key.
        noise: seed -> (starting noise (1, C, h, w), the generator's state before the draw).
        grid: (steps, noise) -> the sampler's sigma grid.
        to_image: the final state -> images in [-1, 1].
        bench_model: (seeds, seed) -> the benchmark's view of the model.
        bench_defaults, quick: the benchmark's settings on this model, and those of --quick.
    """

    dynamics: SD3Dynamics
    guidance: float
    encoder: TextEncoder
    noise: Callable[[int], tuple[torch.Tensor, torch.Tensor]]
    grid: Callable[[int, torch.Tensor], SigmaGrid]
    to_image: Callable[[torch.Tensor], torch.Tensor]
    bench_model: Callable[[int, int], BenchModel]
    bench_defaults: BenchConfig
    quick: dict


def load_model(args: argparse.Namespace, say: Callable[[str], None]) -> LoadedModel:
    """``args.model``: "embedded" or a checkpoint directory, with the command line's settings."""
    if args.model == "embedded":
        for option in ("height", "width"):
            if getattr(args, option) not in (None, embedded.SHAPE[1]):
                raise InvalidArgumentError(f"--{option}", f"the embedded model makes {embedded.SHAPE[1]} x {embedded.SHAPE[2]} images")
        if args.encoder == "sd3":
            raise InvalidArgumentError("--encoder", "the embedded model has no SD3 text encoders; its similarity encoder is MiniLM")
        device = parse_device(args.device)
        dtype = torch_dtype(args.dtype, device)
        encoder = MiniLMEncoder()
        say(f"loading the embedded model ({args.dtype} on {args.device})")
        guidance = embedded.GUIDANCE if args.guidance is None else args.guidance
        dynamics = embedded.load_embedded(
            guidance_scale=guidance, negative_prompt=args.negative_prompt, encoder=encoder, device=device, dtype=dtype,
        )
        return LoadedModel(
            dynamics, guidance, encoder, lambda seed: embedded.embedded_noise(seed, dynamics), lambda steps, _: embedded.embedded_grid(steps),
            embedded.to_image, lambda seeds, seed: embedded.embedded_bench_model(dynamics, seeds=seeds, seed=seed),
            EMBEDDED_BENCH, EMBEDDED_QUICK,
        )
    say(f"loading {args.model} ({args.dtype} on {args.device})")
    pipeline = load_pipeline(args.model, dtype=args.dtype, device=args.device, t5=not args.no_t5)
    guidance = CHECKPOINT_GUIDANCE if args.guidance is None else args.guidance
    dynamics = SD3Dynamics.from_pipeline(
        pipeline, guidance_scale=guidance,
        negative_prompt=args.negative_prompt, max_sequence_length=args.max_sequence_length, name=Path(args.model).name,
    )
    encoder: TextEncoder = MiniLMEncoder() if args.encoder == "minilm" else SD3PooledEncoder(pipeline)
    shape = latent_shape(pipeline, args.height, args.width)
    return LoadedModel(
        dynamics, guidance, encoder, lambda seed: noise_latents(shape, seed, dtype=dynamics.dtype, device=dynamics.device),
        lambda steps, noise: pipeline_grid(pipeline, steps, noise), lambda x: decode(pipeline.vae, x),
        lambda seeds, seed: sd3_model(pipeline, dynamics, seeds=seeds, seed=seed, height=args.height, width=args.width),
        CHECKPOINT_BENCH, CHECKPOINT_QUICK,
    )


class _Progress:
    """A :class:`SD3Dynamics` that advances a progress bar at every model evaluation."""

    def __init__(self, dynamics: SD3Dynamics, bar: Any):
        self.dynamics, self.bar = dynamics, bar

    @property
    def fingerprint(self) -> str:
        return self.dynamics.fingerprint

    def condition(self, prompt: str) -> SD3Condition:
        return self.dynamics.condition(prompt)

    def velocity(self, x, t, cond):
        self.bar.update(1)
        return self.dynamics.velocity(x, t, cond)


def run(args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Run ``flowctl <args.command>`` on ``args.model``; raises FlowctlError on bad input
    (checked before the model is loaded where it can be)."""
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
        strategy = make_strategy(args.strategy, patch_size=dynamics.transformer.config.patch_size, **{k: v for k, v in given.items() if v is not None})

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
