"""Model families: the adapters the command line runs, found by entry point.

An adapter package registers a :class:`ModelFamily` under the entry-point group
``flowctl.model_families`` (flowctl's SD3 adapter does so in its ``pyproject.toml``). The command
line picks the family that names the ``--model`` given ("embedded") or whose pipelines include
the class a checkpoint directory's ``model_index.json`` names; flowctl's core never imports an
adapter by name.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path

from .errors import InvalidArgumentError, MissingDependencyError

GROUP = "flowctl.model_families"


@dataclass(frozen=True)
class ModelFamily:
    """An adapter as the command line sees it.

    Attributes:
        name: the family ("sd3").
        pipelines: the diffusers pipeline classes whose checkpoints it runs.
        models: named models it provides ("embedded").
        run: runs ``flowctl generate|continue|bench`` on ``args``; returns the exit status and
            raises FlowctlError on bad input.
        extra: the pip extra that installs what it needs.
    """

    name: str
    pipelines: tuple[str, ...]
    models: tuple[str, ...]
    run: Callable[[argparse.Namespace], int]
    extra: str


def family_for(model: str) -> ModelFamily:
    """The installed family that runs ``model`` (a named model or a checkpoint directory)."""
    loaded, broken = _families()
    for family in loaded:
        if model in family.models:
            return family
    path = Path(model).expanduser()
    if not path.is_dir():
        named = sorted(m for f in loaded for m in f.models)
        raise InvalidArgumentError("--model", f"{model}: " + ("not a directory" if path.exists() else "no such checkpoint directory") + f" (named models: {', '.join(named) or 'none'})")
    try:
        pipeline = json.loads((path / "model_index.json").read_text(encoding="utf-8")).get("_class_name")
    except FileNotFoundError:
        raise InvalidArgumentError("--model", f"{path}: no model_index.json; not a diffusers pipeline directory") from None
    except (OSError, ValueError, AttributeError) as exc:
        raise InvalidArgumentError("--model", f"{path}/model_index.json: unreadable ({exc})") from None
    for family in loaded:
        if pipeline in family.pipelines:
            return family
    if broken:
        raise MissingDependencyError(f"{path}: no loadable model family runs {pipeline!r}; " + "; ".join(broken))
    runs = ", ".join(f"{f.name} ({', '.join(f.pipelines)})" for f in loaded) or "none"
    raise InvalidArgumentError("--model", f"{path}: model_index.json names {pipeline!r}, which no installed model family runs; installed: {runs}")


def _families() -> tuple[list[ModelFamily], list[str]]:
    """The registered families that load, and why the others did not."""
    loaded, broken = [], []
    for point in entry_points(group=GROUP):
        try:
            family = point.load()
        except ImportError as exc:
            broken.append(f"family {point.name!r} needs its extra: pip install flowctl[{point.name}] ({exc})")
            continue
        if isinstance(family, ModelFamily):
            loaded.append(family)
    return loaded, broken
