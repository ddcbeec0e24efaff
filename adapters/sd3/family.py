"""The SD3 family as the command line finds it (entry point ``flowctl.model_families: sd3``):
the embedded model and SD3 / SD3.5 checkpoints. Importing this module loads no model code."""

from __future__ import annotations

import argparse

from flowctl.families import ModelFamily

from .checkpoint import PIPELINE_CLASS


def _run(args: argparse.Namespace) -> int:
    from flowctl.adapters.commands import run

    from .commands import load_model

    return run(args, load_model)


FAMILY = ModelFamily("sd3", pipelines=(PIPELINE_CLASS,), models=("embedded",), run=_run, extra="sd3")
