"""Levenberg-Marquardt for least squares, with an augmented Lagrangian for constraints.

Minimises ``sum |r(z)|^2`` over a list of tensors ``z`` (``n`` scalars; ``m`` residuals). Each
step solves the damped normal equations ``(J'J + mu I) dz = -J'r`` at a point whose residual pass
was recorded by autograd, in one of two ways (:attr:`LeastSquaresOptions.linear_solver`):

- "cg", matrix-free: conjugate gradients on products only. ``J'w`` is a reverse-mode product
  through the recorded pass, and ``J v`` the derivative of ``J'w`` in ``w`` (reverse over
  reverse), so no product re-runs the model and no ``n x n`` or ``m x n`` matrix is formed.
- "dense", for few unknowns: ``J`` itself, from the ``min(n, m)`` products ``J e_i`` (or
  ``J' e_j``) batched into one vectorised pass, or from the residual function where it knows
  ``J``'s structure (:attr:`Residuals.jacobian`), and a direct solve of the ``n x n`` equations.

The rest is shared, so both paths take the same steps up to the accuracy of conjugate gradients:
damping updates, acceptance, stopping rules and constraints. Constraints ``c(z) = 0`` and
``g(z) <= 0`` enter as extra residuals ``sqrt(rho / 2) (c + y / rho)`` and
``sqrt(rho / 2) max(0, g + y / rho)`` (Powell-Hestenes-Rockafellar), whose multipliers ``y`` are
updated between inner solves, until the constraints hold and no multiplier holds the iterate off
its bound. A trial point is evaluated with its pass recorded, so an accepted step needs no further
pass, and a rejected one re-solves the current point's equations with more damping.

Model evaluations are counted on the counter the residuals report to: a pass counts its forward
calls; a product, and each direction of a batched one, counts the forward calls of its point's
pass as "jvp" or "vjp"; so does recording ``J'w`` (a reverse pass) for the ``J v`` products. A
residual function's own ``J`` counts what it spends itself.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import torch

from .._checks import check_int, check_real
from ..dynamics import NFECounter
from ..errors import UnknownNameError

Tensors = list[torch.Tensor]

LINEAR_SOLVERS = ("auto", "dense", "cg")


@dataclass(frozen=True)
class LeastSquaresOptions:
    """Settings of the Levenberg-Marquardt / augmented-Lagrangian solver.

    Attributes:
        max_iterations: Levenberg-Marquardt steps in all (inner iterations summed).
        tol: stop an inner solve when a step changes the cost by less than ``tol`` relative,
            or the gradient's largest entry is below ``tol``.
        constraint_tol: largest constraint violation accepted as feasible; also how far an
            inequality whose multiplier ``y`` is positive may sit off its bound
            (``|max(g, -y / rho)|``), so that a solve does not end inside the feasible set with
            an overestimated multiplier.
        cg_iterations: conjugate-gradient iterations per step (linear solver "cg").
        cg_tol: relative residual at which conjugate gradients stop (linear solver "cg").
        damping: initial Levenberg-Marquardt damping, as a fraction of the gradient's largest
            entry (at least of 1); adapted after every step.
        penalty: initial augmented-Lagrangian penalty rho.
        max_outer: augmented-Lagrangian updates at most.
        max_nfe: bound on the model evaluations of one solve (forward calls plus the model calls
            that JVP and VJP products differentiate); None for none.
        linear_solver: how a step solves its normal equations: "cg" (matrix-free conjugate
            gradients: up to ``2 cg_iterations + 2`` products per step, memory linear in the
            unknowns), "dense" (the Jacobian from ``min(n, m)`` products per accepted step, one
            vectorised pass, then a direct solve; memory ``m x n``), or "auto": dense up to
            ``dense_max_unknowns`` unknowns, cg above.
        dense_max_unknowns: the most unknowns (scalars in ``z``) that "auto" solves densely.
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
    linear_solver: str = "auto"
    dense_max_unknowns: int = 100

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
        if not (isinstance(self.linear_solver, str) and self.linear_solver in LINEAR_SOLVERS):
            raise UnknownNameError("linear_solver", self.linear_solver, list(LINEAR_SOLVERS))
        check_int("dense_max_unknowns", self.dense_max_unknowns, minimum=0)

    def linear_solver_for(self, unknowns: int) -> str:
        """The linear solver ("dense" or "cg") a problem with ``unknowns`` scalars gets."""
        if self.linear_solver != "auto":
            return self.linear_solver
        return "dense" if unknowns <= self.dense_max_unknowns else "cg"


