"""Linear MPC: the QP every backend solves, its data and its solution.

At each step the controller linearises the dynamics along the current path as
``x_{i+1} = A_i x_i + B_i u_i + c_i`` (i = 0..Np-1) and solves::

    minimise   sum_{i=1}^{Np} |x_i - r_i|^2_{Q_i} + sum_{j=0}^{Nc-1} (|u_j|^2_R + |u_j - u_{j-1}|^2_S)
    subject to the linear dynamics from the measured x_0,
               u_i = u_{Nc-1} for i >= Nc (control horizon Nc <= Np),
               u_lower <= u_j <= u_upper,  x_lower <= x_i <= x_upper (i = 1..Np),

with ``Q_i = Q`` except ``Q_Np = Q_N``, ``u_{-1}`` the control applied last, and diagonal
weights ``|v|^2_W = sum_k W_k v_k^2``. States and controls are flat vectors (nx,), (nu,).

A linearisation has one of three structures: "dense" (A_i, B_i full matrices), "diagonal"
(A_i, B_i diagonal, nu == nx: the QP separates into nx scalar problems) and "block"
(block-diagonal A_i, B_i with square blocks, nu == nx: it separates into one problem per block).
"""

from __future__ import annotations

import functools

import math
from dataclasses import dataclass, field
from functools import cached_property

import torch

from .._checks import check_int, check_real_values, check_tensor
from ..errors import InvalidArgumentError, ShapeError
from ..status import SolveStatus

STRUCTURES = ("dense", "diagonal", "block")


def _vector(name: str, value: float | torch.Tensor | None, n: int, *, default: float | None = None) -> torch.Tensor | None:
    """``value`` as a float64 (n,) vector (numbers broadcast); None stays None unless defaulted."""
    if value is None:
        if default is None:
            return None
        value = default
    v = check_real_values(name, value).detach().to("cpu", torch.float64)
    if v.dim() > 1 or (v.dim() == 1 and v.numel() != n):
        raise ShapeError(name, f"expected a number or shape ({n},), got {tuple(v.shape)}")
    if bool(torch.isnan(v).any()):
        raise InvalidArgumentError(name, "contains NaN")
    return v.expand(n).clone()


@dataclass(frozen=True, eq=False)
class MPCConfig:
    """Sizes, horizons, weights and bounds of the QP (fixed at build time).

    Attributes:
        nx, nu: state and control sizes.
        horizon: prediction horizon Np (>= 1).
        control_horizon: Nc, 1 <= Nc <= Np; None for Np.
        q, r, s: diagonal weights Q (state tracking), R (control), S (control rate); numbers or
            vectors, each >= 0 and finite; ``r + s`` must be > 0 for a strictly convex QP.
        q_terminal: Q_N for the last predicted state; None for ``q``.
        u_lower, u_upper, x_lower, x_upper: box bounds, numbers or vectors; None or +-inf for none.
    """

    nx: int
    nu: int
    horizon: int
    control_horizon: int | None = None
    q: float | torch.Tensor = 1.0
    r: float | torch.Tensor = 1.0
    s: float | torch.Tensor = 0.0
    q_terminal: float | torch.Tensor | None = None
    u_lower: float | torch.Tensor | None = None
    u_upper: float | torch.Tensor | None = None
    x_lower: float | torch.Tensor | None = None
    x_upper: float | torch.Tensor | None = None
    Q: torch.Tensor = field(init=False, repr=False)
    QN: torch.Tensor = field(init=False, repr=False)
    R: torch.Tensor = field(init=False, repr=False)
    S: torch.Tensor = field(init=False, repr=False)
    umin: torch.Tensor = field(init=False, repr=False)
    umax: torch.Tensor = field(init=False, repr=False)
    xmin: torch.Tensor = field(init=False, repr=False)
    xmax: torch.Tensor = field(init=False, repr=False)

    def __post_init__(self) -> None:
        nx, nu = check_int("nx", self.nx, minimum=1), check_int("nu", self.nu, minimum=1)
        np_ = check_int("horizon", self.horizon, minimum=1)
        nc = np_ if self.control_horizon is None else check_int("control_horizon", self.control_horizon, minimum=1)
        if nc > np_:
            raise InvalidArgumentError("control_horizon", f"must be <= horizon ({np_}), got {nc}")
        object.__setattr__(self, "control_horizon", nc)
        for name, attr, n, default in (
            ("q", "Q", nx, None), ("r", "R", nu, None), ("s", "S", nu, None), ("q_terminal", "QN", nx, None),
        ):
            raw = getattr(self, name)
            if name == "q_terminal" and raw is None:
                raw = self.q
            w = _vector(name, raw, n)
            if w is None or not bool(torch.isfinite(w).all()) or bool((w < 0).any()):
                raise InvalidArgumentError(name, "weights must be finite and >= 0")
            object.__setattr__(self, attr, w)
        if not bool((self.R + self.S > 0).all()):
            raise InvalidArgumentError("r", "r + s must be > 0 in every component (strictly convex QP)")
        for lo_name, hi_name, lo_attr, hi_attr, n in (
            ("u_lower", "u_upper", "umin", "umax", nu), ("x_lower", "x_upper", "xmin", "xmax", nx),
        ):
            lo = _vector(lo_name, getattr(self, lo_name), n, default=-math.inf)
            hi = _vector(hi_name, getattr(self, hi_name), n, default=math.inf)
            if bool((lo > hi).any()):
                raise InvalidArgumentError(lo_name, f"exceeds {hi_name}: the bounds are infeasible")
            object.__setattr__(self, lo_attr, lo)
            object.__setattr__(self, hi_attr, hi)
        for name in ("has_state_bounds", "has_control_bounds"):
            getattr(self, name)  # read once here (cached), never in a solver's loop

    @functools.cached_property
    def has_state_bounds(self) -> bool:
        return bool(torch.isfinite(self.xmin).any() or torch.isfinite(self.xmax).any())

    @functools.cached_property
    def has_control_bounds(self) -> bool:
        return bool(torch.isfinite(self.umin).any() or torch.isfinite(self.umax).any())


