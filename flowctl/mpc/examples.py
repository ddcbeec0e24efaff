"""Example MPC problems with published data, shared by the tests and the benchmarks.

:func:`quadcopter` is OSQP's MPC example (https://osqp.org/docs/examples/mpc.html): a linearised
quadcopter, nx = 12, nu = 4, horizon N = 10, regulated from hover at the origin to altitude 1.
Its numbers are copied exactly from that page (``Ad``, ``Bd``, ``u0 = 10.5916``, the bounds,
``Q = diag(0, 0, 10, 10, 10, 10, 0, 0, 0, 5, 5, 5)``, ``QN = Q``, ``R = 0.1 I``, ``x0 = 0``,
``xr = (0, 0, 1, 0, ..., 0)``, 15 closed-loop steps). Only the entries printed as nonzero are
structural: ``Bd``'s entries written ``-0.0`` and ``0.0000`` are zeros, as in OSQP's own
``sparse.csc_matrix(Bd)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
from scipy import sparse

from .controller import TimeInvariantModel
from .problem import MPCConfig

_AD = [
    [1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.1, 0.0, 0.0, 0.0, 0.0, 0.0],
    [0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.1, 0.0, 0.0, 0.0, 0.0],
    [0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.1, 0.0, 0.0, 0.0],
    [0.0488, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0016, 0.0, 0.0, 0.0992, 0.0, 0.0],
    [0.0, -0.0488, 0.0, 0.0, 1.0, 0.0, 0.0, -0.0016, 0.0, 0.0, 0.0992, 0.0],
    [0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0992],
    [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0],
    [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0],
    [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0],
    [0.9734, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0488, 0.0, 0.0, 0.9846, 0.0, 0.0],
    [0.0, -0.9734, 0.0, 0.0, 0.0, 0.0, 0.0, -0.0488, 0.0, 0.0, 0.9846, 0.0],
    [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.9846],
]
_BD = [
    [0.0, -0.0726, 0.0, 0.0726],
    [-0.0726, 0.0, 0.0726, 0.0],
    [-0.0152, 0.0152, -0.0152, 0.0152],
    [-0.0, -0.0006, -0.0, 0.0006],
    [0.0006, 0.0, -0.0006, 0.0000],
    [0.0106, 0.0106, 0.0106, 0.0106],
    [0, -1.4512, 0.0, 1.4512],
    [-1.4512, 0.0, 1.4512, 0.0],
    [-0.3049, 0.3049, -0.3049, 0.3049],
    [-0.0, -0.0236, 0.0, 0.0236],
    [0.0236, 0.0, -0.0236, 0.0],
    [0.2107, 0.2107, 0.2107, 0.2107],
]
_U0 = 10.5916


@dataclass(frozen=True, eq=False)
class LinearMPCExample:
    """A time-invariant linear MPC problem ``x+ = Ad x + Bd u`` (float64 CPU tensors).

    Attributes:
        name: where the problem comes from.
        ad, bd: (nx, nx) and (nx, nu) system matrices.
        a_mask, b_mask: boolean masks of ``ad``'s and ``bd``'s nonzeros (the structural sparsity,
            for a "dense" backend's ``pattern``).
        q, q_terminal: (nx,) diagonals of the state weights Q and Q_N.
        r: (nu,) diagonal of the control weight R.
        u_lower, u_upper: (nu,) input bounds (deviations from the trim input).
        x_lower, x_upper: (nx,) state bounds, +-inf where a component is free.
        reference: (nx,) the target state, the same at every step of the horizon.
        x0: (nx,) the initial state.
        horizon: prediction horizon N.
        steps: closed-loop steps the example runs.
    """

    name: str
    ad: torch.Tensor
    bd: torch.Tensor
    a_mask: torch.Tensor
    b_mask: torch.Tensor
    q: torch.Tensor
    q_terminal: torch.Tensor
    r: torch.Tensor
    u_lower: torch.Tensor
    u_upper: torch.Tensor
    x_lower: torch.Tensor
    x_upper: torch.Tensor
    reference: torch.Tensor
    x0: torch.Tensor
    horizon: int
    steps: int

    @property
    def nx(self) -> int:
        return self.ad.shape[0]

    @property
    def nu(self) -> int:
        return self.bd.shape[1]

    @property
    def pattern(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(a_mask, b_mask)``, the ``pattern`` argument of a "dense" OSQP or CasADi backend."""
        return self.a_mask, self.b_mask

    def config(self) -> MPCConfig:
        """The example's QP as an :class:`MPCConfig` (no control-rate term)."""
        return MPCConfig(
            nx=self.nx, nu=self.nu, horizon=self.horizon, q=self.q, q_terminal=self.q_terminal, r=self.r, s=0.0,
            u_lower=self.u_lower, u_upper=self.u_upper, x_lower=self.x_lower, x_upper=self.x_upper,
        )

    def model(self) -> TimeInvariantModel:
        """``Ad``, ``Bd`` at every step of the horizon, tracking ``reference``."""
        return TimeInvariantModel(self.ad, self.bd, self.reference, self.horizon)

    def plant(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """One step of the (linear) plant: ``Ad x + Bd u``."""
        return self.ad @ x + self.bd @ u

    def osqp_form(self) -> OSQPForm:
        """The example's QP as OSQP's documentation writes it, for comparisons with OSQP itself:
        unknowns ``(x_0, .., x_N, u_0, .., u_{N-1})``, ``x_0`` pinned by the first ``nx`` rows of
        ``l = u`` (``-x0``; update them to move it), every bound a row."""
        ad, bd, n, nx, nu = self.ad.numpy(), self.bd.numpy(), self.horizon, self.nx, self.nu
        q, qn, xr = sparse.diags(self.q.numpy()), sparse.diags(self.q_terminal.numpy()), self.reference.numpy()
        p = sparse.block_diag([sparse.kron(sparse.eye(n), q), qn, sparse.kron(sparse.eye(n), sparse.diags(self.r.numpy()))], format="csc")
        lin = np.hstack([np.kron(np.ones(n), -q @ xr), -qn @ xr, np.zeros(n * nu)])
        ax = sparse.kron(sparse.eye(n + 1), -sparse.eye(nx)) + sparse.kron(sparse.eye(n + 1, k=-1), sparse.csc_matrix(ad))
        bu = sparse.kron(sparse.vstack([sparse.csc_matrix((1, n)), sparse.eye(n)]), sparse.csc_matrix(bd))
        a = sparse.vstack([sparse.hstack([ax, bu]), sparse.eye((n + 1) * nx + n * nu)], format="csc")
        eq = np.hstack([-self.x0.numpy(), np.zeros(n * nx)])
        lower = np.hstack([eq, np.kron(np.ones(n + 1), self.x_lower.numpy()), np.kron(np.ones(n), self.u_lower.numpy())])
        upper = np.hstack([eq, np.kron(np.ones(n + 1), self.x_upper.numpy()), np.kron(np.ones(n), self.u_upper.numpy())])
        return OSQPForm(p, lin, a, lower, upper, slice((n + 1) * nx, (n + 1) * nx + nu))


class OSQPForm(NamedTuple):
    """``minimise 0.5 z' P z + q' z  subject to  l <= A z <= u`` (scipy CSC matrices, numpy
    vectors); ``first_control``: where ``u_0`` sits in ``z``."""

    P: sparse.csc_matrix
    q: np.ndarray
    A: sparse.csc_matrix
    l: np.ndarray  # noqa: E741 (OSQP's name)
    u: np.ndarray
    first_control: slice


def quadcopter() -> LinearMPCExample:
    """OSQP's quadcopter MPC example (fresh tensors on every call)."""
    f64 = {"dtype": torch.float64}
    ad, bd = torch.tensor(_AD, **f64), torch.tensor(_BD, **f64)
    inf = math.inf
    return LinearMPCExample(
        name="OSQP's MPC example (quadcopter)",
        ad=ad,
        bd=bd,
        a_mask=ad != 0,
        b_mask=bd != 0,
        q=torch.tensor([0.0, 0.0, 10.0, 10.0, 10.0, 10.0, 0.0, 0.0, 0.0, 5.0, 5.0, 5.0], **f64),
        q_terminal=torch.tensor([0.0, 0.0, 10.0, 10.0, 10.0, 10.0, 0.0, 0.0, 0.0, 5.0, 5.0, 5.0], **f64),
        r=torch.full((4,), 0.1, **f64),
        u_lower=torch.full((4,), 9.6, **f64) - _U0,
        u_upper=torch.full((4,), 13.0, **f64) - _U0,
        x_lower=torch.tensor([-math.pi / 6, -math.pi / 6, -inf, -inf, -inf, -1.0] + [-inf] * 6, **f64),
        x_upper=torch.tensor([math.pi / 6, math.pi / 6] + [inf] * 10, **f64),
        reference=torch.tensor([0.0, 0.0, 1.0] + [0.0] * 9, **f64),
        x0=torch.zeros(12, **f64),
        horizon=10,
        steps=15,
    )
