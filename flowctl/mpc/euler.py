"""MPC linearisations of a flow's controlled Euler step, built from a Jacobian estimate.

The controlled step on a sampler grid (sigma = 1 is noise, 0 is data; ``ds_i = sigma_{i+1} -
sigma_i < 0``) is ``x_{i+1} = x_i + ds_i (v(x_i) + ubar_i + u_i)``, with ``ubar_i`` the planned
controls (e.g. from shooting; zero if none) and ``u_i`` the MPC's correction. Linearised about
the current state ``xbar`` with its velocity ``vbar = v(xbar)`` and a Jacobian estimate ``J``,
both held over the horizon::

    x_{i+1} = (I + ds_i J) x_i + ds_i u_i + ds_i (vbar - J xbar + ubar_i),

that is ``A_i = I + ds_i J``, ``B_i = ds_i I``, ``c_i = ds_i (vbar - J xbar + ubar_i)``: a
:class:`~flowctl.mpc.Linearisation` that every backend consumes unchanged ("diagonal" from a
diagonal estimate, "block" from a block estimate).

Layout: a block estimate's blocks act on scattered flat entries (``estimate.index``, e.g. the
channels and pixels of one latent patch); the "block" linearisation needs them contiguous, so it
is written in the permuted layout ``flat[order]``, ``order = index.reshape(-1)``. The caller maps
the QP's data into that layout and the solution out of it with :class:`StateLayout`::

    layout = StateLayout.of(estimate)
    lin = euler_linearisation(estimate, ds, v, x, planned)
    sol = StructuredBackend(config, "block", block_size=layout.block_size).solve(
        lin, layout.permute(x.reshape(-1)), layout.permute(reference), layout.permute(u_prev))
    u = layout.unpermute(sol.controls[0]).reshape(x.shape)

A diagonal estimate's layout is the identity (``permute`` and ``unpermute`` return their input).
States, velocities and controls are flattened in row-major order, the estimate's flat order.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .._checks import check_int, check_tensor
from ..errors import InvalidArgumentError, ShapeError
from ..jacobians import JacobianEstimate
from .problem import Linearisation

STRUCTURES = ("diagonal", "block")


def _check_estimate(estimate: object) -> JacobianEstimate:
    if not isinstance(estimate, JacobianEstimate):
        raise InvalidArgumentError("estimate", f"expected a JacobianEstimate, got {type(estimate).__name__}")
    if estimate.structure not in STRUCTURES:
        raise InvalidArgumentError(
            "estimate", f"an MPC linearisation needs a 'diagonal' or 'block' estimate, got {estimate.structure!r}")
    return estimate


@dataclass(frozen=True, eq=False)
class StateLayout:
    """The order of flat state entries in a linearisation built from ``estimate``.

    Attributes:
        n: number of state entries.
        block_size: side of the linearisation's square blocks (1 for a diagonal one).
        order: (n,) with ``permuted[k] = flat[order[k]]``; None for the identity.
    """

    n: int
    block_size: int
    order: torch.Tensor | None = None

    def __post_init__(self) -> None:
        check_int("n", self.n, minimum=1)
        check_int("block_size", self.block_size, minimum=1)
        if self.order is not None and tuple(self.order.shape) != (self.n,):
            raise ShapeError("order", f"expected shape ({self.n},), got {tuple(self.order.shape)}")

    @classmethod
    def of(cls, estimate: JacobianEstimate) -> StateLayout:
        """The layout of :func:`euler_linearisation` for this diagonal or block estimate."""
        e = _check_estimate(estimate)
        if e.structure == "diagonal":
            return cls(e.n, 1)
        return cls(e.n, e.data.shape[-1], e.index.reshape(-1))

    def _check(self, name: str, v: torch.Tensor) -> torch.Tensor:
        v = check_tensor(name, v, ndim_min=1, finite=False)  # a permutation does not read values
        if v.shape[-1] != self.n:
            raise ShapeError(name, f"expected flat vectors (..., {self.n}), got {tuple(v.shape)}")
        return v

    def permute(self, v: torch.Tensor) -> torch.Tensor:
        """Flat vectors (..., n) in the state's row-major order -> the linearisation's layout."""
        v = self._check("v", v)
        return v if self.order is None else v[..., self.order.to(v.device)]

    def unpermute(self, v: torch.Tensor) -> torch.Tensor:
        """Flat vectors (..., n) in the linearisation's layout -> the state's row-major order."""
        v = self._check("v", v)
        if self.order is None:
            return v
        out = torch.empty_like(v)
        out[..., self.order.to(v.device)] = v
        return out


def euler_linearisation(
    estimate: JacobianEstimate,
    ds: torch.Tensor,
    velocity: torch.Tensor,
    state: torch.Tensor,
    planned: torch.Tensor | None = None,
    *,
    dtype: torch.dtype | None = None,
    validate: bool = True,
) -> Linearisation:
    """The linearised controlled Euler steps over a horizon of ``Np = len(ds)`` steps.

    Args:
        estimate: a "diagonal" or "block" Jacobian estimate of ``v`` at ``state``.
        ds: (Np,) step sizes ``sigma_{i+1} - sigma_i`` (negative on a sampler grid).
        velocity: ``v(state)``, any shape with n entries (e.g. the latent's (1, C, H, W)).
        state: the linearisation point ``xbar``, n entries.
        planned: None, or the planned controls ``ubar_i`` (Np, n) or (Np, *state.shape), in the
            state's own (unpermuted) order.
        dtype: the linearisation's floating dtype; None for the estimate's (a half-precision
            model's estimate needs float32 or float64 here: the backends invert blocks).
        validate: check that the tensors are finite (each check synchronises with the device);
            False in a controller's loop over data it checked once (shapes are still checked).

    Returns:
        A ``Linearisation`` in ``dtype``, on the estimate's device, in :class:`StateLayout`'s
        layout: "diagonal" with ``a, b, c`` of shape (Np, n); "block" with ``a, b`` of shape
        (Np, nb, bs, bs) and ``c`` (Np, n). ``b`` is a read-only broadcast view (ds_i I).
    """
    e = _check_estimate(estimate)
    layout, n = StateLayout.of(e), e.n
    if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise InvalidArgumentError("dtype", f"expected a floating torch.dtype or None, got {dtype!r}")
    data = e.data if dtype is None else e.data.to(dtype)
    like = dict(dtype=data.dtype, device=data.device)
    ds = check_tensor("ds", torch.as_tensor(ds, **like), ndim_min=1, finite=validate)
    if ds.dim() != 1:
        raise ShapeError("ds", f"expected a vector of step sizes (Np,), got {tuple(ds.shape)}")
    np_ = ds.shape[0]
    flat = {}
    for name, t in (("velocity", velocity), ("state", state)):
        t = check_tensor(name, t, finite=validate)
        if t.numel() != n:
            raise ShapeError(name, f"has {t.numel()} entries; the estimate has n = {n}")
        flat[name] = layout.permute(t.detach().reshape(-1).to(**like))
    if planned is None:
        ubar = torch.zeros(np_, n, **like)
    else:
        planned = check_tensor("planned", planned, ndim_min=1, finite=validate)
        if planned.shape[0] != np_ or planned[0].numel() != n:
            raise ShapeError("planned", f"expected (Np, n) = ({np_}, {n}) or (Np, *state.shape), got {tuple(planned.shape)}")
        ubar = layout.permute(planned.detach().reshape(np_, n).to(**like))
    xbar = flat["state"]
    if e.structure == "diagonal":
        j_x, step = data * xbar, ds[:, None]
        a, b = 1.0 + step * data, step.expand(np_, n)
    else:
        nb, bs, _ = data.shape
        j_x = (data @ xbar.reshape(nb, bs, 1)).reshape(n)
        eye, step = torch.eye(bs, **like), ds[:, None, None, None]
        a, b = eye + step * data, (step * eye).expand(np_, nb, bs, bs)
    c = ds[:, None] * (flat["velocity"] - j_x + ubar)
    return Linearisation(a=a, b=b, c=c, structure=e.structure) if validate else Linearisation.unchecked(a, b, c, e.structure)
