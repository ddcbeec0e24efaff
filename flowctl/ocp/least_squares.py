"""Matrix-free Levenberg-Marquardt for least squares, with an augmented Lagrangian for constraints.

Minimises ``sum |r(z)|^2`` over a list of tensors ``z``. Each step solves
``(J'J + mu I) dz = -J'r`` by conjugate gradients on products only: ``J'w`` is a reverse-mode
product through the recorded residual graph, and ``J v`` the derivative of ``J'w`` in ``w``
(reverse over reverse), so each product reuses one forward pass of the model and no matrix of
the unknowns' size squared is ever formed. Constraints ``c(z) = 0`` and ``g(z) <= 0`` enter as
extra residuals ``sqrt(rho / 2) (c + y / rho)`` and ``sqrt(rho / 2) max(0, g + y / rho)``
(Powell-Hestenes-Rockafellar), whose multipliers ``y`` are updated between inner solves.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from .._checks import check_int, check_real
from ..dynamics import NFECounter

Tensors = list[torch.Tensor]


@dataclass(frozen=True)
class LeastSquaresOptions:
    """Settings of the Levenberg-Marquardt / augmented-Lagrangian solver.

    Attributes:
        max_iterations: Levenberg-Marquardt steps in all (inner iterations summed).
        tol: stop an inner solve when a step changes the cost by less than ``tol`` relative,
            or the gradient's largest entry is below ``tol``.
        constraint_tol: largest constraint violation accepted as feasible.
        cg_iterations: conjugate-gradient iterations per step.
        cg_tol: relative residual at which conjugate gradients stop.
        damping: initial Levenberg-Marquardt damping, as a fraction of the gradient's largest
            entry (at least of 1); adapted after every step.
        penalty: initial augmented-Lagrangian penalty rho.
        max_outer: augmented-Lagrangian updates at most.
        max_nfe: bound on the model evaluations of one solve (forward calls plus the model calls
            that JVP and VJP products differentiate); None for none.
    """

    max_iterations: int = 100
    tol: float = 1e-6
    constraint_tol: float = 1e-6
    cg_iterations: int = 20
    cg_tol: float = 1e-4
    damping: float = 1e-4
    penalty: float = 100.0
    max_outer: int = 30
    max_nfe: float | None = None

    def __post_init__(self) -> None:
        check_int("max_iterations", self.max_iterations, minimum=1)
        check_real("tol", self.tol, nonnegative=True)
        check_real("constraint_tol", self.constraint_tol, positive=True)
        check_int("cg_iterations", self.cg_iterations, minimum=1)
        check_real("cg_tol", self.cg_tol, nonnegative=True)
        check_real("damping", self.damping, positive=True)
        check_real("penalty", self.penalty, positive=True)
        check_int("max_outer", self.max_outer, minimum=1)
        if self.max_nfe is not None:
            check_real("max_nfe", self.max_nfe, positive=True)


@dataclass(frozen=True)
class Residuals:
    """The residual blocks at one point: objective terms, equalities and inequalities."""

    objective: Tensors
    equalities: Tensors
    inequalities: Tensors


ResidualFn = Callable[[Tensors], Residuals]


@dataclass
class LeastSquaresOutcome:
    z: Tensors
    objective: float
    violation: float
    iterations: int
    status: str  # "solved", "max_iterations", "nfe_limit", "failed"
    message: str


def solve_least_squares(
    fn: ResidualFn, z0: Tensors, options: LeastSquaresOptions, counter: NFECounter
) -> LeastSquaresOutcome:
    """Minimise ``sum |objective|^2`` subject to ``equalities == 0``, ``inequalities <= 0``."""
    nfe_limit = None if options.max_nfe is None else counter.total + options.max_nfe
    z = [t.detach().clone() for t in z0]
    res = fn(z)
    y_eq = [torch.zeros_like(c) for c in res.equalities]
    y_in = [torch.zeros_like(g) for g in res.inequalities]
    rho = options.penalty
    iterations = 0
    violation = _violation(res)
    for _ in range(options.max_outer):
        merit = _merit(fn, y_eq, y_in, rho)
        z, iterations, status, message = _levenberg_marquardt(merit, z, options, counter, iterations, nfe_limit)
        res = fn(z)
        previous, violation = violation, _violation(res)
        if status != "solved":
            return LeastSquaresOutcome(z, _sumsq(res.objective), violation, iterations, status, message)
        if violation <= options.constraint_tol:
            return LeastSquaresOutcome(z, _sumsq(res.objective), violation, iterations, "solved", message)
        y_eq = [y + rho * c.detach() for y, c in zip(y_eq, res.equalities)]
        y_in = [torch.clamp(y + rho * g.detach(), min=0) for y, g in zip(y_in, res.inequalities)]
        if violation > 0.25 * previous:
            rho *= 10.0
    return LeastSquaresOutcome(
        z, _sumsq(res.objective), violation, iterations, "failed",
        f"constraint violation {violation:.3g} after {options.max_outer} multiplier updates",
    )


def _merit(fn: ResidualFn, y_eq: Tensors, y_in: Tensors, rho: float) -> Callable[[Tensors], Tensors]:
    scale = math.sqrt(rho / 2)

    def merit(z: Tensors) -> Tensors:
        res = fn(z)
        return (
            list(res.objective)
            + [scale * (c + y / rho) for c, y in zip(res.equalities, y_eq)]
            + [scale * torch.clamp(g + y / rho, min=0) for g, y in zip(res.inequalities, y_in)]
        )

    return merit


def _levenberg_marquardt(
    merit: Callable[[Tensors], Tensors],
    z: Tensors,
    options: LeastSquaresOptions,
    counter: NFECounter,
    iterations: int,
    nfe_limit: float | None,
) -> tuple[Tensors, int, str, str]:
    mu = None
    nu = 2.0
    while iterations < options.max_iterations:
        if nfe_limit is not None and counter.total >= nfe_limit:
            return z, iterations, "nfe_limit", f"model-evaluation bound {options.max_nfe:g} reached"
        before = counter.by_kind["forward"]
        with torch.enable_grad():
            zg = [t.detach().requires_grad_(True) for t in z]
            r = merit(zg)
            calls = counter.by_kind["forward"] - before  # model calls in one pass of the residual
            # J'w with w symbolic: differentiating it in w gives J v without re-running the model.
            w = [torch.zeros_like(t, requires_grad=True) for t in r]
            jt_w = _grad(r, zg, w, create_graph=True)
        cost = _sumsq(r)
        if not math.isfinite(cost):
            return z, iterations, "failed", "the residual is not finite"

        def jt(v: Tensors) -> Tensors:
            counter.add(calls, kind="vjp")
            return [t.detach() for t in _grad(r, zg, v)]

        def j(v: Tensors) -> Tensors:
            counter.add(calls, kind="jvp")
            return [t.detach() for t in _grad(jt_w, w, v)]

        g = jt([t.detach() for t in r])  # half the gradient of sum |r|^2
        g_max = max(float(t.abs().max()) for t in g) if g else 0.0
        if g_max <= options.tol:
            return z, iterations, "solved", "gradient below tolerance"
        if mu is None:
            mu = options.damping * max(g_max, 1.0)
        step = _cg(lambda v: [a + mu * b for a, b in zip(jt(j(v)), v)], [-t for t in g], options)
        if math.sqrt(_dot(step, step)) <= options.tol * (math.sqrt(_dot(z, z)) + options.tol):
            return z, iterations, "solved", "step below tolerance"
        # cost - |r + J s|^2 = s'(mu s - g) when (J'J + mu I) s = -g
        predicted = _dot(step, [mu * s - t for s, t in zip(step, g)])
        if predicted <= options.tol * cost:
            return z, iterations, "solved", "predicted decrease below tolerance"
        trial = [a + b for a, b in zip(z, step)]
        with torch.no_grad():
            new_cost = _sumsq(merit(trial))
        iterations += 1
        ratio = (cost - new_cost) / predicted
        if math.isfinite(new_cost) and ratio > 0:
            z = [t.detach() for t in trial]
            mu *= max(1 / 3, 1 - (2 * ratio - 1) ** 3)
            nu = 2.0
            if cost - new_cost <= options.tol * max(cost, 1e-300):
                return z, iterations, "solved", "cost change below tolerance"
        else:
            mu *= nu
            nu *= 2.0
    return z, iterations, "max_iterations", f"{options.max_iterations} Levenberg-Marquardt steps"


def _grad(outputs: Tensors, inputs: Tensors, grad_outputs: Tensors, *, create_graph: bool = False) -> Tensors:
    """``sum_i grad_outputs_i . d outputs_i / d inputs``; constant outputs and unused inputs count 0."""
    pairs = [(o, g) for o, g in zip(outputs, grad_outputs) if o.requires_grad]
    if not pairs:
        return [torch.zeros_like(x) for x in inputs]
    grads = torch.autograd.grad(
        [o for o, _ in pairs], inputs, [g for _, g in pairs],
        retain_graph=True, create_graph=create_graph, allow_unused=True,
    )
    return [torch.zeros_like(x) if g is None else g for g, x in zip(grads, inputs)]


def _cg(apply: Callable[[Tensors], Tensors], b: Tensors, options: LeastSquaresOptions) -> Tensors:
    x = [torch.zeros_like(t) for t in b]
    r = [t.clone() for t in b]
    p = [t.clone() for t in b]
    rs = _dot(r, r)
    stop = (options.cg_tol**2) * rs
    for _ in range(options.cg_iterations):
        ap = apply(p)
        alpha = rs / _dot(p, ap)
        x = [a + alpha * b for a, b in zip(x, p)]
        r = [a - alpha * b for a, b in zip(r, ap)]
        rs_new = _dot(r, r)
        if rs_new <= stop:
            break
        p = [a + (rs_new / rs) * b for a, b in zip(r, p)]
        rs = rs_new
    return x


def _dot(a: Tensors, b: Tensors) -> float:
    return float(sum((x * y).sum() for x, y in zip(a, b)))


def _sumsq(ts: Tensors) -> float:
    return float(sum(t.detach().square().sum() for t in ts))


def _violation(res: Residuals) -> float:
    eq = max((float(c.detach().abs().max()) for c in res.equalities if c.numel()), default=0.0)
    ineq = max((float(g.detach().clamp(min=0).max()) for g in res.inequalities if g.numel()), default=0.0)
    return max(eq, ineq)
