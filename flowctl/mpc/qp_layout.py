"""The sparse QP of :mod:`flowctl.mpc.problem`: its fixed pattern and each step's numbers,
shared by the OSQP and CasADi backends.

Decision variables ``z = (x_1, .., x_Np, u_0, .., u_{Nc-1})`` (n = Np nx + Nc nu). The QP is
written as OSQP and CasADi's ``conic`` take it::

    minimise 0.5 z' P z + q' z   subject to   l <= A z <= u   (and lbx <= z <= ubx),

with ``0.5 z' P z + q' z`` equal to half the docstring's cost minus a constant (the argmin is
the same; backends report :func:`flowctl.mpc.problem.objective`, the full cost). P is fixed
by the weights; q changes with the reference and ``u_{-1}``.

Rows of A: first the dynamics, ``A_i x_i - x_{i+1} + B_i u_{min(i, Nc-1)} = -c_i`` for
i = 0..Np-1 (for i = 0 ``A_0 x_0`` moves to the right-hand side), then, with
``bounds_as_rows``, one row per finite control bound component of u_0..u_{Nc-1} and per finite
state bound component of x_1..x_Np (a component with only one finite side still gets a row,
the other side +-inf). Without ``bounds_as_rows`` the bounds are ``lbx, ubx`` (CasADi's conic
takes simple bounds separately).

The sparsity pattern is built once, from index triplets straight to CSC: never from a dense
matrix, where structural entries whose value happens to be zero would vanish from the pattern.
For each step the values of A_1..A_{Np-1} and B_0..B_{Np-1}, flattened in the linearisation's
own layout ("dense" (nx, nx)/(nx, nu) matrices, "diagonal" vectors, "block" (nb, bs, bs)
blocks), are written into the CSC value array by one precomputed scatter.

A "dense" QP may be given a structural sparsity pattern ``(a_mask, b_mask)``: boolean (nx, nx)
and (nx, nu) masks of the entries of A_i and B_i that may be nonzero. Only those entries enter
A's pattern (OSQP's factorisation then works on the true sparsity, as OSQP's own examples do);
an entry outside the mask that is nonzero in a step's linearisation would be silently dropped
by the solver, so :meth:`QPLayout.check_matrices` refuses it by name ("linearisation").
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from .._checks import check_int
from ..errors import InvalidArgumentError, NonFiniteError, ShapeError
from .problem import STRUCTURES, Linearisation, MPCConfig, check_step_data


def check_structure(config: MPCConfig, structure: str, block_size: int | None) -> int | None:
    """Validate a backend's ``structure`` and ``block_size`` against ``config``; return the block size."""
    if structure not in STRUCTURES:
        raise InvalidArgumentError("structure", f"expected one of {STRUCTURES}, got {structure!r}")
    if structure != "dense" and config.nu != config.nx:
        raise InvalidArgumentError("structure", f"{structure!r} needs nu == nx, got nu {config.nu}, nx {config.nx}")
    if structure == "block":
        if block_size is None:
            raise InvalidArgumentError("block_size", "is required with structure='block'")
        bs = check_int("block_size", block_size, minimum=1)
        if config.nx % bs:
            raise InvalidArgumentError("block_size", f"must divide nx = {config.nx}, got {bs}")
        return bs
    if block_size is not None:
        raise InvalidArgumentError("block_size", f"only applies to structure='block', got structure={structure!r}")
    return None


def check_pattern(config: MPCConfig, structure: str, pattern: object) -> tuple[np.ndarray, np.ndarray] | None:
    """Validate a backend's ``pattern``: None, or with structure "dense" a pair ``(a_mask, b_mask)``
    of boolean tensors (or numpy arrays) of shapes (nx, nx) and (nx, nu). Returns numpy copies."""
    if pattern is None:
        return None
    if structure != "dense":
        raise InvalidArgumentError("pattern", f"only applies to structure='dense', got structure={structure!r}")
    if not isinstance(pattern, (tuple, list)) or len(pattern) != 2:
        raise InvalidArgumentError("pattern", f"expected a pair (a_mask, b_mask), got {type(pattern).__name__}")
    masks = []
    for which, mask, shape in (("a_mask", pattern[0], (config.nx, config.nx)), ("b_mask", pattern[1], (config.nx, config.nu))):
        if isinstance(mask, torch.Tensor):
            if mask.dtype != torch.bool:
                raise InvalidArgumentError("pattern", f"{which} must be a boolean tensor, got dtype {mask.dtype}")
            mask = mask.detach().cpu().numpy()
        elif isinstance(mask, np.ndarray):
            if mask.dtype != np.bool_:
                raise InvalidArgumentError("pattern", f"{which} must be boolean, got dtype {mask.dtype}")
        else:
            raise InvalidArgumentError("pattern", f"{which}: expected a boolean torch.Tensor, got {type(mask).__name__}")
        if mask.shape != shape:
            raise ShapeError("pattern", f"{which} must have shape {shape}, got {tuple(mask.shape)}")
        masks.append(np.array(mask, dtype=bool))
    return masks[0], masks[1]