@dataclass(frozen=True, eq=False)
class Linearisation:
    """``x_{i+1} = A_i x_i + B_i u_i + c_i`` for i = 0..Np-1 (float64 or float32 tensors).

    Attributes:
        a, b: "dense": (Np, nx, nx) and (Np, nx, nu); "diagonal": (Np, nx) each, the diagonals;
            "block": (Np, nb, bs, bs) each, the diagonal blocks (nx = nb * bs).
        c: (Np, nx) affine terms.
        structure: "dense", "diagonal" or "block".
    """

    a: torch.Tensor
    b: torch.Tensor
    c: torch.Tensor
    structure: str = "dense"

    def __post_init__(self) -> None:
        if self.structure not in STRUCTURES:
            raise InvalidArgumentError("structure", f"expected one of {STRUCTURES}, got {self.structure!r}")
        for name in ("a", "b", "c"):
            check_tensor(name, getattr(self, name), ndim_min=2)
        if self.c.dim() != 2:
            raise ShapeError("c", f"expected (Np, nx) affine terms, got {tuple(self.c.shape)}")
        np_, nx = self.c.shape
        expected = {
            "dense": ((np_, nx, nx), (np_, nx, None)),
            "diagonal": ((np_, nx), (np_, nx)),
            "block": ((np_, None, None, None), (np_, None, None, None)),
        }[self.structure]
        for name, shape in zip(("a", "b"), expected):
            t = getattr(self, name)
            if t.dim() != len(shape) or any(e is not None and e != d for e, d in zip(shape, t.shape)):
                raise ShapeError(name, f"{self.structure} linearisation expects shape {shape} (None: any), got {tuple(t.shape)}")
        if self.structure == "block":
            if self.a.shape[2] != self.a.shape[3] or self.a.shape[1] * self.a.shape[2] != nx or self.b.shape != self.a.shape:
                raise ShapeError("a", f"blocks of a and b must be square and tile nx = {nx}: got {tuple(self.a.shape)}, {tuple(self.b.shape)}")

    @classmethod
    def unchecked(cls, a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, structure: str) -> Linearisation:
        """A linearisation built without the checks (no host synchronisation), for callers in a
        controller's loop that built ``a, b, c`` from data they checked once."""
        lin = object.__new__(cls)
        for name, value in (("a", a), ("b", b), ("c", c), ("structure", structure)):
            object.__setattr__(lin, name, value)
        return lin

    @property
    def horizon(self) -> int:
        return self.c.shape[0]

    @property
    def nx(self) -> int:
        return self.c.shape[1]

    @property
    def nu(self) -> int:
        return self.b.shape[-1] if self.structure == "dense" else self.nx

    def dense(self) -> tuple[torch.Tensor, torch.Tensor]:
        """A_i and B_i as full (Np, nx, nx) and (Np, nx, nu) matrices (small systems only)."""
        if self.structure == "dense":
            return self.a, self.b
        if self.structure == "diagonal":
            return torch.diag_embed(self.a), torch.diag_embed(self.b)
        return _block_diag(self.a), _block_diag(self.b)


