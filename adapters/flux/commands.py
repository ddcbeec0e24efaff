"""The FLUX family's model for ``flowctl generate | continue | bench``: a local FLUX.1
checkpoint loaded with the command line's settings (:func:`load_model`; the commands themselves
are :mod:`flowctl.adapters.commands`).

``--guidance`` is the guidance the model has (docs/flux.md):

- a model with a guidance embedding (FLUX.1-dev, ``transformer.config.guidance_embeds``): the
  embedded guidance, the pipeline's ``guidance_scale`` (default 3.5); one transformer call per
  step. True CFG is not offered here (``--negative-prompt`` is refused; ``FluxDynamics(...,
  true_cfg_scale=...)`` in Python has it);
- a model without one (FLUX.1-schnell): true classifier-free guidance with ``--negative-prompt``
  (default ""), the pipeline's ``true_cfg_scale``, on when > 1 (default 1: off, the pipeline's
  default); two transformer calls per step.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

from flowctl.adapters.commands import CHECKPOINT_BENCH, CHECKPOINT_QUICK, LoadedModel
from flowctl.adapters.common import noise_latents
from flowctl.adapters.sd3.loop import decode
from flowctl.errors import InvalidArgumentError
from flowctl.text import MiniLMEncoder, TextEncoder

from .bench import PATCH, flux_model
from .checkpoint import check_checkpoint, load_pipeline
from .dynamics import FluxDynamics
from .encoding import FluxPooledEncoder
from .loop import latent_shape, pipeline_grid

EMBEDDED_GUIDANCE = 3.5  # FluxPipeline's default guidance_scale


def load_model(args: argparse.Namespace, say: Callable[[str], None]) -> LoadedModel:
    """``args.model``: a FLUX.1 checkpoint directory, with the command line's settings (the
    options that do not apply to FLUX are refused before the weights are read)."""
    if args.no_t5:
        raise InvalidArgumentError("--no-t5", "FLUX's transformer reads T5's token embeddings: it does not run without its T5 encoder")
    if args.encoder not in (None, "minilm"):
        raise InvalidArgumentError("--encoder", f"a FLUX model's similarity encoder is its own pooled CLIP (the default) or minilm, not {args.encoder!r}")
    directory, _ = check_checkpoint(args.model)
    embedded = _guidance_embedded(directory)
    if embedded and args.negative_prompt:
        raise InvalidArgumentError(
            "--negative-prompt", "this FLUX model takes embedded guidance (--guidance), not true CFG with a negative prompt; "
            "use FluxDynamics(true_cfg_scale=...) from Python for true CFG",
        )
    say(f"loading {args.model} ({args.dtype} on {args.device})")
    pipeline = load_pipeline(directory, dtype=args.dtype, device=args.device)
    if embedded:
        settings = dict(guidance_scale=EMBEDDED_GUIDANCE if args.guidance is None else args.guidance)
    else:
        settings = dict(true_cfg_scale=1.0 if args.guidance is None else args.guidance, negative_prompt=args.negative_prompt)
    dynamics = FluxDynamics.from_pipeline(pipeline, max_sequence_length=args.max_sequence_length, name=Path(args.model).name, **settings)
    encoder: TextEncoder = MiniLMEncoder() if args.encoder == "minilm" else FluxPooledEncoder(pipeline)
    shape = latent_shape(pipeline, args.height, args.width)
    return LoadedModel(
        dynamics, dynamics.guidance, encoder, lambda seed: noise_latents(shape, seed, dtype=dynamics.dtype, device=dynamics.device),
        lambda steps, noise: pipeline_grid(pipeline, steps, noise), lambda x: decode(pipeline.vae, x),
        lambda seeds, seed: flux_model(pipeline, dynamics, seeds=seeds, seed=seed, height=args.height, width=args.width),
        CHECKPOINT_BENCH, CHECKPOINT_QUICK, PATCH,
    )


def _guidance_embedded(directory: Path) -> bool:
    """Whether the checkpoint's transformer has a guidance embedding (FLUX.1-dev), read from its
    config before any weight is (False when unreadable: loading then says what is wrong)."""
    try:
        config = json.loads((directory / "transformer" / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and bool(config.get("guidance_embeds"))