@dataclass(frozen=True)
class Residuals:
    """The residual blocks at one point: objective terms, equalities and inequalities.

    ``aux`` is anything else the residual function wants back with the solution (the torch
    backend: the states at the nodes); the solver only passes it through. ``jacobian``, if given,
    returns ``J = dR/dz`` at this point, ``m x n`` (``R`` the blocks flattened and concatenated in
    this order, ``z`` likewise), counting the model evaluations it makes; dense steps then use
    it instead of forming ``J`` from generic products. ``objective_gram``, if given with it,
    returns ``J_o'J_o`` (``n x n``) of the objective rows ``J_o`` of ``J``, where the residual
    function forms it more cheaply than the product of that dense block (from ``J``'s structure).
    """

    objective: Tensors
    equalities: Tensors
    inequalities: Tensors
    aux: Any = None
    jacobian: Callable[[], torch.Tensor] | None = None
    objective_gram: Callable[[], torch.Tensor] | None = None


ResidualFn = Callable[[Tensors], Residuals]


@dataclass
class LeastSquaresOutcome:
    """How a solve ended; ``linear_solver`` is the path taken, ``aux`` the residual function's
    :attr:`Residuals.aux` at ``z`` as it returned it (with its graph: detach it to keep it)."""

    z: Tensors
    objective: float
    violation: float
    iterations: int
    status: str  # "solved", "max_iterations", "nfe_limit", "failed"
    message: str
    linear_solver: str  # "dense" or "cg"
    aux: Any


