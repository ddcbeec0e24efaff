"""Vector fields: the dynamics protocol, controlled and blended dynamics, and NFE counting.

Conventions (docs/conventions.md): for flow models ``t`` is SD3's sigma, ``sigma = 1`` is pure
noise and ``sigma = 0`` is data; ``x_sigma = (1 - sigma) x0 + sigma eps`` and the model predicts
``v = eps - x0``. Toy ODEs use ordinary time. Tensors are batched on the first axis; ``t`` is one
scalar (float or 0-dim tensor) shared by the whole batch.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch

from ._checks import check_dynamics, check_real, check_tensor
from .errors import BudgetExceededError, InvalidArgumentError, ShapeError, UnknownNameError

DEFAULT_COST: Mapping[str, float] = {"forward": 1.0, "jvp": 3.0, "vjp": 2.0}
"""Cost of a model call by kind relative to a forward call, where none was measured (typical of
a transformer on a CPU); pass the model's measured costs where they matter."""


@runtime_checkable
class Dynamics(Protocol):
    """A vector field ``dx/dt = velocity(x, t, cond)``.

    ``cond`` is whatever conditions the field: a prompt embedding for a flow model, the input
    ``u`` for a control system, ``None`` for an autonomous ODE. Implementations take every
    argument explicitly and keep no hidden per-call state.
    """

    def velocity(self, x: torch.Tensor, t: float | torch.Tensor, cond: Any = None) -> torch.Tensor:
        ...


def derivative_mode(model: object) -> AbstractContextManager:
    """The context in which ``model`` is differentiated: its ``derivatives()`` where it defines
    one (a transformer whose fast attention kernels have no forward-mode AD selects one that
    has), else nothing. flowctl enters it around everything that takes JVPs or VJPs of a model
    (the planners on the exact model, the benchmark's cost measurement); its wrappers forward it."""
    derivatives = getattr(model, "derivatives", None)
    return derivatives() if callable(derivatives) else nullcontext()


class NFECounter:
    """Counts model evaluations (NFE), optionally under a hard budget.

    One call of a model's ``velocity`` on a batch is one evaluation, whatever the batch size
    (a guided SD3 evaluation is one). Calls are counted by kind ("forward", "jvp", "vjp");
    :attr:`equivalents` weighs them by ``cost`` (relative to a forward call).

    Args:
        budget: NFE-equivalents the counted calls may spend (a finite number >= 0), or None for
            no cap. A call that would go past it raises :class:`BudgetExceededError` before it
            is counted (and, through :class:`CountedDynamics`, before it is made).
        cost: weight of each kind, relative to a forward call; kinds it leaves out take
            :data:`DEFAULT_COST`'s.
    """

    def __init__(self, *, budget: float | None = None, cost: Mapping[str, float] | None = None) -> None:
        self.by_kind: Counter[str] = Counter()
        self._kind = "forward"
        self.budget = None if budget is None else check_budget("budget", budget)
        self.cost = {**DEFAULT_COST, **({} if cost is None else check_cost("cost", cost))}

    @property
    def equivalents(self) -> float:
        """The counted calls in NFE-equivalents (weighted by ``cost``)."""
        return float(sum(n * self.cost[kind] for kind, n in self.by_kind.items()))

    @property
    def total(self) -> float:
        """All evaluations and NFE-equivalents counted so far."""
        return float(sum(self.by_kind.values()))

    def add(self, n: float = 1.0, *, kind: str | None = None) -> None:
        """Count ``n`` evaluations of ``kind``, one of :attr:`cost`'s kinds (default: the kind set
        by :meth:`counting_as`)."""
        if isinstance(n, bool) or not (isinstance(n, (int, float)) and math.isfinite(n) and n >= 0):
            raise InvalidArgumentError("n", f"must be a finite number >= 0, got {n!r}")
        kind = self._known("kind", kind) if kind is not None else self._kind
        if self.budget is not None:
            after = self.equivalents + n * self.cost[kind]
            if after > self.budget + 1e-9:
                raise BudgetExceededError(f"a {kind} call would spend {after:g} of a budget of {self.budget:g} NFE-equivalents")
        self.by_kind[kind] += n

    @contextmanager
    def counting_as(self, kind: str) -> Iterator[None]:
        """Count the evaluations made inside the block as ``kind`` (e.g. "jvp" under forward AD)."""
        previous, self._kind = self._kind, self._known("kind", kind)
        try:
            yield
        finally:
            self._kind = previous

    def reset(self) -> None:
        self.by_kind.clear()

    def _known(self, name: str, kind: object) -> str:
        if not isinstance(kind, str) or kind not in self.cost:
            raise UnknownNameError(name, kind, list(self.cost))
        return kind

    def __repr__(self) -> str:
        return f"NFECounter(total={self.total:g}, by_kind={dict(self.by_kind)})"


def check_budget(name: str, budget: object) -> float:
    """``budget`` as a float if it is a finite number >= 0 (NFE-equivalents)."""
    return check_real(name, budget, nonnegative=True)


