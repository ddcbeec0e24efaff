"""Adapters that expose third-party flow models as flowctl dynamics.

Installed as ``flowctl.adapters`` (see ``[tool.setuptools.package-dir]`` in pyproject.toml);
import from there, e.g. ``from flowctl.adapters import sd3``. Adapters may import heavy
optional dependencies (diffusers, transformers); the core ``flowctl`` package never does.
"""
