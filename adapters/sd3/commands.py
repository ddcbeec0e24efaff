"""The SD3 family's model for ``flowctl generate | continue | bench``: the embedded shapes model
or a local SD3 checkpoint, loaded with the command line's settings (:func:`load_model`; the
commands themselves are :mod:`flowctl.adapters.commands`)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from flowctl.adapters.commands import CHEAP, CHECKPOINT_BENCH, CHECKPOINT_QUICK, LoadedModel
from flowctl.adapters.common import noise_latents
from flowctl.bench.runner import BenchConfig
from flowctl.errors import InvalidArgumentError
from flowctl.text import MiniLMEncoder, TextEncoder
from flowctl.transitions import STRATEGY_NAMES

from . import embedded
from .bench import sd3_model
from .checkpoint import check_checkpoint, load_pipeline, parse_device, torch_dtype
from .dynamics import SD3Dynamics
from .encoding import SD3PooledEncoder
from .loop import decode, latent_shape, pipeline_grid

CHECKPOINT_GUIDANCE = 7.0  # SD3's default guidance scale
# The benchmark's defaults on the embedded model (BenchConfig's fields), before the command
# line's options. They fit `make demo` into 10 minutes on 2 cores: the seed's planners run at the
# policy's step, the direct switch and the corrections also over the sweep (of every >0.95 pair
# used); --methods adds multiple-shooting and velocity-shooting.
EMBEDDED_BENCH = BenchConfig(seeds=2, pairs_per_bucket=4, shooting_iterations=1, repeats=3, sweep_pairs=4,
                             strategies=(*CHEAP, "shooting", "mpc"), sweep_strategies=("direct", "secant", "offset"))
EMBEDDED_QUICK = dict(steps=8, seeds=1, pairs_per_bucket=1, sweep=(0.5,), sweep_pairs=1, repeats=1,
                      strategies=STRATEGY_NAMES, sweep_strategies=None)


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
            EMBEDDED_BENCH, EMBEDDED_QUICK, dynamics.transformer.config.patch_size,
        )
    directory, _ = check_checkpoint(args.model)  # another family's folder is refused before the progress line
    say(f"loading {args.model} ({args.dtype} on {args.device})")
    pipeline = load_pipeline(directory, dtype=args.dtype, device=args.device, t5=not args.no_t5)
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
        CHECKPOINT_BENCH, CHECKPOINT_QUICK, dynamics.transformer.config.patch_size,
    )