class _Point:
    """The unknowns ``z`` (leaves that require grad) and the residual vector ``R`` at them: the
    objective, equality and inequality blocks flattened and concatenated, with the graph of the
    one pass that computed them (``calls``: the model's forward calls in it).

    Products with ``J = dR/dz`` (``m x n``) go through that graph and are counted; a 2-D argument
    is a batch of directions (first axis), done in one vectorised pass. ``J'w`` (recorded for the
    ``J v`` products) and ``J`` itself are kept, so a multiplier update does not re-linearise.
    """

    def __init__(self, fn: ResidualFn, z: Tensors, counter: NFECounter):
        before = counter.by_kind["forward"]
        with torch.enable_grad():
            self.z = [t.detach().requires_grad_(True) for t in z]
            res = fn(self.z)
            blocks = [_cat(ts) if ts else self.z[0].new_zeros(0) for ts in (res.objective, res.equalities, res.inequalities)]
            self.residual = torch.cat(blocks)
        self.objective, self.equalities, self.inequalities = (b.detach() for b in blocks)
        self.aux = res.aux
        self._structured_jacobian, self._structured_gram = res.jacobian, res.objective_gram
        self.calls = counter.by_kind["forward"] - before
        self.counter = counter
        self._w: torch.Tensor | None = None
        self._jt_w: Tensors = []
        self._jacobian: torch.Tensor | None = None
        self._objective_gram: torch.Tensor | None = None

    def jt(self, v: torch.Tensor) -> torch.Tensor:
        """``J'v`` (``v``: ``m``, or ``k x m``): reverse-mode products."""
        batch = v.shape[0] if v.dim() == 2 else None
        self.counter.add(self.calls * (1 if batch is None else batch), kind="vjp")
        return _cat(_grad([self.residual], self.z, [v], batch=batch), v.shape[:-1]).detach()

    def j(self, v: torch.Tensor) -> torch.Tensor:
        """``J v`` (``v``: ``n``, or ``k x n``): the derivative of ``J'w`` in ``w``."""
        if self._w is None:
            self._w = torch.zeros_like(self.residual, requires_grad=True)
            self._jt_w = _grad([self.residual], self.z, [self._w], create_graph=True)
            self.counter.add(self.calls, kind="vjp")
        batch = v.shape[0] if v.dim() == 2 else None
        self.counter.add(self.calls * (1 if batch is None else batch), kind="jvp")
        (jv,) = _grad(self._jt_w, [self._w], _split(v, self.z), batch=batch)
        return jv.detach()

    def jacobian(self) -> torch.Tensor:
        """``J``: the residual function's own (:attr:`Residuals.jacobian`), or from ``n``
        products ``J e_i`` when ``n <= m``, else ``m`` products ``J' e_j``."""
        if self._jacobian is None:
            n, m = sum(t.numel() for t in self.z), self.residual.numel()
            if self._structured_jacobian is not None:
                self._jacobian = self._structured_jacobian().detach()
            elif n <= m:
                self._jacobian = self.j(torch.eye(n, dtype=self.z[0].dtype, device=self.z[0].device)).T
            else:
                self._jacobian = self.jt(torch.eye(m, dtype=self.residual.dtype, device=self.residual.device))
        return self._jacobian

    def normal_equations(self, r: torch.Tensor, d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(J'Dr, J'D^2 J)``, ``D = diag(d)``, of a merit residual ``r`` with derivative ``d J``
        (:data:`Merit`; ``d`` is 1 on the objective rows, which come first). The objective rows'
        ``J'J``, most of the work and the same for every merit, is formed once per point (by the
        residual function where it offers to, :attr:`Residuals.objective_gram`)."""
        jac, k = self.jacobian(), self.objective.numel()
        if self._objective_gram is None:
            structured = self._structured_jacobian is not None and self._structured_gram is not None
            self._objective_gram = self._structured_gram().detach() if structured else jac[:k].T @ jac[:k]
        constraints = d[k:, None] * jac[k:]
        return jac.T @ (d * r), self._objective_gram + constraints.T @ constraints


Merit = Callable[[_Point], tuple[torch.Tensor, torch.Tensor]]


def solve_least_squares(
    fn: ResidualFn, z0: Tensors, options: LeastSquaresOptions, counter: NFECounter
) -> LeastSquaresOutcome:
    """Minimise ``sum |objective|^2`` subject to ``equalities == 0``, ``inequalities <= 0``."""
    nfe_limit = None if options.max_nfe is None else counter.total + options.max_nfe
    linear_solver = options.linear_solver_for(sum(t.numel() for t in z0))
    evaluate = lambda z: _Point(fn, z, counter)  # noqa: E731
    point = evaluate(z0)
    y_eq = torch.zeros_like(point.equalities)
    y_in = torch.zeros_like(point.inequalities)
    rho = options.penalty
    iterations = 0
    error = _kkt_error(point, y_in, rho)

    def outcome(status: str, message: str) -> LeastSquaresOutcome:
        z = [t.detach().clone() for t in point.z]  # not views of one buffer
        return LeastSquaresOutcome(z, _sumsq(point.objective), _violation(point), iterations, status, message, linear_solver, point.aux)

    for _ in range(options.max_outer):
        merit = _merit(y_eq, y_in, rho)
        point, iterations, status, message = _levenberg_marquardt(
            evaluate, merit, point, options, counter, iterations, nfe_limit, linear_solver == "dense"
        )
        previous, error = error, _kkt_error(point, y_in, rho)
        if status != "solved" or error <= options.constraint_tol:
            return outcome(status, message)
        y_eq = y_eq + rho * point.equalities
        y_in = torch.clamp(y_in + rho * point.inequalities, min=0)
        if error > 0.25 * previous:
            rho *= 10.0
    return outcome("failed", f"constraint violation {_violation(point):.3g} after {options.max_outer} multiplier updates")


def _merit(y_eq: torch.Tensor, y_in: torch.Tensor, rho: float) -> Merit:
    """The residual vector ``r`` the inner solve minimises (objective and penalised constraints)
    as a function of ``R``, elementwise: ``r`` and its derivative ``d``, so ``dr/dz = d J``
    (``r`` is ``R`` itself, ``d`` 1, on the objective rows)."""
    scale = math.sqrt(rho / 2)
    eq_shift, in_shift = y_eq / rho, y_in / rho

    def merit(p: _Point) -> tuple[torch.Tensor, torch.Tensor]:
        shifted = p.inequalities + in_shift
        r = torch.cat([p.objective, scale * (p.equalities + eq_shift), scale * torch.clamp(shifted, min=0)])
        d = torch.cat([torch.ones_like(p.objective), torch.full_like(p.equalities, scale), scale * (shifted >= 0).to(shifted.dtype)])
        return r, d

    return merit


def _levenberg_marquardt(
    evaluate: Callable[[Tensors], _Point],
    merit: Merit,
    point: _Point,
    options: LeastSquaresOptions,
    counter: NFECounter,
    iterations: int,
    nfe_limit: float | None,
    dense: bool,
) -> tuple[_Point, int, str, str]:
    mu = None
    nu = 2.0
    r, d = merit(point)
    linearised = False
    while iterations < options.max_iterations:
        if nfe_limit is not None and counter.total >= nfe_limit:
            return point, iterations, "nfe_limit", f"model-evaluation bound {options.max_nfe:g} reached"
        if not linearised:  # a new point: its cost, gradient (half that of sum |r|^2) and, dense, J'J
            linearised = True
            cost = _sumsq(r)
            if not math.isfinite(cost):
                return point, iterations, "failed", "the residual is not finite"
            if dense:
                g, normal = point.normal_equations(r, d)
            else:
                g = point.jt(d * r)
            g_max = float(g.abs().max()) if g.numel() else 0.0
            if g_max <= options.tol:
                return point, iterations, "solved", "gradient below tolerance"
            z = _cat(point.z).detach()
            if mu is None:
                mu = options.damping * max(g_max, 1.0)
        if dense:
            step = _damped_solve(normal, mu, g)
        else:
            step = _cg(lambda v: point.jt(d * d * point.j(v)) + mu * v, -g, options)
        if _norm(step) <= options.tol * (_norm(z) + options.tol):
            return point, iterations, "solved", "step below tolerance"
        # cost - |r + J s|^2 = s'(mu s - g) when (J'J + mu I) s = -g
        predicted = float(step @ (mu * step - g))
        if predicted <= options.tol * cost:
            return point, iterations, "solved", "predicted decrease below tolerance"
        trial = evaluate(_split(z + step, point.z))
        r_trial, d_trial = merit(trial)
        new_cost = _sumsq(r_trial)
        iterations += 1
        ratio = (cost - new_cost) / predicted
        if math.isfinite(new_cost) and ratio > 0:
            point, r, d, linearised = trial, r_trial, d_trial, False
            mu *= max(1 / 3, 1 - (2 * ratio - 1) ** 3)
            nu = 2.0
            if cost - new_cost <= options.tol * max(cost, 1e-300):
                return point, iterations, "solved", "cost change below tolerance"
        else:
            mu *= nu
            nu *= 2.0
    return point, iterations, "max_iterations", f"{options.max_iterations} Levenberg-Marquardt steps"


def _damped_solve(normal: torch.Tensor, mu: float, g: torch.Tensor) -> torch.Tensor:
    """``(normal + mu I)^-1 (-g)``, ``normal = J'J``: by Cholesky (the matrix is symmetric
    positive definite for ``mu > 0``), by LU where round-off leaves it without a factor."""
    damped = normal.clone()
    damped.diagonal().add_(mu)
    factor, info = torch.linalg.cholesky_ex(damped)
    if int(info) == 0:
        return torch.cholesky_solve(-g[:, None], factor)[:, 0]
    return torch.linalg.solve(damped, -g)


def _grad(
    outputs: Tensors, inputs: Tensors, grad_outputs: Tensors, *, create_graph: bool = False, batch: int | None = None
) -> Tensors:
    """``sum_i grad_outputs_i . d outputs_i / d inputs``; constant outputs and unused inputs count 0.

    With ``batch``, every ``grad_outputs_i`` holds that many directions on a leading axis, and so
    does every result.
    """
    lead = () if batch is None else (batch,)
    pairs = [(o, g) for o, g in zip(outputs, grad_outputs) if o.requires_grad]
    grads = [None] * len(inputs)
    if pairs:
        grads = torch.autograd.grad(
            [o for o, _ in pairs], inputs, [g for _, g in pairs],
            retain_graph=True, create_graph=create_graph, allow_unused=True, is_grads_batched=batch is not None,
        )
    return [x.new_zeros(lead + x.shape) if g is None else g for g, x in zip(grads, inputs)]


def _cg(apply: Callable[[torch.Tensor], torch.Tensor], b: torch.Tensor, options: LeastSquaresOptions) -> torch.Tensor:
    x = torch.zeros_like(b)
    r = b.clone()
    p = b.clone()
    rs = float(r @ r)
    stop = (options.cg_tol**2) * rs
    for _ in range(options.cg_iterations):
        ap = apply(p)
        alpha = rs / float(p @ ap)
        x = x + alpha * p
        r = r - alpha * ap
        rs_new = float(r @ r)
        if rs_new <= stop:
            break
        p = r + (rs_new / rs) * p
        rs = rs_new
    return x


def _cat(ts: Tensors, lead: tuple[int, ...] = ()) -> torch.Tensor:
    """The tensors flattened and concatenated, each keeping its leading (batch) axes ``lead``."""
    return torch.cat([t.reshape(*lead, -1) for t in ts], dim=-1)


def _split(v: torch.Tensor, like: Tensors) -> Tensors:
    """Inverse of :func:`_cat`: views of ``v`` (last axis ``n``) shaped like the tensors ``like``."""
    lead = v.shape[:-1]
    parts = v.split([t.numel() for t in like], dim=-1)
    return [part.reshape(*lead, *t.shape) for part, t in zip(parts, like)]


def _norm(v: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm(v))


def _sumsq(v: torch.Tensor) -> float:
    return float(v.square().sum())


def _violation(p: _Point) -> float:
    """The largest constraint violation: ``|c|`` and ``max(0, g)``."""
    return _max_abs(p.equalities, p.inequalities.clamp(min=0))


def _kkt_error(p: _Point, y_in: torch.Tensor, rho: float) -> float:
    """The violation, and for each inequality how far its multiplier ``y`` is from consistent:
    ``|max(g, -y / rho)|`` is 0 for an active constraint (``g = 0``) and for an inactive one
    without multiplier; an inactive one with ``y > 0`` holds the iterate off its bound."""
    return _max_abs(p.equalities, torch.maximum(p.inequalities, -y_in / rho))


def _max_abs(*vs: torch.Tensor) -> float:
    return max((float(v.abs().max()) for v in vs if v.numel()), default=0.0)
