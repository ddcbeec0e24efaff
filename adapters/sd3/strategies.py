"""flowctl's transition strategies by name, ready for the MMDiT.

Shooting and shooting + MPC differentiate through the model (JVPs and VJPs, and a double
backward in Levenberg-Marquardt's Gauss-Newton products); the MMDiT's default attention
kernels support neither, so :func:`make_strategy` wraps them in :class:`MathAttention`, and
shooting + MPC linearises per latent patch.
"""

from __future__ import annotations

from dataclasses import dataclass

from flowctl.jacobians import ColouredJacobian
from flowctl.transitions import STRATEGY_NAMES, Strategy, TransitionRequest, TransitionResult
from flowctl.transitions import make_strategy as make_flowctl_strategy

from flowctl.adapters.common import math_attention

__all__ = ["STRATEGY_NAMES", "MathAttention", "make_strategy"]


@dataclass(frozen=True)
class MathAttention:
    """Runs ``strategy`` with attention on the MATH kernel (see :func:`math_attention`).

    Attributes:
        strategy: a strategy that takes derivatives of the model.
    """

    strategy: Strategy

    @property
    def name(self) -> str:
        return self.strategy.name

    @property
    def differentiates(self) -> bool:
        return True

    def run(self, request: TransitionRequest) -> TransitionResult:
        with math_attention():
            return self.strategy.run(request)


def make_strategy(name: str, *, shooting_iterations: int = 5, patch_size: int = 2, budget: float = 1.0) -> Strategy:
    """The strategy called ``name`` (:data:`flowctl.transitions.STRATEGY_NAMES`) with planners
    capped at ``budget`` NFE-equivalents; the ones that differentiate the model (``differentiates``:
    shooting on the exact model) run under :class:`MathAttention`, and "mpc" on the exact model
    linearises per ``patch_size`` x ``patch_size`` latent patch."""
    strategy = make_flowctl_strategy(
        name, shooting_iterations=shooting_iterations, mpc_jacobian=ColouredJacobian(block=(patch_size, patch_size), radius=0),
        budget=budget,
    )
    return MathAttention(strategy) if getattr(strategy, "differentiates", False) else strategy
