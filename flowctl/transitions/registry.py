"""Strategies by name: a convenience for command lines and benchmark configs.

The classes are the API; this maps the names the ``flowctl`` commands accept to configured
instances.
"""

from __future__ import annotations

from .._checks import check_int
from ..dynamics import check_budget
from ..errors import UnknownNameError
from ..jacobians import ColouredJacobian, DiagonalJacobian
from ..ocp import LeastSquaresOptions
from .base import Strategy
from .blends import Blend, DirectSwitch
from .closed_form import ClosedFormController
from .secant import SecantCorrection
from .shooting import Shooting, ShootingMPC, check_image_jacobian

STRATEGY_NAMES = ("direct", "linear", "sigmoid", "closed-form", "secant", "offset", "shooting", "multiple-shooting", "velocity-shooting", "mpc")


def make_strategy(
    name: str,
    *,
    shooting_iterations: int = 5,
    mpc_jacobian: DiagonalJacobian | ColouredJacobian | None = None,
    budget: float = 1.0,
) -> Strategy:
    """The strategy called ``name`` (one of :data:`STRATEGY_NAMES`).

    "secant" is :class:`SecantCorrection`, "offset" the same without its trial evaluation (open
    loop, no extra evaluation); "shooting" is single shooting to the 16-segment noise
    anchor, "multiple-shooting" the same with segment nodes as unknowns, "velocity-shooting"
    single shooting to the seed's velocity consistency, all with at most
    ``shooting_iterations`` Levenberg-Marquardt steps; "mpc" is the single-shooting plan
    executed under MPC with ``mpc_jacobian`` (default: the coloured diagonal, radius 0). Every
    planner spends at most ``budget`` NFE-equivalents beyond its continuation.
    """
    check_int("shooting_iterations", shooting_iterations, minimum=1)
    check_budget("budget", budget)
    if mpc_jacobian is not None:
        check_image_jacobian("mpc_jacobian", mpc_jacobian)
    if name not in STRATEGY_NAMES:
        raise UnknownNameError("strategy", name, list(STRATEGY_NAMES))
    solver = LeastSquaresOptions(max_iterations=shooting_iterations, constraint_tol=1e-4)
    single = Shooting("single", "noise", solver=solver, budget=budget)
    return {
        "direct": DirectSwitch,
        "linear": lambda: Blend("linear"),
        "sigmoid": lambda: Blend("sigmoid"),
        "closed-form": ClosedFormController,
        "secant": lambda: SecantCorrection(budget=budget),
        "offset": lambda: SecantCorrection(budget=budget, trial=False),
        "shooting": lambda: single,
        "multiple-shooting": lambda: Shooting("multiple", "noise", solver=solver, budget=budget),
        "velocity-shooting": lambda: Shooting("single", "velocity", solver=solver, budget=budget),
        "mpc": lambda: ShootingMPC(single, jacobian=mpc_jacobian or DiagonalJacobian(radius=0)),
    }[name]()
