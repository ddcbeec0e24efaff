"""Caching through an unmodified ``StableDiffusion3Pipeline``: record a run's states with a
step-end callback, and resume a cached state by calling the pipeline again.

The double-shift trap: ``pipe(latents=x_k, sigmas=scheduler.sigmas[k:N])`` does NOT resume a
run, because ``set_timesteps`` shifts the sigmas it is given again; passing unshifted sigmas is
off by float32 rounding.
:func:`identity_shift` swaps in the same scheduler with ``shift=1`` and no dynamic shifting, so
the already-shifted slice :func:`resume_kwargs` passes is used as it is: the continuation then
equals the uninterrupted run bit for bit (same prompt), or flowctl's direct switch (another
prompt). Sigma runs from 1 (noise) to 0 (data); step k sits at ``sigma_k`` of the run's grid.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from typing import Any

import torch

from flowctl._checks import check_int, check_tensor
from flowctl.cache import CacheEntry, CacheKey
from flowctl.errors import InvalidArgumentError, ShapeError
from flowctl.sampling import SigmaGrid

from .dynamics import SD3Dynamics
from .loop import scheduler_grid


class TrajectoryRecorder:
    """A step-end callback that keeps a pipeline run's latents at ``steps``
    (``pipe(..., latents=noise, callback_on_step_end=recorder)``); :meth:`entry` makes the cache
    entry of the run.

    The callback sees the latents after each step, so step 0 (the noise) comes from the
    ``noise`` given to :meth:`entry`: pass the pipeline the latents you drew (e.g. with
    :func:`~flowctl.adapters.sd3.noise_latents`, which draws them as the pipeline does). The
    pipeline does not hand its velocities to callbacks: entries made here have none, so the
    secant planner spends one more model evaluation on them.

    Args:
        steps: grid steps to keep (1 <= k < N), typically ``policy.cached_steps(N)``.
    """

    tensor_inputs = ["latents"]

    def __init__(self, steps: Iterable[int]):
        self.steps = sorted({check_int("steps", k, minimum=0) for k in steps})
        if not self.steps:
            raise InvalidArgumentError("steps", "expected at least one step to keep")
        self.states: dict[int, torch.Tensor] = {}
        self.grid: SigmaGrid | None = None
        self.guidance: float | None = None
        self.transformer: Any = None

    def __call__(self, pipeline: Any, step_index: int, timestep: Any, callback_kwargs: dict[str, Any]) -> dict[str, Any]:
        if step_index == 0:
            self.states, self.transformer = {}, pipeline.transformer
            self.guidance = float(pipeline.guidance_scale)
            sigmas, latents = pipeline.scheduler.sigmas, callback_kwargs["latents"]
            grid = scheduler_grid(pipeline.scheduler, len(sigmas) - 1, latent_shape=tuple(latents.shape), patch_size=pipeline.transformer.config.patch_size)
            # a run on other sigmas (custom ones, another mu) has no grid a cache key describes
            self.grid = grid if torch.equal(grid.values, sigmas.cpu().to(grid.values.dtype)) else None
        if step_index + 1 in self.steps:
            self.states[step_index + 1] = callback_kwargs["latents"].detach().clone()
        return callback_kwargs

    def entry(self, *, prompt: str, embedding: torch.Tensor, noise: torch.Tensor, encoder: str = "", namespace: str = "default") -> CacheEntry:
        """The recorded run as a cache entry (its key from the pipeline's transformer, grid,
        guidance and the latents' shape and dtype)."""
        if self.transformer is None:
            raise InvalidArgumentError("recorder", "has not seen a run: pass it as callback_on_step_end first")
        if self.grid is None:
            raise InvalidArgumentError("recorder", "the run's sigmas are not its scheduler's own grid (custom sigmas or mu): it cannot be cached")
        noise = check_tensor("noise", noise)
        first = next(iter(self.states.values()), noise)
        if noise.shape != first.shape or noise.dtype != first.dtype:
            raise ShapeError("noise", f"expected the run's latents ({tuple(first.shape)}, {first.dtype}), got ({tuple(noise.shape)}, {noise.dtype})")
        states = dict(self.states)
        if 0 in self.steps:
            states[0] = noise
        missing = [k for k in self.steps if k not in states]
        if missing:
            raise InvalidArgumentError("steps", f"steps {missing} were not reached by the run ({self.grid.steps} steps)")
        fingerprint = SD3Dynamics(self.transformer).fingerprint
        key = CacheKey.for_grid(fingerprint, self.grid, shape=tuple(noise.shape), dtype=noise.dtype, guidance=self.guidance, encoder=encoder)
        return CacheEntry(key, prompt, embedding, states, noise, namespace=namespace)


    def row_entry(self, row: int, *, key: CacheKey, prompt: str, embedding: torch.Tensor, noise: torch.Tensor, namespace: str = "default") -> CacheEntry:
        """Row ``row`` of a batched run as a cache entry under ``key`` (its noise: ``noise``,
        that row's latents at step 0)."""
        if self.grid is None or tuple(self.grid.values.tolist()) != key.sigmas:
            raise InvalidArgumentError("key", "does not describe the recorded run's grid")
        states = {k: x[row : row + 1] for k, x in self.states.items()}
        if 0 in self.steps:
            states[0] = noise
        return CacheEntry(key, prompt, embedding, states, noise, namespace=namespace)


@contextlib.contextmanager
def identity_shift(pipeline: Any) -> Iterator[Any]:
    """Within the block, the pipeline's scheduler uses the sigmas it is given as they are (the
    same scheduler with ``shift=1`` and no dynamic shifting); restored on exit."""
    original = pipeline.scheduler
    if type(original).__name__ != "FlowMatchEulerDiscreteScheduler":
        raise InvalidArgumentError("pipeline", f"expected a FlowMatchEulerDiscreteScheduler, got {type(original).__name__}")
    pipeline.scheduler = type(original).from_config(original.config, shift=1.0, use_dynamic_shifting=False)
    try:
        yield pipeline
    finally:
        pipeline.scheduler = original


def resume_kwargs(entry: CacheEntry, step: int) -> dict[str, Any]:
    """Arguments of ``pipe(**resume_kwargs(entry, k), ...)`` that continue ``entry`` from step
    k: its latents there, the remaining already-shifted sigmas and their count. Use inside
    :func:`identity_shift` (see the module docstring)."""
    if not isinstance(entry, CacheEntry):
        raise InvalidArgumentError("entry", f"expected a CacheEntry, got {type(entry).__name__}")
    point = entry.resume_point(step)  # checks the step is cached
    sigmas = point.grid.values[step:-1]
    return {"latents": point.state.clone(), "sigmas": sigmas.cpu().tolist(), "num_inference_steps": len(sigmas)}

