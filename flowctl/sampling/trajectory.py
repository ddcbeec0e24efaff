"""Integrating over a grid and recording what a resume needs.

A :class:`Trajectory` keeps the states of chosen steps; :meth:`Trajectory.resume_point` turns
one into a :class:`ResumePoint` (state, step index, sigma, timestep, dt, grid, starting noise),
and :func:`resume` continues from it. Resuming at step k with the same dynamics, condition
and method reproduces the uninterrupted run bit for bit: both execute the same operations on
the same grid values from step k on.
"""

from __future__ import annotations

from collections.abc import Iterable
import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch

from .._checks import (
    check_dynamics,
    check_finite,
    check_generator_state,
    check_int,
    check_items,
    check_same_shape,
    check_tensor,
    first_non_finite,
)
from ..dynamics import Dynamics
from ..errors import IntegrationError, InvalidArgumentError
from .grid import Grid, SigmaGrid
from .integrators import get_tableau, rk_step


@dataclass(frozen=True, eq=False)
class ResumePoint:
    """Everything needed to continue a run at grid step ``step``.

    Checked when made: ``step`` lies on the grid (0 to N) and ``state``, ``noise`` and
    ``velocity`` are real floating tensors of one shape on one device; their values are checked
    where a run starts (:func:`resume`, a transition request).

    Attributes:
        state: x at ``grid.t(step)``.
        step: the grid step index k (0 = start of the grid).
        grid: the run's grid (a :class:`SigmaGrid` for flow models; a plain :class:`Grid` may be
            a piece of one, so a resume ends where it ends).
        method: the integrator the run used.
        noise: the run's starting state at step 0 (the noise, for a flow model), if known.
        generator_state: state of the torch.Generator that drew ``noise``, if the caller kept it.
        velocity: the run's own velocity at ``state`` (its dynamics and condition at
            ``grid.t(step)``), if kept; planners use it to compare another condition's field
            at no extra model evaluation.
    """

    state: torch.Tensor
    step: int
    grid: Grid
    method: str = "euler"
    noise: torch.Tensor | None = None
    generator_state: torch.Tensor | None = None
    velocity: torch.Tensor | None = None

    def __post_init__(self) -> None:
        # metadata only (no host synchronisation): finiteness is checked where a run starts
        _check_grid("grid", self.grid)
        object.__setattr__(self, "step", check_int("step", self.step, minimum=0, maximum=self.grid.steps))
        get_tableau(self.method)
        _check_run_tensors(self.grid, self.state, "state", self.noise, self.velocity)
        check_generator_state("generator_state", self.generator_state)

    @property
    def t(self) -> torch.Tensor:
        """Grid time at the resume step (sigma, for a sigma grid)."""
        return self.grid.t(self.step)

    sigma = t

    @property
    def timestep(self) -> torch.Tensor:
        """Model timestep ``sigma * num_train_timesteps`` (sigma grids only)."""
        if not isinstance(self.grid, SigmaGrid):
            raise InvalidArgumentError("grid", "timesteps exist only on a SigmaGrid")
        return self.grid.timestep(self.step)

    @property
    def dt(self) -> torch.Tensor:
        """Signed size of the next step, ``t_{k+1} - t_k``."""
        return self.grid.dt(self.step)

    @property
    def remaining_steps(self) -> int:
        return self.grid.steps - self.step


