"""The MPC QP solved through CasADi's ``conic`` interface (plugins osqp, qrqp, qpoases, highs).

The same QP as :mod:`flowctl.mpc.osqp_backend` (pattern from
:class:`flowctl.mpc.qp_layout.QPLayout`), with the box bounds passed as CasADi's simple bounds
``lbx, ubx`` instead of rows of A. ``build()`` creates the conic solver once on the fixed
sparsity of H and A; each ``solve()`` passes the numbers ``h, g, a, lba, uba, lbx, ubx`` (and,
with warm start, the previous primal and dual solution).

Any outcome the plugin does not report as success is a failure, raised as
:class:`flowctl.ocp.SolverError` unless ``raise_on_failure=False``. Some plugins cannot tell an
infeasible problem from a numerical failure (qrqp reports "Failed to calculate search
direction"): those are FAILED, not INFEASIBLE.
"""

from __future__ import annotations

import contextlib
import io
import time
from dataclasses import dataclass, field
from typing import Any

import casadi
import numpy as np
import torch

from ..errors import InvalidArgumentError
from ..status import SolveStatus, finish
from .problem import Linearisation, MPCSolution
from .osqp_backend import OSQPOptions
from .qp_layout import QPLayout
from .sparse_backend import SparseQPBackend, make_solution

PLUGINS = ("osqp", "qrqp", "qpoases", "highs")


@dataclass(frozen=True)
class CasadiQPOptions(OSQPOptions):
    """Options of the CasADi QP backend: :class:`OSQPOptions`' fields, read per plugin, and two more.

    Attributes:
        plugin: CasADi conic plugin, one of "osqp", "qrqp", "qpoases", "highs".
        eps_abs: "osqp": absolute tolerance; "qrqp": constraint violation tolerance (> 0).
        eps_rel: "osqp": relative tolerance; "qrqp": dual infeasibility tolerance (>= 0).
        max_iter: iteration limit ("osqp", "qrqp"; qpOASES's working-set recalculations).
        polish: "osqp": polish the solution.
        warm_start: pass the previous solve's primal (and dual) solution as the initial guess.
        plugin_options: further options for the plugin, merged over these (for "osqp" and
            "highs" into their own option dictionary, otherwise into conic's options).
    """

    plugin: str = "osqp"
    plugin_options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.plugin not in PLUGINS:
            raise InvalidArgumentError("plugin", f"expected one of {PLUGINS}, got {self.plugin!r}")
        super().__post_init__()
        if not isinstance(self.plugin_options, dict):
            raise InvalidArgumentError("plugin_options", f"expected a dict, got {type(self.plugin_options).__name__}")

    def conic_options(self) -> dict[str, Any]:
        """The options dictionary for ``casadi.conic``, printing silenced."""
        opts: dict[str, Any] = {"error_on_fail": False, "print_time": False, "print_problem": False}
        extra = dict(self.plugin_options)
        if self.plugin == "osqp":
            opts["osqp"] = {
                "verbose": False, "eps_abs": self.eps_abs, "eps_rel": self.eps_rel, "max_iter": self.max_iter,
                "polishing": self.polish, **extra,
            }
            opts["warm_start_primal"] = self.warm_start
            opts["warm_start_dual"] = self.warm_start
            return opts
        if self.plugin == "highs":
            opts["highs"] = {"output_flag": False, **extra}
            return opts
        if self.plugin == "qrqp":
            opts.update(
                print_iter=False, print_header=False, print_info=False,
                constr_viol_tol=self.eps_abs, dual_inf_tol=max(self.eps_rel, self.eps_abs), max_iter=self.max_iter,
            )
        else:  # qpoases
            opts.update(printLevel="none", nWSR=self.max_iter)
        opts.update(extra)
        return opts


def _quiet_stdout():
    """Swallow what CasADi prints through Python's stdout (qpOASES prints its banner whatever
    printLevel says)."""
    return contextlib.redirect_stdout(io.StringIO())


def _status(stats: dict[str, Any]) -> tuple[SolveStatus, str]:
    message = str(stats.get("return_status", ""))
    low = message.lower()
    if stats.get("success", False) and "inaccurate" not in low:
        return SolveStatus.SOLVED, message
    if "infeasib" in low:
        return SolveStatus.INFEASIBLE, message
    if stats.get("unified_return_status") == "SOLVER_RET_LIMITED" or ("max" in low and "iter" in low):
        return SolveStatus.MAX_ITERATIONS, message
    return SolveStatus.FAILED, message