def check_cost(name: str, cost: object) -> Mapping[str, float]:
    """``cost`` if it maps kinds to finite positive weights and holds "forward"."""
    if not isinstance(cost, Mapping) or "forward" not in cost:
        raise InvalidArgumentError(name, f"expected a mapping of call kinds to weights with 'forward', got {cost!r}")
    for kind, w in cost.items():
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w <= 0:
            raise InvalidArgumentError(name, f"weight of {kind!r} must be a finite number > 0, got {w!r}")
    return cost


class CountedDynamics:
    """Wraps a dynamics and counts each ``velocity`` call in :attr:`counter`."""

    def __init__(self, dynamics: Dynamics, counter: NFECounter | None = None):
        self.dynamics = check_dynamics("dynamics", dynamics)
        if counter is not None and not isinstance(counter, NFECounter):
            raise InvalidArgumentError("counter", f"expected an NFECounter or None, got {type(counter).__name__}")
        self.counter = counter if counter is not None else NFECounter()

    @property
    def nfe(self) -> float:
        return self.counter.total

    def derivatives(self) -> AbstractContextManager:
        return derivative_mode(self.dynamics)

    def velocity(self, x: torch.Tensor, t: float | torch.Tensor, cond: Any = None) -> torch.Tensor:
        self.counter.add(1)
        return self.dynamics.velocity(x, t, cond)


@dataclass(frozen=True)
class ControlInput:
    """Condition of :class:`ControlledDynamics`: the base field's condition and the control.

    Attributes:
        cond: condition passed on to the base dynamics.
        u: additive control, broadcastable to the state's shape (same units as the velocity).
    """

    cond: Any
    u: torch.Tensor


class ControlledDynamics:
    """``dx/dt = v(x, t, cond) + u``; its condition is a :class:`ControlInput`."""

    def __init__(self, dynamics: Dynamics):
        self.dynamics = check_dynamics("dynamics", dynamics)

    def derivatives(self) -> AbstractContextManager:
        return derivative_mode(self.dynamics)

    def velocity(self, x: torch.Tensor, t: float | torch.Tensor, cond: ControlInput) -> torch.Tensor:
        if not isinstance(cond, ControlInput):
            raise InvalidArgumentError("cond", f"expected a ControlInput, got {type(cond).__name__}")
        u = check_tensor("cond.u", cond.u)
        x = check_tensor("x", x, finite=False)
        if not _broadcasts_to(u.shape, x.shape):
            raise ShapeError("cond.u", f"shape {tuple(u.shape)} does not broadcast to the state's {tuple(x.shape)}")
        if u.device != x.device:
            raise InvalidArgumentError("cond.u", f"is on {u.device}, the state on {x.device}")
        return self.dynamics.velocity(x, t, cond.cond) + u


class BlendedDynamics:
    """``v_alpha = (1 - alpha) v(x, t, A) + alpha v(x, t, B)`` with alpha from a schedule.

    The condition is the pair ``(cond_a, cond_b)``. alpha at time t is
    ``schedule(grid.position(t) - switch_step)``: the number of grid steps since the switch.
    Only the side(s) with non-zero weight are evaluated: one model evaluation when alpha is 0
    or 1, two in between.

    Args:
        dynamics: the model (wrap it in :class:`CountedDynamics` to count evaluations).
        schedule: a :class:`flowctl.schedules.Schedule` (any callable steps -> alpha in [0, 1]).
        grid: the sampler's grid (a :class:`flowctl.Grid`), used to turn t into a step position;
            integrate the blend on this same grid.
        switch_step: grid step at which the switch starts (the resume step), >= 0.
    """

    def __init__(self, dynamics: Dynamics, schedule, grid, switch_step: float):
        self.dynamics = check_dynamics("dynamics", dynamics)
        if not callable(schedule):
            raise InvalidArgumentError("schedule", f"expected a callable steps -> alpha, got {type(schedule).__name__}")
        self.schedule = schedule
        if not callable(getattr(grid, "position", None)):
            raise InvalidArgumentError("grid", f"expected a flowctl Grid, got {type(grid).__name__}")
        self.grid = grid
        self.switch_step = check_real("switch_step", switch_step, nonnegative=True)

    def derivatives(self) -> AbstractContextManager:
        return derivative_mode(self.dynamics)

    def alpha(self, t: float | torch.Tensor) -> float:
        """Weight of condition B at time t."""
        return float(self.schedule(self.grid.position(t) - self.switch_step))

    def velocity(self, x: torch.Tensor, t: float | torch.Tensor, cond: tuple[Any, Any]) -> torch.Tensor:
        if not (isinstance(cond, (tuple, list)) and len(cond) == 2):
            raise InvalidArgumentError("cond", "expected a pair (cond_a, cond_b)")
        cond_a, cond_b = cond
        alpha = self.alpha(t)
        if alpha <= 0.0:
            return self.dynamics.velocity(x, t, cond_a)
        if alpha >= 1.0:
            return self.dynamics.velocity(x, t, cond_b)
        v_a = self.dynamics.velocity(x, t, cond_a)
        v_b = self.dynamics.velocity(x, t, cond_b)
        return torch.lerp(v_a, v_b, alpha)


def _broadcasts_to(shape: torch.Size, target: torch.Size) -> bool:
    try:
        return torch.broadcast_shapes(shape, target) == target
    except RuntimeError:
        return False