@dataclass(frozen=True, eq=False)
class Trajectory:
    """The record of one integration over ``grid`` from step ``start`` to the end.

    Attributes:
        grid: the time grid.
        method: integrator name.
        start: first step integrated from.
        states: kept states by step index; always holds ``start`` and the final step.
        noise: state at step 0 of the run (the starting noise of a flow model), if known.
        generator_state: state of the generator that drew ``noise``, if given.
        velocities: the velocity the run evaluated at each kept state but the final one (the
            first stage of the step from there), by step index.
    """

    grid: Grid
    method: str
    start: int
    states: dict[int, torch.Tensor]
    noise: torch.Tensor | None = None
    generator_state: torch.Tensor | None = None
    velocities: dict[int, torch.Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # metadata only (no host synchronisation); integrate's records skip this (_checked)
        _check_grid("grid", self.grid)
        get_tableau(self.method)
        n = self.grid.steps
        object.__setattr__(self, "start", check_int("start", self.start, minimum=0, maximum=n))
        for name, record in (("states", self.states), ("velocities", self.velocities)):
            if not isinstance(record, dict):
                raise InvalidArgumentError(name, f"expected a dict of grid step -> tensor, got {type(record).__name__}")
        if self.start not in self.states or n not in self.states:
            raise InvalidArgumentError("states", f"must hold the start step {self.start} and the final step {n}, got {sorted(self.states)}")
        first = self.states[self.start]
        _check_run_tensors(self.grid, first, f"states[{self.start}]", self.noise, None)
        for name, record in (("states", self.states), ("velocities", self.velocities)):
            for k, x in record.items():
                if not (isinstance(k, int) and self.start <= k <= n):
                    raise InvalidArgumentError(name, f"step {k!r} is outside [{self.start}, {n}]")
                check_same_shape(f"{name}[{k}]", check_tensor(f"{name}[{k}]", x, finite=False), f"states[{self.start}]", first)
        check_generator_state("generator_state", self.generator_state)

    @classmethod
    def _checked(cls, *fields: Any) -> Trajectory:
        """A record of arguments :func:`integrate` or :func:`resume` checked, made without the
        checks (they cost a few microseconds a state)."""
        record = object.__new__(cls)
        for f, value in zip(dataclasses.fields(cls), fields, strict=True):
            object.__setattr__(record, f.name, value)
        return record

    @property
    def final(self) -> torch.Tensor:
        """State at the last grid time (the sample, for a flow model)."""
        return self.states[self.grid.steps]

    def stacked(self) -> torch.Tensor:
        """All states from ``start`` to the end stacked on a new first axis (needs keep="all")."""
        steps = range(self.start, self.grid.steps + 1)
        missing = [k for k in steps if k not in self.states]
        if missing:
            raise InvalidArgumentError("keep", f"steps {missing[:5]}... were not kept; integrate with keep='all'")
        return torch.stack([self.states[k] for k in steps])

    def resume_point(self, step: int) -> ResumePoint:
        """The kept state at ``step`` with what a resume needs."""
        step = check_int("step", step, minimum=0)
        if step not in self.states:
            raise InvalidArgumentError("step", f"step {step} was not kept; kept: {sorted(self.states)}")
        return ResumePoint(self.states[step], step, self.grid, self.method, self.noise, self.generator_state, self.velocities.get(step))


def integrate(
    dynamics: Dynamics,
    x0: torch.Tensor,
    grid: Grid,
    cond: Any = None,
    *,
    method: str = "euler",
    start: int = 0,
    keep: str | Iterable[int] = "all",
    noise: torch.Tensor | None = None,
    generator_state: torch.Tensor | None = None,
) -> Trajectory:
    """Integrate ``dx/dt = dynamics.velocity(x, t, cond)`` over ``grid`` from step ``start``.

    Args:
        dynamics: the vector field.
        x0: state at ``grid.t(start)`` (for a flow model from scratch: the noise at sigma = 1).
        grid: the time grid. For a flow model a :class:`SigmaGrid`, which descends to exactly
            sigma = 0, so the final state is the sample. A plain :class:`Grid` may run either way
            and end anywhere: ordinary time for a toy ODE, or on purpose a piece of a sigma grid
            or an inversion from data towards noise; the final state is then the state at the
            grid's last time, whatever that is.
        cond: the condition, fixed over the run.
        method: "euler" (the flow-matching sampler), "heun" or "rk4".
        start: grid step that ``x0`` sits at (resume from the middle of a run).
        keep: which states to keep: "all", "final", or step indices (``start`` and the final step
            are always kept).
        noise: the run's state at step 0, x0's shape; defaults to ``x0`` when ``start == 0``.
        generator_state: state of the generator that drew the noise (``Generator.get_state()``),
            kept for the record.

    Raises:
        NonFiniteError / ShapeError / InvalidArgumentError: bad arguments (checked once, before
            the first step).
        IntegrationError: the state became NaN or Inf (checked once, on the states kept: a
            non-finite value carries on to the final state).
    """
    check_dynamics("dynamics", dynamics)
    _check_grid("grid", grid)
    get_tableau(method)
    start = check_int("start", start, minimum=0, maximum=grid.steps)
    if noise is None and start == 0:
        noise = x0
    _check_run_tensors(grid, x0, "x0", noise, None)
    check_finite(("x0", x0), *([] if noise is x0 or noise is None else [("noise", noise)]))
    check_generator_state("generator_state", generator_state)
    return _run(dynamics, x0, grid, cond, method, start, _keep_set(keep, start, grid.steps), noise, generator_state)


def resume(dynamics: Dynamics, point: ResumePoint, cond: Any = None, *, keep: str | Iterable[int] = "all") -> Trajectory:
    """Continue from ``point`` to the end of its grid with its method and the given condition.

    ``point`` may sit on any :class:`Grid` (a run's own, or a piece of one); the continuation
    ends where that grid ends. Raises :class:`NonFiniteError` naming ``point.state`` (or
    ``point.noise``) before the first step if it holds NaN or Inf.
    """
    check_dynamics("dynamics", dynamics)
    if not isinstance(point, ResumePoint):
        raise InvalidArgumentError("point", f"expected a ResumePoint, got {type(point).__name__}")
    noise = point.state if point.noise is None and point.step == 0 else point.noise
    check_finite(("point.state", point.state), *([] if noise is None or noise is point.state else [("point.noise", noise)]))
    keep_steps = _keep_set(keep, point.step, point.grid.steps)
    return _run(dynamics, point.state, point.grid, cond, point.method, point.step, keep_steps, noise, point.generator_state)


def _run(dynamics: Dynamics, x0: torch.Tensor, grid: Grid, cond: Any, method: str, start: int, keep_steps: set[int],
         noise: torch.Tensor | None, generator_state: torch.Tensor | None) -> Trajectory:
    """The integration loop of :func:`integrate` and :func:`resume`, on arguments they checked."""
    tableau, n = get_tableau(method), grid.steps
    states, velocities = {start: x0}, {}
    x = x0
    for i in range(start, n):
        first: list[torch.Tensor] = []

        def f(y: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            v = dynamics.velocity(y, t, cond)
            if not first:
                first.append(v)
            return v

        x, _ = rk_step(tableau, f, x, grid.t(i), grid.t(i + 1))
        if i in states:
            velocities[i] = first[0]
        if i + 1 in keep_steps:
            states[i + 1] = x
    bad = first_non_finite(*sorted(states.items()))
    if bad is not None:
        raise IntegrationError(f"state became non-finite by step {bad} (t = {float(grid.t(bad)):g})")
    return Trajectory._checked(grid, method, start, states, noise, generator_state, velocities)


def _check_grid(name: str, grid: object) -> Grid:
    """Return ``grid`` if it is a flowctl :class:`Grid` (checked when it was built)."""
    if not isinstance(grid, Grid):
        raise InvalidArgumentError(name, f"expected a flowctl Grid, got {type(grid).__name__}")
    return grid


def _check_run_tensors(grid: Grid, state: object, name: str, noise: object, velocity: object) -> None:
    """Metadata checks (no host synchronisation) of a run's state and, where given, its
    starting noise and a velocity: real floating tensors of the state's shape and device, which
    the grid's times can enter (they are on it, or on the CPU)."""
    state = check_tensor(name, state, finite=False)
    for other, value in (("noise", noise), ("velocity", velocity)):
        if value is not None:
            check_same_shape(other, check_tensor(other, value, finite=False), name, state)
    if grid.values.device not in (state.device, torch.device("cpu")):
        raise InvalidArgumentError("grid", f"is on {grid.values.device}, {name} on {state.device}")


def _keep_set(keep: str | Iterable[int], start: int, n: int) -> set[int]:
    if isinstance(keep, str) and keep in ("all", "final"):
        return set(range(start, n + 1)) if keep == "all" else {n}
    steps = check_items("keep", keep, "'all', 'final' or step indices")
    return {check_int("keep", k, minimum=0, maximum=n) for k in steps} | {n}