def _sparsity(indptr: np.ndarray, indices: np.ndarray, shape: tuple[int, int]) -> casadi.Sparsity:
    return casadi.Sparsity(shape[0], shape[1], indptr.tolist(), indices.tolist())


class CasadiQPBackend(SparseQPBackend):
    """The MPC QP of ``config`` solved by a CasADi conic plugin.

    Args:
        config: sizes, horizons, weights and bounds (fixed at build).
        structure: sparsity of A_i, B_i: "dense", "diagonal" or "block" (then ``block_size``).
        block_size: size of the diagonal blocks for structure="block".
        options: :class:`CasadiQPOptions` (plugin "osqp" by default).
        pattern: for structure="dense" only: ``(a_mask, b_mask)``, boolean (nx, nx) and (nx, nu)
            tensors of the entries of A_i, B_i that may be nonzero (as
            :class:`flowctl.mpc.osqp_backend.OSQPBackend`); a linearisation with a nonzero outside
            them is refused.

    Attributes:
        build_time: seconds :meth:`build` took (None before it).

    ``MPCSolution.iterations`` is the plugin's ``iter_count``; CasADi's osqp plugin does not
    report one and gives -1.
    """

    options_type = CasadiQPOptions

    _solver: casadi.Function | None = None
    _warm: dict[str, casadi.DM] | None = None

    def build(self) -> None:
        """Assemble the QP's pattern and create the conic solver (once; a second call rebuilds)."""
        t0 = time.perf_counter()
        layout = QPLayout(self.config, self.structure, self.block_size, bounds_as_rows=False, pattern=self.pattern)
        n, m = layout.n, layout.m
        self._h_sp = _sparsity(layout.p_full[0], layout.p_full[1], (n, n))
        self._a_sp = _sparsity(layout.a_indptr, layout.a_indices, (m, n))
        self._h = casadi.DM(self._h_sp, layout.p_full[2])
        self._lbx, self._ubx = casadi.DM(layout.lbx), casadi.DM(layout.ubx)
        quiet = _quiet_stdout() if self.options.plugin == "qpoases" else contextlib.nullcontext()
        with quiet:
            self._solver = casadi.conic("qp", self.options.plugin, {"h": self._h_sp, "a": self._a_sp}, self.options.conic_options())
        self.layout, self._warm = layout, None
        self.build_time = time.perf_counter() - t0

    def solve(
        self, lin: Linearisation, x0: torch.Tensor, reference: torch.Tensor, u_prev: torch.Tensor, *, raise_on_failure: bool = True,
    ) -> MPCSolution:
        """Solve the step's QP (building first if :meth:`build` was not called); arguments as
        :meth:`flowctl.mpc.osqp_backend.OSQPBackend.solve`."""
        if self._solver is None:
            self.build()
        layout = self.layout
        d = layout.numbers(lin, x0, reference, u_prev)  # checked: typed errors name the argument
        layout.check_matrices(d.a, d.b)
        ax, q, lower, upper = layout.step_data(d)
        layout.check_lengths(ax, q, lower, upper)
        args = {
            "h": self._h, "g": casadi.DM(q), "a": casadi.DM(self._a_sp, ax),
            "lba": casadi.DM(lower), "uba": casadi.DM(upper), "lbx": self._lbx, "ubx": self._ubx,
        }
        if self.options.warm_start and self._warm is not None:
            args.update(self._warm)
        quiet = _quiet_stdout() if self.options.plugin == "qpoases" else contextlib.nullcontext()
        t0 = time.perf_counter()
        with quiet:
            out = self._solver(**args)
        solve_time = time.perf_counter() - t0
        stats = self._solver.stats()
        status, message = _status(stats)
        z = np.asarray(out["x"], dtype=np.float64).reshape(-1)
        solution = make_solution(layout, d, z, status, message, int(stats.get("iter_count", -1)), solve_time)
        self._warm = {"x0": out["x"], "lam_x0": out["lam_x"], "lam_a0": out["lam_a"]} if solution.success else None
        return finish(solution, raise_on_failure)
