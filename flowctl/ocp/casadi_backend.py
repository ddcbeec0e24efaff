"""CasADi/IPOPT backend: the symbolic backend for small :class:`ControlSystem` problems.

One CasADi function ``F(x, u, t, t_next) -> (x_next, q)`` integrates an interval (the problem's
``substeps`` RK steps, ``q`` the running cost by the method's quadrature). Single shooting has
the controls as unknowns and rolls ``x_{k+1} = F(x_k, u_k)`` out symbolically (state bounds
become constraints ``g``); multiple shooting adds the node states ``x_1..x_N`` as unknowns with
continuity defects ``F(x_k, u_k) - x_{k+1} = 0`` (state bounds become variable bounds).
The initial state is an NLP parameter, so one build serves every ``x0``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import casadi
import numpy as np
import torch

from .._checks import check_int, check_real, check_tensor
from ..errors import InvalidArgumentError, ShapeError, UnknownNameError
from ..sampling import get_tableau, rk_step
from ..systems import ControlSystem
from ..status import SolveStatus, finish
from .problem import TRANSCRIPTIONS, OptimalControlProblem, SolveResult, substep_times

_STATUS = {
    "Solve_Succeeded": SolveStatus.SOLVED,
    "Solved_To_Acceptable_Level": SolveStatus.SOLVED,
    "Maximum_Iterations_Exceeded": SolveStatus.MAX_ITERATIONS,
    "Infeasible_Problem_Detected": SolveStatus.INFEASIBLE,
}
# IPOPT warm start from the previous primal-dual solution: the duals are used, barely pushed
# into the interior, with a small barrier. Measured on Van der Pol re-solves with x0 moved by
# 1e-3..5e-2, iterations: multiple shooting 3-4 (primal warm start alone 9-11, cold 14-15),
# single shooting 5-15 (primal alone 14-20, cold 45-54).
WARM_IPOPT = {
    "warm_start_init_point": "yes",
    "warm_start_bound_push": 1e-9,
    "warm_start_mult_bound_push": 1e-9,
    "mu_init": 1e-6,
}


@dataclass(frozen=True)
class CasadiOptions:
    """Settings of :class:`CasadiShooting`.

    Attributes:
        tol: IPOPT's convergence tolerance ``tol`` (> 0).
        max_iterations: IPOPT's ``max_iter`` (>= 1).
        print_level: IPOPT's ``print_level`` (0..12); 0 is silent, banner and timings included.
        warm_start: start each solve after a successful one from its primal-dual solution
            (a second IPOPT instance with warm-start settings, built alongside the cold one).
        expand: evaluate the NLP on CasADi SX rather than MX: slower build, faster solves.
        ipopt: further IPOPT options passed through unchanged (they override the ones above).
    """

    tol: float = 1e-10
    max_iterations: int = 1000
    print_level: int = 0
    warm_start: bool = True
    expand: bool = True
    ipopt: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_real("tol", self.tol, positive=True)
        check_int("max_iterations", self.max_iterations, minimum=1)
        if check_int("print_level", self.print_level, minimum=0) > 12:
            raise InvalidArgumentError("print_level", f"must be <= 12, got {self.print_level}")
        for name in ("warm_start", "expand"):
            if not isinstance(getattr(self, name), bool):
                raise InvalidArgumentError(name, f"expected a bool, got {getattr(self, name)!r}")
        if not isinstance(self.ipopt, dict) or not all(isinstance(k, str) for k in self.ipopt):
            raise InvalidArgumentError("ipopt", "expected a dict of IPOPT option names to values")
        object.__setattr__(self, "ipopt", dict(self.ipopt))


class CasadiShooting:
    """Single or multiple shooting of an input-controlled problem, solved by IPOPT.

    Args:
        problem: a problem with ``control="input"`` and a :class:`ControlSystem` as dynamics.
        transcription: "single" or "multiple".
        options: solver settings.

    :meth:`build` (done by the first :meth:`solve` if not called) creates the NLP once and
    records its duration in ``build_time``; :meth:`solve` only passes numbers.
    """

    def __init__(
        self,
        problem: OptimalControlProblem,
        transcription: str = "multiple",
        options: CasadiOptions = CasadiOptions(),
    ):
        if not (
            isinstance(problem, OptimalControlProblem)
            and problem.control == "input"
            and isinstance(problem.dynamics, ControlSystem)
        ):
            raise InvalidArgumentError(
                "problem", "the CasADi backend (small symbolic systems) needs control='input', a ControlSystem"
            )
        if transcription not in TRANSCRIPTIONS:
            raise UnknownNameError("transcription", transcription, list(TRANSCRIPTIONS))
        if not isinstance(options, CasadiOptions):
            raise InvalidArgumentError("options", f"expected CasadiOptions, got {type(options).__name__}")
        self.problem, self.transcription, self.options = problem, transcription, options
        self.nx, self.nu, self.N = problem.dynamics.n_state, problem.dynamics.n_control, problem.intervals
        self._x0 = self._check_x0(problem.x0)
        self.build_time: float | None = None
        self._solver = None
        self._last: dict | None = None

    def _check_x0(self, x0: torch.Tensor) -> np.ndarray:
        check_tensor("x0", x0, ndim_min=1)
        if tuple(x0.shape) != (self.nx,):
            raise ShapeError("x0", f"expected shape ({self.nx},), got {tuple(x0.shape)}")
        return x0.detach().cpu().double().numpy()

    def _interval_function(self) -> casadi.Function:
        p, tab = self.problem, get_tableau(self.problem.method)
        x, u = casadi.SX.sym("x", self.nx), casadi.SX.sym("u", self.nu)
        t0, t1 = casadi.SX.sym("t"), casadi.SX.sym("t_next")
        times = substep_times(t0, t1, p.substeps)
        xk, q = x, casadi.SX(0)
        for ta, tb in zip(times[:-1], times[1:]):
            xk, stages = rk_step(tab, lambda s, t: p.dynamics.f(s, u, t), xk, ta, tb)
            if p.stage_residual is not None:
                r2 = [s.weight * casadi.sumsqr(p.stage_residual(s.x, u, s.t)) for s in stages]
                q += casadi.fabs(tb - ta) * sum(r2)
        return casadi.Function("F", [x, u, t0, t1], [xk, q], ["x", "u", "t", "t_next"], ["x_next", "q"])

    def build(self) -> None:
        """Create the CasADi NLP and the IPOPT solver (once)."""
        start = time.perf_counter()
        p, N, nx, nu = self.problem, self.N, self.nx, self.nu
        F = self._F = self._interval_function()
        t = p.grid.values.double().numpy().reshape(1, N + 1)
        self._times = (t[:, :-1], t[:, 1:])  # interval start and end times, one column per interval
        x0 = casadi.MX.sym("x0", nx)
        lu, uu = _bound(p.u_lower, nu, -np.inf), _bound(p.u_upper, nu, np.inf)
        lx, ux = _bound(p.x_lower, nx, -np.inf), _bound(p.x_upper, nx, np.inf)
        if self.transcription == "single":
            w = casadi.MX.sym("w", nu * N)
            U = casadi.reshape(w, nu, N)
            X, Q = F.mapaccum(N)(x0, U, *self._times)
            rows = [i for i in range(nx) if np.isfinite(lx[i]) or np.isfinite(ux[i])]
            g = casadi.vec(X[rows, :])
            self._lbw, self._ubw = np.tile(lu, N), np.tile(uu, N)
            self._lbg, self._ubg = np.tile(lx[rows], N), np.tile(ux[rows], N)
        else:
            w = casadi.MX.sym("w", (nu + nx) * N)  # interleaved u_0, x_1, u_1, x_2, ..., u_{N-1}, x_N
            W = casadi.reshape(w, nu + nx, N)
            U, X = W[:nu, :], W[nu:, :]
            X_end, Q = F.map(N)(casadi.horzcat(x0, X[:, :-1]), U, *self._times)
            g = casadi.vec(X_end - X)
            self._lbw, self._ubw = np.tile(np.concatenate([lu, lx]), N), np.tile(np.concatenate([uu, ux]), N)
            self._lbg = self._ubg = np.zeros(nx * N)
        J = casadi.sum2(Q)
        if p.control_weight:
            J += p.control_weight * casadi.sumsqr(U)
        if p.control_rate_weight and N > 1:
            J += p.control_rate_weight * casadi.sumsqr(U[:, 1:] - U[:, :-1])
        if p.terminal_residual is not None and p.terminal_weight:
            J += p.terminal_weight * casadi.sumsqr(p.terminal_residual(X[:, -1]))
        self._states = casadi.Function("states", [w, x0], [casadi.horzcat(x0, X)])
        nlp = {"x": w, "p": x0, "f": J, "g": g}
        if self.options.expand:  # SX evaluation: slower build, faster solves (measured)
            fn = casadi.Function("nlp", [w, x0], [J, g]).expand()
            ws, ps = casadi.SX.sym("w", w.shape[0]), casadi.SX.sym("x0", nx)
            nlp = dict(zip(("x", "p", "f", "g"), (ws, ps, *fn(ws, ps))))
        self._solver = self._nlpsol(nlp, {})
        self._warm_solver = self._nlpsol(nlp, WARM_IPOPT) if self.options.warm_start else None
        self.build_time = time.perf_counter() - start

    def _nlpsol(self, nlp: dict, extra: dict) -> casadi.Function:
        o = self.options
        ipopt = {"tol": o.tol, "max_iter": o.max_iterations, "print_level": o.print_level, "sb": "yes"}
        opts = {"ipopt." + k: v for k, v in {**ipopt, **extra, **o.ipopt}.items()}
        opts.update(print_time=o.print_level > 0, error_on_fail=False)
        return casadi.nlpsol("shooting", "ipopt", nlp, opts)

    def _initial_guess(self, x0: np.ndarray) -> np.ndarray:
        if self.transcription == "single":
            return np.zeros(self.nu * self.N)
        X = self._F.mapaccum(self.N)(x0, np.zeros((self.nu, self.N)), *self._times)[0].full()
        X = np.where(np.isfinite(X), X, 0.0)
        return np.vstack([np.zeros((self.nu, self.N)), X]).T.ravel()

    def solve(self, x0: torch.Tensor | None = None, *, raise_on_failure: bool = True) -> SolveResult:
        """Solve from ``x0`` (default: the problem's), warm-started from the previous solve if enabled.

        Raises:
            SolverError: IPOPT did not succeed (unless ``raise_on_failure`` is False).
        """
        x0_np = self._x0 if x0 is None else self._check_x0(x0)
        if self._solver is None:
            self.build()
        args = {"p": x0_np, "lbx": self._lbw, "ubx": self._ubw, "lbg": self._lbg, "ubg": self._ubg}
        warm = self.options.warm_start and self._last is not None
        solver = self._warm_solver if warm else self._solver
        args.update(self._last if warm else {"x0": self._initial_guess(x0_np)})
        start = time.perf_counter()
        sol = solver(**args)
        wall = time.perf_counter() - start
        stats = solver.stats()
        w, g = sol["x"].full().ravel(), sol["g"].full().ravel()
        status = _STATUS.get(stats["return_status"], SolveStatus.FAILED)
        # Warm start only from a solution; a failed solve's iterate is no better than the cold guess.
        solved = status is SolveStatus.SOLVED
        self._last = {"x0": w, "lam_x0": sol["lam_x"], "lam_g0": sol["lam_g"]} if solved else None
        violation = np.max(np.concatenate([[0.0], self._lbw - w, w - self._ubw, self._lbg - g, g - self._ubg]))
        controls = w.reshape(self.N, -1)[:, : self.nu]
        states = self._states(w, x0_np).full().T
        result = SolveResult(
            status=status,
            controls=torch.from_numpy(controls.copy()),
            states=torch.from_numpy(states.copy()),
            objective=float(sol["f"]),
            constraint_violation=float(violation),
            iterations=int(stats.get("iter_count", 0)),
            nfe={},
            wall_time=wall,
            message=stats["return_status"],
        )
        return finish(result, raise_on_failure)


def _bound(value, n: int, default: float) -> np.ndarray:
    """A problem bound (None, number or tensor) as a float64 array of length n; None -> default."""
    if value is None:
        return np.full(n, default)
    return torch.broadcast_to(torch.as_tensor(value, dtype=torch.float64), (n,)).numpy().copy()
