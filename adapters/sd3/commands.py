"""The ``flowctl sd3`` commands (the parser is in :mod:`flowctl.cli`).

- ``generate``: a prompt from scratch; the run's resumable states go into the ``--cache`` store.
- ``continue``: a prompt from the cache: the most similar cached prompt under the same model and
  settings is continued with ``--strategy`` from the step the policy chooses; on a miss the
  prompt is generated from scratch and stored.
- ``bench``: the caching benchmark's protocol on the checkpoint (:func:`flowctl.adapters.sd3.bench.sd3_model`).

Each prints a JSON summary (``bench``: the report's tables, and it writes the benchmark's files) on stdout and progress on stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from tqdm.auto import tqdm

from flowctl.cache import CacheEntry, CachedGenerator, CacheStore, DiskStore, get_policy
from flowctl.errors import InvalidArgumentError
from flowctl.text import MiniLMEncoder, TextEncoder
from flowctl.bench.report import markdown, write_outputs
from flowctl.bench.runner import BenchConfig, run_benchmark
from flowctl.transitions import Strategy

from .bench import sd3_model
from .checkpoint import load_pipeline
from .dynamics import SD3Condition, SD3Dynamics
from .encoding import SD3PooledEncoder
from .loop import decode, denoise, latent_shape, noise_latents, pipeline_grid, to_pil
from .strategies import make_strategy


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


def run(args: argparse.Namespace, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    """Run ``flowctl sd3 <args.sd3_command>``; raises FlowctlError on bad input (checked before
    the checkpoint is loaded where it can be)."""
    say = lambda line: print(line, file=err, flush=True)  # noqa: E731
    policy = get_policy(args.policy)
    if args.sd3_command == "bench":
        config = BenchConfig(
            steps=args.steps, seeds=args.seeds, seed=args.seed, pairs_per_bucket=args.pairs_per_bucket, policy=args.policy,
            strategies=tuple(m.strip() for m in args.methods.split(",") if m.strip()), shooting_iterations=args.shooting_iterations,
            sweep_pairs=args.sweep_pairs, repeats=args.repeats,
        )
    elif not args.prompt.strip():
        raise InvalidArgumentError("--prompt", "must not be empty")
    strategy = None

    say(f"loading {args.model} ({args.dtype} on {args.device})")
    pipeline = load_pipeline(args.model, dtype=args.dtype, device=args.device, t5=not args.no_t5)
    dynamics = SD3Dynamics.from_pipeline(
        pipeline, guidance_scale=args.guidance, negative_prompt=args.negative_prompt,
        max_sequence_length=args.max_sequence_length, name=Path(args.model).name,
    )
    encoder: TextEncoder = SD3PooledEncoder(pipeline) if args.encoder == "sd3" else MiniLMEncoder()
    if args.sd3_command == "bench":
        model = sd3_model(pipeline, dynamics, seeds=config.seeds, seed=config.seed, height=args.height, width=args.width)
        result = run_benchmark(config, model=model, encoder=encoder, progress=say)
        for path in write_outputs(result, args.out).values():
            say(f"wrote {path}")
        print(markdown(result), file=out)
        return 0
    if args.sd3_command == "continue":
        patch = pipeline.transformer.config.patch_size
        strategy = make_strategy(args.strategy, shooting_iterations=args.shooting_iterations, patch_size=patch)

    noise, state = noise_latents(latent_shape(pipeline, args.height, args.width), args.seed, dtype=dynamics.dtype, device=dynamics.device)
    grid = pipeline_grid(pipeline, args.steps, noise)
    store = CacheStore(dynamics.device, disk=DiskStore(args.cache))
    with tqdm(desc=args.sd3_command, unit="eval", file=err, total=None) as bar:
        model = _Progress(dynamics, bar)
        cached = CachedGenerator(model, encoder, store, grid, policy=policy, namespace=args.namespace, guidance=args.guidance)
        start = time.perf_counter()
        if strategy is None:
            summary = _generate(cached, model, args.prompt, noise, state)
        else:
            summary = _continue(cached, args.prompt, noise, state, strategy)
        summary["seconds"] = time.perf_counter() - start
    final = summary.pop("final")
    to_pil(decode(pipeline.vae, final))[0].save(args.out)
    summary |= {"prompt": args.prompt, "model": dynamics.fingerprint, "steps": grid.steps, "guidance": args.guidance, "image": str(args.out)}
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
        "entry_id": result.entry_id,
        "nfe": result.nfe,
        "timings": result.timings,
        "final": result.final,
    }


def _generate(cached: CachedGenerator, model: _Progress, prompt: str, noise, state) -> dict[str, Any]:
    """``prompt`` from scratch, stored with the states the policy resumes from."""
    steps = cached.policy.cached_steps(cached.grid.steps)
    start = time.perf_counter()
    run_ = denoise(model, noise, model.condition(prompt), cached.grid, keep=steps, generator_state=state)
    generated = time.perf_counter()
    embedding = cached.encoder.encode([prompt])[0]
    entry = CacheEntry.from_trajectory(run_, key=cached.key(noise), prompt=prompt, embedding=embedding, steps=steps, namespace=cached.namespace)
    entry_id = cached.store.put(entry)
    return {
        "entry_id": entry_id, "cached_steps": list(steps), "nfe": {"forward": cached.grid.steps},
        "timings": {"generation": generated - start, "store": time.perf_counter() - generated}, "final": run_.final,
    }
