"""The MPC QP solved by OSQP (osqp >= 1.0), pattern fixed at build, numbers updated per step.

``build()`` assembles the QP's sparsity pattern once (:class:`flowctl.mpc.qp_layout.QPLayout`)
and sets OSQP up; ``solve()`` checks the step's data, and when A_i, B_i differ from the last
step's (compared bit for bit, so a change made in place is seen) checks them (finite, inside the
``pattern`` if one was given) and writes them into A's value array with one precomputed
scatter; it checks every update's length itself (OSQP only prints on a wrong length and then
solves the old problem), updates ``q, l, u`` (and ``Ax`` when the matrices changed: an ``Ax``
update makes OSQP re-scale and re-factorise), and solves. While A_i, B_i stay the same, the
predicted states of the solution come from one product with a cached prediction matrix
(:func:`flowctl.mpc.qp_prediction.prediction_matrix`, "dense" problems of moderate size).

A "dense" backend built with ``pattern=(a_mask, b_mask)`` puts only the mask's entries of A_i,
B_i in the QP (OSQP's own examples pass only the nonzeros of their matrices); a linearisation
with a nonzero outside the mask is refused (:class:`flowctl.errors.InvalidArgumentError` naming
"linearisation"), since OSQP would silently ignore that entry.

Any status other than "solved" is a failure (raised as :class:`flowctl.ocp.SolverError` unless
``raise_on_failure=False``): "solved inaccurate" is never reported as solved.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import osqp
import scipy.sparse as spa
import torch

from .._checks import check_int, check_real
from ..errors import InvalidArgumentError
from ..status import SolveStatus, finish
from .problem import Linearisation, MPCSolution
from .qp_layout import QPLayout
from .qp_prediction import prediction_matrix
from .sparse_backend import SparseQPBackend, make_solution


@dataclass(frozen=True)
class OSQPOptions:
    """OSQP settings.

    Attributes:
        eps_abs: absolute tolerance of OSQP's termination test (> 0).
        eps_rel: relative tolerance of OSQP's termination test (>= 0).
        max_iter: ADMM iteration limit (>= 1); reaching it is a failure (MAX_ITERATIONS).
        polish: refine the ADMM solution by solving the active set's KKT system.
        warm_start: start each solve from the previous solve's primal and dual iterate; False
            starts every solve from zero (OSQP's cold start).
    """

    eps_abs: float = 1e-8
    eps_rel: float = 1e-8
    max_iter: int = 10000
    polish: bool = True
    warm_start: bool = True

    def __post_init__(self) -> None:
        check_real("eps_abs", self.eps_abs, positive=True)
        check_real("eps_rel", self.eps_rel, nonnegative=True)
        check_int("max_iter", self.max_iter, minimum=1)
        for name in ("polish", "warm_start"):
            if not isinstance(getattr(self, name), bool):
                raise InvalidArgumentError(name, f"expected a bool, got {getattr(self, name)!r}")


_S = osqp.SolverStatus
_STATUS = {
    int(_S.OSQP_SOLVED): SolveStatus.SOLVED,
    int(_S.OSQP_PRIMAL_INFEASIBLE): SolveStatus.INFEASIBLE,
    int(_S.OSQP_PRIMAL_INFEASIBLE_INACCURATE): SolveStatus.INFEASIBLE,
    int(_S.OSQP_DUAL_INFEASIBLE): SolveStatus.INFEASIBLE,
    int(_S.OSQP_DUAL_INFEASIBLE_INACCURATE): SolveStatus.INFEASIBLE,
    int(_S.OSQP_MAX_ITER_REACHED): SolveStatus.MAX_ITERATIONS,
}


def osqp_status(status_val: int) -> SolveStatus:
    """OSQP's status value as a :class:`SolveStatus`: "solved inaccurate", time limit and the
    rest are FAILED."""
    return _STATUS.get(int(status_val), SolveStatus.FAILED)


class OSQPBackend(SparseQPBackend):
    """The MPC QP of ``config`` solved by OSQP.

    Args:
        config: sizes, horizons, weights and bounds (fixed at build).
        structure: sparsity of A_i, B_i: "dense", "diagonal" or "block" (then ``block_size``);
            every linearisation given to :meth:`solve` must have it.
        block_size: size of the diagonal blocks for structure="block".
        options: :class:`OSQPOptions`.
        pattern: for structure="dense" only: ``(a_mask, b_mask)``, boolean (nx, nx) and (nx, nu)
            tensors marking the entries of A_i, B_i that may be nonzero in any step (the
            structural sparsity, e.g. ``(Ad != 0, Bd != 0)``); None puts every entry in the QP.

    Attributes:
        build_time: seconds :meth:`build` took (None before it).
        layout: the QP's pattern (:class:`flowctl.mpc.qp_layout.QPLayout`), None before build.
    """

    options_type = OSQPOptions

    _solver: osqp.OSQP | None = None
    _last: tuple[tuple[bytes, bytes], np.ndarray] | None = None  # (a, b) bytes, Ax in OSQP
    _prediction: np.ndarray | None = None  # prediction_matrix(layout, ...) of the A_i, B_i in _last

    def build(self) -> None:
        """Assemble the QP's pattern and set OSQP up (once; a second call rebuilds)."""
        t0 = time.perf_counter()
        layout = QPLayout(self.config, self.structure, self.block_size, bounds_as_rows=True, pattern=self.pattern)
        n, m = layout.n, layout.m
        P = spa.csc_matrix((layout.p_upper[2], layout.p_upper[1], layout.p_upper[0]), shape=(n, n))
        A = spa.csc_matrix((layout.a_template, layout.a_indices, layout.a_indptr), shape=(m, n))
        solver = osqp.OSQP()
        opts = self.options
        solver.setup(
            P, np.zeros(n), A, layout.l_template.copy(), layout.u_template.copy(),
            eps_abs=opts.eps_abs, eps_rel=opts.eps_rel, max_iter=opts.max_iter,
            polishing=opts.polish, warm_starting=opts.warm_start, verbose=False,
        )
        self.layout, self._solver, self._last, self._prediction = layout, solver, None, None
        self.build_time = time.perf_counter() - t0

    def solve(
        self, lin: Linearisation, x0: torch.Tensor, reference: torch.Tensor, u_prev: torch.Tensor, *, raise_on_failure: bool = True,
    ) -> MPCSolution:
        """Solve the step's QP (building first if :meth:`build` was not called).

        Args:
            lin: the linearisation along the current path, of the backend's structure.
            x0: (nx,) measured state.
            reference: (Np, nx) targets r_1..r_Np.
            u_prev: (nu,) the control applied last (u_{-1} of the rate term).
            raise_on_failure: raise :class:`flowctl.ocp.SolverError` unless solved. With False,
                check ``status``: the controls of a failed solve are OSQP's last iterate (for an
                infeasible QP, meaningless numbers), not a plan to apply.
        """
        if self._solver is None:
            self.build()
        layout, solver = self.layout, self._solver
        d = layout.numbers(lin, x0, reference, u_prev)  # checked: typed errors name the argument
        q, lower, upper = layout.vectors(d)
        a, b, last = d.a, d.b, self._last
        # the same A_i, B_i as last step? (compared bit for bit: a -0.0 for a 0.0 counts as a change)
        key = (a.tobytes(), b.tobytes())
        if last is not None and key == last[0]:
            layout.check_lengths(last[1], q, lower, upper)
            solver.update(q=q, l=lower, u=upper)
            if self._prediction is None:  # the same A_i, B_i twice: worth the prediction matrix
                self._prediction = prediction_matrix(layout, a, b)
        else:
            self._prediction = None
            layout.check_matrices(a, b)
            ax = layout.matrix_values(a, b)
            layout.check_lengths(ax, q, lower, upper)
            if last is not None and np.array_equal(ax, last[1]):  # only A_0 changed: no refactorisation
                solver.update(q=q, l=lower, u=upper)
            else:
                solver.update(Ax=ax, q=q, l=lower, u=upper)
            self._last = (key, ax)
        t0 = time.perf_counter()
        result = solver.solve(raise_error=False)
        solve_time = time.perf_counter() - t0

        info = result.info
        solution = make_solution(
            layout, d, np.asarray(result.x), osqp_status(info.status_val), str(info.status), info.iter, solve_time, self._prediction,
        )
        if not solution.success and self.options.warm_start:
            # Do not warm start the next solve from a failed iterate.
            solver.warm_start(x=np.zeros(layout.n), y=np.zeros(layout.m))
        return finish(solution, raise_on_failure)
