"""A surrogate of the two prompts' flows near a cached state, built from evaluations already made.

Sigma runs from 1 (noise) to 0 (data); ``x0_hat = x - sigma v``. A straight flow keeps its
denoised estimate along its path, so its field is ``v(y, sigma) = (y - x0_hat) / sigma`` with
Jacobian ``I / sigma``. :class:`StraightFlows` holds such a field for prompt A through A's cached
state (from the velocity the cache kept) and one for prompt B through the secant correction's
state (:class:`~flowctl.transitions.secant.SecantStep`: one model evaluation beyond the direct
switch). Planners shoot on it for free; :class:`MixedFlow` executes their plans with B's true
field and A's surrogate one, so a blended step costs one model evaluation, not two.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..dynamics import Dynamics
from .base import TransitionRequest
from .secant import SecantStep

A, B = "a", "b"
"""The conditions of the surrogate's two fields."""

SIGMA_FLOOR = 1e-6  # the straight field is singular at sigma = 0


@dataclass(frozen=True, eq=False)
class StraightFlows:
    """Straight-flow fields ``v_c(y, sigma) = (y - x0[c]) / sigma`` for conditions "a" and "b".

    Attributes:
        x0: the denoised estimate each field keeps, by condition.
        noise: the noise estimate at sigma = 1 of B's straight path (the target of a noise
            anchor on the surrogate).
    """

    x0: dict[str, torch.Tensor]
    noise: torch.Tensor

    @classmethod
    def at(cls, request: TransitionRequest, step: SecantStep) -> StraightFlows:
        """A's straight flow through A's cached state, B's through the corrected state."""
        x, sigma = request.point.state, request.grid.t(request.step)
        v_a = step.v_b if step.v_a is None else step.v_a  # no correction made: B's field at x for both
        y, v_y = step.state(x), step.velocity()
        return cls({A: x - sigma * v_a, B: y - sigma * v_y}, y + (1 - sigma) * v_y)

    def velocity(self, y: torch.Tensor, t: float | torch.Tensor, cond: str) -> torch.Tensor:
        return (y - self.x0[cond]) / max(float(t), SIGMA_FLOOR)

    def jacobian_diagonal(self, t: float | torch.Tensor) -> float:
        """The fields' Jacobian ``I / sigma``, as its diagonal value."""
        return 1.0 / max(float(t), SIGMA_FLOOR)


@dataclass(frozen=True, eq=False)
class MixedFlow:
    """B's true field (``model`` with ``cond_b``) and A's surrogate one, under conditions "a" and
    "b"; the first call at the cached state returns ``v_b`` already evaluated there."""

    model: Dynamics
    flows: StraightFlows
    cond_b: Any
    x: torch.Tensor
    v_b: torch.Tensor

    def velocity(self, y: torch.Tensor, t: float | torch.Tensor, cond: str) -> torch.Tensor:
        if cond == A:
            return self.flows.velocity(y, t, A)
        if y is self.x:
            return self.v_b
        return self.model.velocity(y, t, self.cond_b)
