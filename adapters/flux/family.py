"""The FLUX family as the command line finds it (entry point ``flowctl.model_families: flux``):
FLUX.1 checkpoints (a ``FluxPipeline`` folder). Importing this module loads no model code."""

from __future__ import annotations

import argparse

from flowctl.families import ModelFamily

from .checkpoint import PIPELINE_CLASS


def _run(args: argparse.Namespace) -> int:
    from flowctl.adapters.commands import run

    from .commands import load_model

    return run(args, load_model)


FAMILY = ModelFamily("flux", pipelines=(PIPELINE_CLASS,), models=(), run=_run, extra="sd3")