def check_linearisation(
    config: MPCConfig, structure: str, block_size: int | None,
    lin: Linearisation, x0: torch.Tensor, reference: torch.Tensor, u_prev: torch.Tensor,
) -> None:
    """:func:`check_step_data`, then that ``lin`` has the structure the QP was built for."""
    check_step_data(config, lin, x0, reference, u_prev)
    if lin.structure != structure:
        raise InvalidArgumentError(
            "linearisation", f"has structure {lin.structure!r}; the backend was built for {structure!r}"
        )
    if structure == "block" and lin.a.shape[-1] != block_size:
        raise ShapeError(
            "linearisation", f"has blocks of size {lin.a.shape[-1]}; the backend was built for {block_size}"
        )


def all_finite(v: np.ndarray) -> bool:
    """Whether the float64 array ``v`` holds no NaN or Inf (elementwise: no BLAS call, which a
    multithreaded BLAS was measured to make 7.7 ms for 12,288 entries on a 2-core machine, and no
    overflow warning for huge finite values)."""
    return bool(np.isfinite(v).all())


def _numpy(t: torch.Tensor) -> np.ndarray:
    """``t`` as a float64 numpy array: a view for a float64 CPU tensor without grad, else a copy."""
    if t.dtype is torch.float64:
        try:
            return t.numpy()  # refuses (RuntimeError / TypeError) a tensor with grad or off the CPU
        except (RuntimeError, TypeError):
            pass
    return t.detach().to(device="cpu", dtype=torch.float64).numpy()


