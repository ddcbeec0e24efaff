"""Integrating over a grid and recording what a resume needs.

A :class:`Trajectory` keeps the states of chosen steps; :meth:`Trajectory.resume_point` turns
one into a :class:`ResumePoint` (state, step index, sigma, timestep, dt, grid, starting noise),
and :func:`resume` continues from it. Resuming at step k with the same dynamics, condition
and method reproduces the uninterrupted run bit for bit: both execute the same operations on
the same grid values from step k on.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch

from .._checks import check_int, check_tensor
from ..dynamics import Dynamics
from ..errors import IntegrationError, InvalidArgumentError
from .grid import Grid, SigmaGrid
from .integrators import get_tableau, rk_step


@dataclass(frozen=True, eq=False)
class ResumePoint:
    """Everything needed to continue a run at grid step ``step``.

    Attributes:
        state: x at ``grid.t(step)``.
        step: the grid step index k (0 = start of the grid).
        grid: the run's grid (a :class:`SigmaGrid` for flow models).
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
        grid: the time grid (a :class:`SigmaGrid` for flow models).
        cond: the condition, fixed over the run.
        method: "euler" (the flow-matching sampler), "heun" or "rk4".
        start: grid step that ``x0`` sits at (resume from the middle of a run).
        keep: which states to keep: "all", "final", or step indices (``start`` and the final step
            are always kept).
        noise: the run's state at step 0; defaults to ``x0`` when ``start == 0``.
        generator_state: state of the generator that drew the noise, kept for the record.

    Raises:
        NonFiniteError / ShapeError / InvalidArgumentError: bad arguments.
        IntegrationError: the state became NaN or Inf (checked once, on the states kept: a
            non-finite value carries on to the final state).
    """
    x0 = check_tensor("x0", x0)
    if not isinstance(grid, Grid):
        raise InvalidArgumentError("grid", f"expected a flowctl Grid, got {type(grid).__name__}")
    tableau = get_tableau(method)
    n = grid.steps
    start = check_int("start", start, minimum=0)
    if start > n:
        raise InvalidArgumentError("start", f"must be <= the grid's {n} steps, got {start}")
    if noise is None and start == 0:
        noise = x0
    elif noise is not None:
        noise = check_tensor("noise", noise)
    keep_steps = _keep_set(keep, start, n)

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
    bad = next((k for k, y in sorted(states.items()) if not bool(torch.isfinite(y).all())), None)
    if bad is not None:
        raise IntegrationError(f"state became non-finite by step {bad} (t = {float(grid.t(bad)):g})")
    return Trajectory(grid, method, start, states, noise, generator_state, velocities)


def resume(dynamics: Dynamics, point: ResumePoint, cond: Any = None, *, keep: str | Iterable[int] = "all") -> Trajectory:
    """Continue from ``point`` to the end of its grid with its method and the given condition."""
    return integrate(
        dynamics,
        point.state,
        point.grid,
        cond,
        method=point.method,
        start=point.step,
        keep=keep,
        noise=point.noise,
        generator_state=point.generator_state,
    )


def _keep_set(keep: str | Iterable[int], start: int, n: int) -> set[int]:
    if keep == "all":
        return set(range(start, n + 1))
    if keep == "final":
        return {n}
    if isinstance(keep, str):
        raise InvalidArgumentError("keep", f"expected 'all', 'final' or step indices, got {keep!r}")
    steps = {check_int("keep", k, minimum=0) for k in keep}
    if any(k > n for k in steps):
        raise InvalidArgumentError("keep", f"step indices must be <= {n}")
    return steps | {n}