def _block_diag(blocks: torch.Tensor) -> torch.Tensor:
    return torch.stack([torch.block_diag(*step) for step in blocks])


def check_step_data(config: MPCConfig, lin: Linearisation, x0: torch.Tensor, reference: torch.Tensor, u_prev: torch.Tensor) -> None:
    """Raise a typed error unless the step's data fit ``config``."""
    if not isinstance(lin, Linearisation):
        raise InvalidArgumentError("linearisation", f"expected a Linearisation, got {type(lin).__name__}")
    if lin.horizon != config.horizon or lin.nx != config.nx or lin.nu != config.nu:
        raise ShapeError(
            "linearisation",
            f"has horizon {lin.horizon}, nx {lin.nx}, nu {lin.nu}; the controller was built for "
            f"{config.horizon}, {config.nx}, {config.nu}",
        )
    for name, t, shape in (("x0", x0, (config.nx,)), ("reference", reference, (config.horizon, config.nx)), ("u_prev", u_prev, (config.nu,))):
        check_tensor(name, t, ndim_min=1)
        if tuple(t.shape) != shape:
            raise ShapeError(name, f"expected shape {shape}, got {tuple(t.shape)}")


def objective(config: MPCConfig, x: torch.Tensor, u: torch.Tensor, reference: torch.Tensor, u_prev: torch.Tensor) -> float:
    """The QP's cost at predicted states ``x`` (Np + 1, nx) and controls ``u`` (Nc, nu),
    computed in x's dtype on x's device."""
    like = dict(dtype=x.dtype, device=x.device)
    u, reference, u_prev = u.to(**like), reference.to(**like), u_prev.to(**like)
    err = (x[1:] - reference).square()
    tracking = (config.Q.to(**like) * err[:-1]).sum() + (config.QN.to(**like) * err[-1]).sum()
    du = u - torch.cat([u_prev[None], u[:-1]])
    return float(tracking + (config.R.to(**like) * u.square()).sum() + (config.S.to(**like) * du.square()).sum())


@dataclass(frozen=True, eq=False)
class MPCSolution:
    """One QP solve.

    Attributes:
        status: SOLVED, or why not (then a backend raises :class:`flowctl.ocp.SolverError`).
        controls: (Nc, nu) optimal controls; the controller applies ``controls[0]``.
        states: (Np + 1, nx) predicted states, ``states[0] = x0``. Float64 on the CPU from the
            OSQP and CasADi backends; the linearisation's dtype and device from the structured one.
        iterations: solver iterations (0 for a direct solve, -1 where the solver does not say).
        solve_time: seconds spent in the solve.
        message: the solver's own words.
        config, reference, u_prev: the step's QP data, kept for :attr:`objective`.
    """

    status: SolveStatus
    controls: torch.Tensor
    states: torch.Tensor
    iterations: int
    solve_time: float
    message: str
    config: MPCConfig
    reference: torch.Tensor
    u_prev: torch.Tensor

    @property
    def success(self) -> bool:
        return self.status is SolveStatus.SOLVED

    @cached_property
    def objective(self) -> float:
        """The QP's cost at this solution (:func:`objective`), computed when first asked for."""
        return objective(self.config, self.states, self.controls, self.reference, self.u_prev)


def predict(lin: Linearisation, x0: torch.Tensor, controls: torch.Tensor) -> torch.Tensor:
    """Predicted states (Np + 1, nx) under ``controls`` (Nc, nu), the last held to Np."""
    xs = [x0]
    for i in range(lin.horizon):
        x, u = xs[-1], controls[min(i, controls.shape[0] - 1)]
        if lin.structure == "dense":
            nxt = lin.a[i] @ x + lin.b[i] @ u
        elif lin.structure == "diagonal":
            nxt = lin.a[i] * x + lin.b[i] * u
        else:
            bs = lin.a.shape[-1]
            nxt = (lin.a[i] @ x.reshape(-1, bs, 1) + lin.b[i] @ u.reshape(-1, bs, 1)).reshape(-1)
        xs.append(nxt + lin.c[i])
    return torch.stack(xs)