def csc_from_triplets(rows: np.ndarray, cols: np.ndarray, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """CSC pattern of the entries (rows[t], cols[t]): ``(indptr, indices, position)``.

    ``position[t]`` is the index of triplet t in the CSC value array; row indices are sorted
    within each column. Every triplet is a structural entry, whatever value it later holds.
    """
    rows = np.asarray(rows, dtype=np.int64)
    cols = np.asarray(cols, dtype=np.int64)
    order = np.lexsort((rows, cols))
    r, c = rows[order], cols[order]
    if r.size > 1 and bool(((np.diff(c) == 0) & (np.diff(r) == 0)).any()):
        raise RuntimeError("duplicate entries in a QP sparsity pattern (internal error)")
    indptr = np.zeros(shape[1] + 1, dtype=np.int64)
    np.cumsum(np.bincount(c, minlength=shape[1]), out=indptr[1:])
    position = np.empty_like(order)
    position[order] = np.arange(order.size)
    return indptr, r, position


def _local_pattern(structure: str, nx: int, nu: int, bs: int | None, which: str, mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(row, col) within one step's A_i (which="a") or B_i ("b"), in the tensor's C order
    (for "dense" with a ``mask``, only the mask's entries, in C order)."""
    if structure == "dense":
        if mask is not None:
            return np.nonzero(mask)
        ncol = nx if which == "a" else nu
        r, c = np.divmod(np.arange(nx * ncol), ncol)
        return r, c
    if structure == "diagonal":
        k = np.arange(nx)
        return k, k
    nb = nx // bs
    blk, rem = np.divmod(np.arange(nb * bs * bs), bs * bs)
    r, c = np.divmod(rem, bs)
    return blk * bs + r, blk * bs + c


class StepNumbers(NamedTuple):
    """One step's data as float64 numpy arrays, in the linearisation's layout (a named tuple:
    cheaper to make than a dataclass on the per-step path)."""

    a: np.ndarray
    b: np.ndarray
    c: np.ndarray
    x0: np.ndarray
    reference: np.ndarray
    u_prev: np.ndarray



class QPLayout:
    """The QP's fixed pattern and the per-step assembly of its numbers.

    Attributes:
        n, m: variables and rows of A; ``n_dyn = Np nx`` dynamics rows come first.
        n_states: Np nx, the offset of u_0 in z.
        p_upper, p_full: P as ``(indptr, indices, data)`` CSC, upper triangle / both triangles.
        a_indptr, a_indices: A's CSC pattern; ``a_template`` its values with the constant entries
            (-1 of the dynamics, 1 of the bound rows) filled in and 0 where A_i, B_i go.
        l_template, u_template: row bounds with the bound rows filled in.
        lbx, ubx: simple bounds on z (+-inf with ``bounds_as_rows``).
        pattern: ``(a_mask, b_mask)`` numpy boolean masks of a "dense" QP built with a structural
            sparsity pattern, else None.
    """

    def __init__(
        self, config: MPCConfig, structure: str, block_size: int | None, *,
        bounds_as_rows: bool, all_state_rows: bool = False, pattern: object = None,
    ):
        self.config = config
        self.structure = structure
        self.block_size = check_structure(config, structure, block_size)
        self.pattern = check_pattern(config, structure, pattern)
        nx, nu, np_, nc = config.nx, config.nu, config.horizon, config.control_horizon
        if structure == "dense":
            self.a_shape, self.b_shape = (np_, nx, nx), (np_, nx, nu)
        elif structure == "diagonal":
            self.a_shape = self.b_shape = (np_, nx)
        else:
            self.a_shape = self.b_shape = (np_, nx // self.block_size, self.block_size, self.block_size)
        self.c_shape = (np_, nx)
        # entries of A_i, B_i (flat, C order) taken into the QP / required to be zero
        self._a_take = self._b_take = self._a_off = self._b_off = None
        if self.pattern is not None:
            a_mask, b_mask = self.pattern
            self._a_take, self._b_take = np.flatnonzero(a_mask), np.flatnonzero(b_mask)
            self._a_off, self._b_off = np.flatnonzero(~a_mask), np.flatnonzero(~b_mask)
        self.n_states = np_ * nx
        self.n = self.n_states + nc * nu
        self.n_dyn = np_ * nx
        n = self.n

        # ---- P (constant): tracking weights on x_1..x_Np; R and the rate term on u.
        Q, QN, R, S = (w.numpy() for w in (config.Q, config.QN, config.R, config.S))
        xdiag = np.concatenate([np.tile(Q, np_ - 1), QN])
        count = np.full(nc, 2.0)
        count[-1] = 1.0  # u_j sits in the rate terms j and j+1 (j + 1 <= Nc - 1)
        udiag = (R[None, :] + count[:, None] * S[None, :]).ravel()
        diag_idx = np.arange(n)
        ks = np.flatnonzero(S)  # components with a rate weight: off-diagonals -S_k
        j = np.arange(nc - 1)
        off_r = (self.n_states + j[:, None] * nu + ks[None, :]).ravel()
        off_c = off_r + nu
        off_v = np.tile(-S[ks], nc - 1)
        p_rows = np.concatenate([diag_idx, off_r])
        p_cols = np.concatenate([diag_idx, off_c])
        p_vals = np.concatenate([xdiag, udiag, off_v])
        self.p_upper = self._csc(p_rows, p_cols, p_vals, (n, n))
        self.p_full = self._csc(
            np.concatenate([p_rows, off_c]), np.concatenate([p_cols, off_r]), np.concatenate([p_vals, off_v]), (n, n)
        )

        # ---- A: dynamics rows.
        rows, cols, vals = [], [], []
        eye = np.arange(np_ * nx)  # -x_{i+1} in row block i: row i nx + k, column of x_{i+1} = i nx + k
        rows.append(eye), cols.append(eye), vals.append(np.full(eye.size, -1.0))
        a_mask, b_mask = self.pattern if self.pattern is not None else (None, None)
        ar, ac = _local_pattern(structure, nx, nu, self.block_size, "a", a_mask)
        br, bc = _local_pattern(structure, nx, nu, self.block_size, "b", b_mask)
        steps_a = np.arange(1, np_)  # A_0 multiplies the measured x_0: right-hand side
        a_rows = (steps_a[:, None] * nx + ar[None, :]).ravel()
        a_cols = ((steps_a[:, None] - 1) * nx + ac[None, :]).ravel()
        steps_b = np.arange(np_)
        ju = np.minimum(steps_b, nc - 1)
        b_rows = (steps_b[:, None] * nx + br[None, :]).ravel()
        b_cols = (self.n_states + ju[:, None] * nu + bc[None, :]).ravel()
        start_a = eye.size
        start_b = start_a + a_rows.size
        rows += [a_rows, b_rows]
        cols += [a_cols, b_cols]
        vals += [np.zeros(a_rows.size), np.zeros(b_rows.size)]

        # ---- bounds: rows of A, or simple bounds on z.
        umin, umax, xmin, xmax = (t.numpy() for t in (config.umin, config.umax, config.xmin, config.xmax))
        zmin = np.concatenate([np.tile(xmin, np_), np.tile(umin, nc)])
        zmax = np.concatenate([np.tile(xmax, np_), np.tile(umax, nc)])
        lo, hi = [np.full(self.n_dyn, 0.0)], [np.full(self.n_dyn, 0.0)]
        if bounds_as_rows:
            finite = np.isfinite(zmin) | np.isfinite(zmax)
            if all_state_rows:
                finite[: self.n_states] = True
            bounded = np.flatnonzero(finite)
            brow = self.n_dyn + np.arange(bounded.size)
            rows.append(brow), cols.append(bounded), vals.append(np.ones(bounded.size))
            lo.append(zmin[bounded]), hi.append(zmax[bounded])
            self.lbx, self.ubx = np.full(n, -np.inf), np.full(n, np.inf)
        else:
            self.lbx, self.ubx = zmin, zmax
        self.l_template = np.concatenate(lo)
        self.u_template = np.concatenate(hi)
        self.m = self.l_template.size

        rows_all, cols_all, vals_all = (np.concatenate(v) for v in (rows, cols, vals))
        self.a_indptr, self.a_indices, position = csc_from_triplets(rows_all, cols_all, (self.m, n))
        self.a_template = np.empty(position.size)
        self.a_template[position] = vals_all
        self.a_pos = position[start_a:start_b].reshape(np_ - 1, ar.size)
        self.b_pos = position[start_b : start_b + b_rows.size].reshape(np_, br.size)
        self.nnz_a = position.size

        self._neg_q_weights = -np.concatenate([np.tile(Q, (np_ - 1, 1)), QN[None]])  # (Np, nx)
        self._neg_S = -S

    @staticmethod
    def _csc(rows, cols, vals, shape):
        indptr, indices, position = csc_from_triplets(rows, cols, shape)
        data = np.empty(position.size)
        data[position] = vals
        return indptr, indices, data

    # ---- per step -------------------------------------------------------------------------

    def numbers(self, lin: Linearisation, x0: torch.Tensor, reference: torch.Tensor, u_prev: torch.Tensor) -> StepNumbers:
        """The step's data checked and converted to float64 numpy arrays.

        Raises the errors of :func:`check_linearisation` (a typed error naming the argument: wrong
        type, structure, shape, or NaN / Inf in ``x0``, ``reference``, ``u_prev`` or ``lin.c``).
        The usual case costs a few attribute checks and one ``np.isfinite`` over the converted
        vectors (:func:`check_linearisation` costs about 20 us); when that fails, the full check
        runs and raises the precise error. A_i, B_i are checked by :meth:`check_matrices`.
        """
        if not (
            isinstance(lin, Linearisation) and lin.structure == self.structure
            and lin.a.shape == self.a_shape and lin.b.shape == self.b_shape and lin.c.shape == self.c_shape
            and isinstance(x0, torch.Tensor) and isinstance(reference, torch.Tensor) and isinstance(u_prev, torch.Tensor)
            and x0.shape == self.c_shape[1:] and reference.shape == self.c_shape and u_prev.shape == (self.config.nu,)
            and x0.is_floating_point() and reference.is_floating_point() and u_prev.is_floating_point()
        ):
            self._refuse(lin, x0, reference, u_prev)
        d = StepNumbers(_numpy(lin.a), _numpy(lin.b), _numpy(lin.c), _numpy(x0), _numpy(reference), _numpy(u_prev))
        if not all_finite(np.concatenate((d.x0, d.reference.reshape(-1), d.u_prev, d.c.reshape(-1)))):
            self._refuse(lin, x0, reference, u_prev)
        return d

    def _refuse(self, lin, x0, reference, u_prev) -> None:
        """Raise the precise error for data that failed :meth:`numbers`' quick test."""
        check_linearisation(self.config, self.structure, self.block_size, lin, x0, reference, u_prev)
        for name, t in (("x0", x0), ("reference", reference), ("u_prev", u_prev)):
            if not t.is_floating_point():
                raise InvalidArgumentError(name, f"expected a real floating-point tensor, got dtype {t.dtype}")
        if not bool(torch.isfinite(lin.c).all()):
            raise NonFiniteError("linearisation", "c contains NaN or Inf (changed in place after construction?)")
        raise InvalidArgumentError("linearisation", "the step's data do not fit the QP built (no precise check failed)")

    def check_matrices(self, a: np.ndarray, b: np.ndarray) -> None:
        """Refuse A_i, B_i (float64, the linearisation's layout) holding NaN or Inf, or, with a
        ``pattern``, a nonzero outside it (the solver would silently drop it)."""
        if not (np.isfinite(a).all() and np.isfinite(b).all()):
            raise NonFiniteError("linearisation", "a or b contains NaN or Inf (changed in place after construction?)")
        if self.pattern is None:
            return
        np_ = self.config.horizon
        for which, m, off, mask in (("A", a, self._a_off, self.pattern[0]), ("B", b, self._b_off, self.pattern[1])):
            outside = m.reshape(np_, -1)[:, off]
            if np.count_nonzero(outside):
                i, k = np.argwhere(outside)[0]
                row, col = np.argwhere(~mask)[k]
                raise InvalidArgumentError(
                    "linearisation",
                    f"{which}_{i} has the nonzero {m[i, row, col]:.6g} at ({row}, {col}), outside the sparsity "
                    "pattern the backend was built with (the solver would silently ignore it); "
                    "build with a pattern that covers it",
                )

    def matrix_values(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """A's CSC values for A_i (Np, ...) and B_i (Np, ...) in the linearisation's layout."""
        values = self.a_template.copy()
        np_ = self.config.horizon
        if np_ > 1:
            a_flat = a[1:].reshape(np_ - 1, -1)
            values[self.a_pos] = a_flat if self._a_take is None else a_flat[:, self._a_take]
        b_flat = b.reshape(np_, -1)
        values[self.b_pos] = b_flat if self._b_take is None else b_flat[:, self._b_take]
        return values

    def linear_cost(self, reference: np.ndarray, u_prev: np.ndarray) -> np.ndarray:
        """q: -Q_i r_i on the states, -S u_{-1} on u_0."""
        q = np.zeros(self.n)
        ns, nu = self.n_states, self.config.nu
        np.multiply(self._neg_q_weights, reference, out=q[:ns].reshape(reference.shape))
        np.multiply(self._neg_S, u_prev, out=q[ns : ns + nu])
        return q

    def vectors(self, d: StepNumbers) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(q, l, u)`` of one step: :meth:`linear_cost`, and the row bounds with the dynamics
        rows' right-hand sides ``-c_i``, and ``-c_0 - A_0 x_0`` for the first, written in place."""
        nd, nx = self.n_dyn, self.config.nx
        lower = self.l_template.copy()
        rhs = lower[:nd]
        np.negative(d.c.reshape(-1), out=rhs)
        a0, x0 = d.a[0], d.x0
        if self.structure == "dense":
            rhs[:nx] -= a0.dot(x0)
        elif self.structure == "diagonal":
            rhs[:nx] -= a0 * x0
        else:
            bs = self.block_size
            rhs[:nx] -= np.matmul(a0, x0.reshape(-1, bs, 1)).reshape(nx)
        upper = self.u_template.copy()
        upper[:nd] = rhs
        return self.linear_cost(d.reference, d.u_prev), lower, upper

    def step_data(self, d: StepNumbers) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """``(Ax, q, l, u)`` of one step (A_i, B_i as given: see :meth:`check_matrices`)."""
        return (self.matrix_values(d.a, d.b), *self.vectors(d))

    def check_lengths(self, ax: np.ndarray, q: np.ndarray, lower: np.ndarray, upper: np.ndarray) -> None:
        """Raise :class:`ShapeError` unless the update arrays fit the pattern built."""
        for name, arr, size in (("Ax", ax, self.nnz_a), ("q", q, self.n), ("l", lower, self.m), ("u", upper, self.m)):
            if arr.ndim != 1 or arr.shape[0] != size:
                raise ShapeError(name, f"QP update expects length {size}, got shape {arr.shape}")

    def controls(self, z: np.ndarray) -> np.ndarray:
        """u_0..u_{Nc-1} from z, (Nc, nu)."""
        cfg = self.config
        return np.array(z[self.n_states :], dtype=np.float64).reshape(cfg.control_horizon, cfg.nu)

