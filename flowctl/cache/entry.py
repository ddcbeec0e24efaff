"""Cache keys and entries: one generation's intermediate states, ready to resume.

A generation for one prompt keeps its latents at a few grid steps; a later, similar prompt
resumes from one of them (sigma = 1 is noise, sigma = 0 is data; step k sits at sigma_k of the
entry's :class:`~flowctl.sampling.SigmaGrid`). Entries resume only under an equal
:class:`CacheKey`. Sizes are in bytes.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import re
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .._checks import check_device, check_generator_state, check_int, check_items, check_real, check_tensor
from ..errors import FlowctlError, InvalidArgumentError, ShapeError, UnknownNameError
from ..sampling import ResumePoint, SigmaGrid, Trajectory, get_tableau
from ..sampling.grid import TIME_SHIFTS, sigma_grid_problem

ENTRY_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")
"""What an entry id may be: it names the entry's file, so no separators or dots."""


class CacheMissError(FlowctlError, KeyError):
    """No entry with this id in the namespace asked (or its stored copy was unreadable)."""


@dataclass(frozen=True)
class CacheKey:
    """What a trajectory belongs to; an entry is only ever resumed under an equal key.

    Attributes:
        model: identity (fingerprint) of the flow model.
        steps: number of grid steps N.
        shift: the grid's static shift.
        mu: the grid's dynamic shift, or None.
        guidance: classifier-free guidance scale (a plain number; 0 or 1 for none).
        method: the integrator ("euler", "heun" or "rk4").
        shape: latent shape, batch axis included.
        dtype: latent dtype name as torch spells it ("float32", "bfloat16", ...).
        time_shift: the form of the grid's dynamic shift ("exponential" or "linear").
        num_train_timesteps: the scheduler's training timesteps.
        encoder: name of the text encoder of the entries' similarity embeddings (embeddings of
            different encoders are not comparable, whatever their sizes).
        sigmas: the grid's sigmas, 1 down to 0 (``steps + 1`` of them): what the settings above
            produce for the pipeline's scheduler (SD3's ``set_timesteps(steps)``, or FLUX's
            custom ``linspace`` sigmas); None takes SD3's, ``SigmaGrid.create``'s.
    """

    model: str
    steps: int
    shift: float
    mu: float | None
    guidance: float
    method: str
    shape: tuple[int, ...]
    dtype: str
    time_shift: str = "exponential"
    num_train_timesteps: int = 1000
    encoder: str = ""
    sigmas: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.model, str) or not self.model.strip():
            raise InvalidArgumentError("model", f"expected a non-empty string, got {self.model!r}")
        get_tableau(self.method)
        shape = check_items("shape", self.shape, "a tuple of sizes", error=ShapeError)
        dtype = str(self.dtype).removeprefix("torch.") if isinstance(self.dtype, torch.dtype) else self.dtype
        torch_dtype = getattr(torch, dtype, None) if isinstance(dtype, str) else None
        if not isinstance(torch_dtype, torch.dtype) or not torch_dtype.is_floating_point:
            raise InvalidArgumentError("dtype", f"expected a floating-point torch dtype name, got {self.dtype!r}")
        dtype = str(torch_dtype).removeprefix("torch.")  # the canonical name: "float" is "float32"
        set_ = object.__setattr__
        set_(self, "steps", check_int("steps", self.steps, minimum=1))
        set_(self, "shift", check_real("shift", self.shift, positive=True))
        set_(self, "mu", None if self.mu is None else check_real("mu", self.mu))
        set_(self, "guidance", check_real("guidance", self.guidance))
        set_(self, "shape", tuple(check_int("shape", n, minimum=1) for n in shape))
        set_(self, "dtype", dtype)
        if self.time_shift not in TIME_SHIFTS:
            raise UnknownNameError("time_shift", self.time_shift, list(TIME_SHIFTS))
        set_(self, "num_train_timesteps", check_int("num_train_timesteps", self.num_train_timesteps, minimum=1))
        if not isinstance(self.encoder, str):
            raise InvalidArgumentError("encoder", f"expected the encoder's name, got {self.encoder!r}")
        if self.sigmas is None:
            sigmas = SigmaGrid.create(self.steps, self.shift, mu=self.mu, time_shift=self.time_shift, num_train_timesteps=self.num_train_timesteps).values
            set_(self, "sigmas", tuple(sigmas.tolist()))
        else:
            values = tuple(check_real("sigmas", v) for v in check_items("sigmas", self.sigmas, "the grid's sigmas"))
            problem = sigma_grid_problem(np.array(values)) if len(values) == self.steps + 1 else f"expected {self.steps + 1} of them, got {len(values)}"
            if problem:
                raise InvalidArgumentError("sigmas", problem)
            set_(self, "sigmas", values)

    @classmethod
    def for_grid(
        cls,
        model: str,
        grid: SigmaGrid,
        *,
        shape: tuple[int, ...],
        dtype: str | torch.dtype,
        guidance: float = 0.0,
        method: str = "euler",
        encoder: str = "",
    ) -> CacheKey:
        """The key of runs of ``model`` on ``grid`` (its steps, shift, mu, time shift and training
        timesteps)."""
        if not isinstance(grid, SigmaGrid):
            raise InvalidArgumentError("grid", f"expected a SigmaGrid, got {type(grid).__name__}")
        return cls(model, grid.steps, grid.shift, grid.mu, guidance, method, shape, dtype, grid.time_shift, grid.num_train_timesteps, encoder,
                   tuple(grid.values.cpu().tolist()))

    @property
    def torch_dtype(self) -> torch.dtype:
        return getattr(torch, self.dtype)

    def to_json(self) -> dict[str, Any]:
        """The key as a JSON-ready dict (:meth:`from_json` inverts it)."""
        return {**dataclasses.asdict(self), "shape": list(self.shape), "sigmas": list(self.sigmas)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CacheKey:
        names = {f.name for f in dataclasses.fields(cls)}
        # keys written before sigmas were kept have none: SD3's grid, which they all used
        if not isinstance(data, dict) or not names - {"sigmas"} <= set(data) <= names:
            raise InvalidArgumentError("data", f"expected a dict with the fields {sorted(names)}, got {data!r}")
        return cls(**data)


@dataclass(frozen=True, eq=False)
class CacheEntry:
    """One cached generation: latents at some grid steps, and what a resume needs.

    Tensors are shared, not copied: do not modify them in place.

    Attributes:
        key: what the trajectory belongs to.
        prompt: the prompt it was generated for.
        embedding: the prompt's embedding, the similarity key; stored 1-D, unit norm, float32.
        states: grid step k (0 <= k < key.steps) -> latent at sigma_k, shape ``key.shape``,
            dtype ``key.dtype``.
        noise: the run's starting noise (sigma = 1), shape ``key.shape``, dtype ``key.dtype``.
        generator_state: ``torch.Generator.get_state()`` of the generator that drew ``noise``
            (a CPU uint8 tensor, as ``set_state`` needs), or None.
        velocities: grid step k -> the run's velocity at ``states[k]`` (its prompt's field at
            sigma_k, evaluated during the generation anyway), for the steps where it was kept;
            like a state in shape and dtype. Planners compare the new prompt's field with it.
        namespace: the tenant the entry belongs to.
        entry_id: unique id, also the entry's file name on disk (letters, digits, ``_``, ``-``).
        created: creation time, seconds since the epoch.
    """

    key: CacheKey
    prompt: str
    embedding: torch.Tensor
    states: dict[int, torch.Tensor]
    noise: torch.Tensor
    generator_state: torch.Tensor | None = None
    velocities: dict[int, torch.Tensor] = field(default_factory=dict)
    namespace: str = "default"
    entry_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    created: float = field(default_factory=time.time)

    def __post_init__(self) -> None:
        key = self.key
        if not isinstance(key, CacheKey):
            raise InvalidArgumentError("key", f"expected a CacheKey, got {type(key).__name__}")
        _check_names(self.entry_id, self.namespace, self.prompt)
        if not isinstance(self.states, dict) or not self.states:
            raise InvalidArgumentError("states", "expected a non-empty dict of grid step -> latent")
        states = {check_int("states", k, minimum=0): x for k, x in self.states.items()}
        for k, x in states.items():
            if k >= key.steps:
                raise InvalidArgumentError("states", f"step {k} is outside [0, {key.steps})")
            self._check_latent(f"states[{k}]", x)
        self._check_latent("noise", self.noise)
        if not isinstance(self.velocities, dict):
            raise InvalidArgumentError("velocities", "expected a dict of grid step -> velocity")
        for k, v in self.velocities.items():
            if k not in states:
                raise InvalidArgumentError("velocities", f"step {k!r} has no cached state")
            self._check_latent(f"velocities[{k}]", v)
        check_generator_state("generator_state", self.generator_state)
        object.__setattr__(self, "states", dict(sorted(states.items())))
        object.__setattr__(self, "velocities", dict(sorted(self.velocities.items())))
        object.__setattr__(self, "embedding", unit_embedding("embedding", self.embedding))
        object.__setattr__(self, "created", check_real("created", self.created))

    def _check_latent(self, name: str, x: object) -> None:
        x = check_tensor(name, x)
        if tuple(x.shape) != self.key.shape:
            raise ShapeError(name, f"expected the key's shape {self.key.shape}, got {tuple(x.shape)}")
        if x.dtype != self.key.torch_dtype:
            raise InvalidArgumentError(name, f"expected the key's dtype {self.key.dtype}, got {x.dtype}")

    @classmethod
    def from_trajectory(
        cls,
        trajectory: Trajectory,
        *,
        key: CacheKey,
        prompt: str,
        embedding: torch.Tensor,
        steps: Iterable[int],
        namespace: str = "default",
    ) -> CacheEntry:
        """An entry of ``trajectory``'s states at ``steps`` (which it must have kept), with its
        velocities there where it kept them."""
        if not isinstance(trajectory, Trajectory):
            raise InvalidArgumentError("trajectory", f"expected a Trajectory, got {type(trajectory).__name__}")
        if not isinstance(key, CacheKey):
            raise InvalidArgumentError("key", f"expected a CacheKey, got {type(key).__name__}")
        if trajectory.method != key.method:
            raise InvalidArgumentError("key", f"method {key.method!r} is not the trajectory's {trajectory.method!r}")
        if trajectory.noise is None:
            raise InvalidArgumentError("trajectory", "has no starting noise; integrate from step 0 or pass noise=")
        grid = trajectory.grid
        if not isinstance(grid, SigmaGrid) or not torch.equal(grid.values.cpu(), _key_grid(key).values):
            raise InvalidArgumentError("key", "its grid settings do not produce the trajectory's grid (build it with CacheKey.for_grid)")
        states = {}
        for step in check_items("steps", steps, "grid step indices"):
            step = check_int("steps", step, minimum=0)
            if step not in trajectory.states:
                raise InvalidArgumentError("steps", f"step {step} was not kept; kept: {sorted(trajectory.states)}")
            states[step] = trajectory.states[step].detach()
        if not states:
            raise InvalidArgumentError("steps", "expected at least one step to keep")
        return cls(
            key,
            prompt,
            embedding,
            states,
            trajectory.noise.detach(),
            trajectory.generator_state,
            {k: trajectory.velocities[k].detach() for k in states if k in trajectory.velocities},
            namespace,
        )

    @functools.cached_property
    def grid(self) -> SigmaGrid:
        """The sampler's grid, as the key's settings produce it, on the entry's device."""
        return _key_grid(self.key, self.noise.device)

    @property
    def cached_steps(self) -> tuple[int, ...]:
        """The grid steps whose latents the entry holds, ascending."""
        return tuple(self.states)

    @property
    def nbytes(self) -> int:
        """Bytes held by all the entry's tensors (latents, velocities, noise, embedding,
        generator)."""
        return sum(t.numel() * t.element_size() for t in self._tensors())

    def _tensors(self) -> list[torch.Tensor]:
        extra = [] if self.generator_state is None else [self.generator_state]
        return [*self.states.values(), *self.velocities.values(), self.noise, self.embedding, *extra]

    def _grid_step(self, step: int, *, last: int) -> int:
        step = check_int("step", step, minimum=0)
        if step > last:
            raise InvalidArgumentError("step", f"must be <= {last}, got {step}")
        return step

    def sigma(self, step: int) -> torch.Tensor:
        """sigma_step of the entry's grid (0-dim)."""
        return self.grid.t(self._grid_step(step, last=self.key.steps))

    def timestep(self, step: int) -> torch.Tensor:
        """The model timestep ``sigma_step * num_train_timesteps`` (0-dim)."""
        return self.grid.timestep(self._grid_step(step, last=self.key.steps))

    def dt(self, step: int) -> torch.Tensor:
        """The signed step ``sigma_{step+1} - sigma_step`` (negative)."""
        return self.grid.dt(self._grid_step(step, last=self.key.steps - 1))

    def resume_point(self, step: int) -> ResumePoint:
        """The cached latent at ``step`` with the grid, method, noise, generator state and the
        run's velocity there (if kept)."""
        step = check_int("step", step, minimum=0)
        if step not in self.states:
            raise InvalidArgumentError("step", f"step {step} is not cached; cached: {list(self.states)}")
        return ResumePoint(self.states[step], step, self.grid, self.key.method, self.noise, self.generator_state, self.velocities.get(step))

    def to(self, device: torch.device | str, *, copy: bool = False) -> CacheEntry:
        """The entry with every tensor on ``device`` (but ``generator_state``, which stays on the
        CPU); ``copy=True`` copies tensors already there, so the result shares no storage. The
        entry was validated when made: moving it checks nothing again but the device, which must
        exist on this machine."""
        device = check_device("device", device)
        return _replaced(
            self,
            embedding=self.embedding.to(device, copy=copy),
            states={k: x.to(device, copy=copy) for k, x in self.states.items()},
            velocities={k: v.to(device, copy=copy) for k, v in self.velocities.items()},
            noise=self.noise.to(device, copy=copy),
        )


def _key_grid(key: CacheKey, device: torch.device | str | None = None) -> SigmaGrid:
    values = torch.tensor(key.sigmas, dtype=torch.float32, device=device)
    return SigmaGrid(values, shift=key.shift, mu=key.mu, time_shift=key.time_shift, num_train_timesteps=key.num_train_timesteps)


def _replaced(obj: Any, **changes: Any) -> Any:
    """``dataclasses.replace`` without ``__post_init__``: for copies of validated objects whose
    tensors only moved (the checks would synchronise with the device again)."""
    new = object.__new__(type(obj))
    for f in dataclasses.fields(obj):
        object.__setattr__(new, f.name, changes.get(f.name, getattr(obj, f.name)))
    return new


def key_text(key: CacheKey) -> str:
    """The canonical JSON of ``key``: equal keys, equal text (the stores filter on it)."""
    return json.dumps(key.to_json(), sort_keys=True, separators=(",", ":"))


def unit_embedding(name: str, embedding: object) -> torch.Tensor:
    """``embedding`` as a unit-norm float32 vector (left as is when it already is one)."""
    e = check_tensor(name, embedding)
    if e.dim() != 1 or e.numel() == 0:
        raise ShapeError(name, f"expected a non-empty 1-D tensor, got shape {tuple(e.shape)}")
    e = e.detach()
    norm = float(e.double().norm())
    if norm == 0:
        raise InvalidArgumentError(name, "must not be the zero vector")
    # Normalising a float32 unit vector again may move its last bits: keep it idempotent.
    if e.dtype == torch.float32 and math.isclose(norm, 1.0, abs_tol=1e-6):
        return e
    return (e.double() / norm).to(torch.float32)


@dataclass(frozen=True, eq=False)
class IndexRecord:
    """What the similarity index keeps of an entry: its embedding and description, no latents.

    Attributes:
        entry_id, namespace, prompt, key, created: the entry's.
        embedding: the entry's unit-norm float32 embedding, on the CPU.
        steps: the cached grid steps, ascending.
        nbytes: the entry's size in bytes.
    """

    entry_id: str
    namespace: str
    prompt: str
    key: CacheKey
    embedding: torch.Tensor
    steps: tuple[int, ...]
    nbytes: int
    created: float

    def __post_init__(self) -> None:
        _check_names(self.entry_id, self.namespace, self.prompt)
        if not isinstance(self.key, CacheKey):
            raise InvalidArgumentError("key", f"expected a CacheKey, got {type(self.key).__name__}")
        steps = tuple(sorted(check_int("steps", k, minimum=0) for k in self.steps))
        if not steps or steps[-1] >= self.key.steps:
            raise InvalidArgumentError("steps", f"expected cached steps in [0, {self.key.steps}), got {steps}")
        object.__setattr__(self, "steps", steps)
        object.__setattr__(self, "embedding", unit_embedding("embedding", self.embedding).cpu())
        object.__setattr__(self, "nbytes", check_int("nbytes", self.nbytes, minimum=0))
        object.__setattr__(self, "created", check_real("created", self.created))

    @classmethod
    def from_entry(cls, entry: CacheEntry) -> IndexRecord:
        return cls(
            entry.entry_id,
            entry.namespace,
            entry.prompt,
            entry.key,
            entry.embedding,
            entry.cached_steps,
            entry.nbytes,
            entry.created,
        )

    @property
    def benefit(self) -> float:
        """Fraction of the run a resume from the latest cached step saves."""
        return self.steps[-1] / self.key.steps


def _check_names(entry_id: object, namespace: object, prompt: object) -> None:
    check_entry_id("entry_id", entry_id)
    check_namespace("namespace", namespace)
    if not isinstance(prompt, str) or not prompt.strip():
        raise InvalidArgumentError("prompt", "expected a non-empty string")


def check_entry_id(argument: str, entry_id: object) -> str:
    """Return ``entry_id`` if it can name an entry (:data:`ENTRY_ID`)."""
    if not isinstance(entry_id, str) or not ENTRY_ID.fullmatch(entry_id):
        raise InvalidArgumentError(argument, f"expected 1-128 letters, digits, '_' or '-', got {entry_id!r}")
    return entry_id


def check_namespace(argument: str, namespace: object) -> str:
    """Return ``namespace`` if it is a non-blank string."""
    if not isinstance(namespace, str) or not namespace.strip():
        raise InvalidArgumentError(argument, f"expected a non-empty string, got {namespace!r}")
    return namespace
