"""Structured backend: the separable QP of a diagonal or block-diagonal linearisation, batched.

With diagonal (or block-diagonal) A_i, B_i and diagonal weights, the MPC QP splits into one
small problem per coordinate (or block), all solved at once with tensor operations on the
linearisation's device (CPU or GPU). Each small problem is solved exactly by a backward
Riccati-type recursion over quadratics in ``(x, u_prev)`` (the control-rate term makes the
previous control part of the state) and a forward pass. Box bounds are handled by ADMM, each
iteration an unbounded solve with the ADMM penalty added to the weights.

A diagonal problem works elementwise on (n,) tensors; a block problem on (nb, bs, bs) matrices.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from .._checks import check_int, check_real
from ..errors import InvalidArgumentError, NonFiniteError
from ..status import SolveStatus, finish
from .problem import Linearisation, MPCConfig, MPCSolution, check_step_data


@dataclass(frozen=True)
class StructuredOptions:
    """Settings of the ADMM used when bounds are present (unbounded QPs are solved directly).

    Attributes:
        rho: ADMM penalty (> 0), in the units of the weights.
        eps: stop when the primal and dual residuals' largest entries are below eps; None for
            1e-9 in float64 and 1e-5 in float32 (float32 cannot reach 1e-9).
        max_iterations: ADMM iterations at most.
        compile: fuse the recursion with ``torch.compile`` (needs a C++ compiler on CPU); the
            first solve of each dtype/device/shape compiles (seconds), later ones run fused.
    """

    rho: float = 0.1
    eps: float | None = None
    max_iterations: int = 5000
    compile: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.compile, bool):
            raise InvalidArgumentError("compile", f"expected a bool, got {self.compile!r}")
        check_real("rho", self.rho, positive=True)
        if self.eps is not None:
            check_real("eps", self.eps, positive=True)
        check_int("max_iterations", self.max_iterations, minimum=1)

    def tolerance(self, dtype: torch.dtype) -> float:
        if self.eps is not None:
            return self.eps
        return 1e-9 if dtype == torch.float64 else 1e-5


@dataclass
class _Quadratic:
    """``x'xx x + 2 x'xy y + y'yy y + 2 x.x + 2 y.y`` per coordinate or block."""

    xx: torch.Tensor
    xy: torch.Tensor
    yy: torch.Tensor
    x: torch.Tensor
    y: torch.Tensor


class _Algebra:
    """Products on per-coordinate scalars ((n,) tensors) or on blocks ((nb, m, m) and (nb, m))."""

    def __init__(self, block: bool):
        self.block = block

    def mm(self, a, b):
        return a @ b if self.block else a * b

    def mv(self, a, v):
        return (a @ v[..., None])[..., 0] if self.block else a * v

    def t(self, a):
        return a.transpose(-1, -2) if self.block else a

    def inv(self, h):
        return torch.linalg.inv(h) if self.block else 1.0 / h

    def diag(self, w):
        return torch.diag_embed(w) if self.block else w


class StructuredBackend:
    """Batched exact solver of the separable MPC QP (see the module docstring).

    Args:
        config: the QP's sizes, weights and bounds (nu == nx).
        structure: "diagonal" or "block".
        block_size: side of the square blocks for "block" (it must divide nx).
        options: ADMM settings for bounded problems.
    """

    def __init__(self, config: MPCConfig, structure: str = "diagonal", *, block_size: int | None = None, options: StructuredOptions = StructuredOptions()):
        if structure not in ("diagonal", "block"):
            raise InvalidArgumentError("structure", f"the structured backend needs 'diagonal' or 'block', got {structure!r}")
        if config.nu != config.nx:
            raise InvalidArgumentError("config", "a separable QP needs nu == nx (one control per state coordinate)")
        if structure == "block":
            block_size = check_int("block_size", block_size, minimum=1)
            if config.nx % block_size:
                raise InvalidArgumentError("block_size", f"must divide nx = {config.nx}")
        self.config, self.structure, self.block_size, self.options = config, structure, block_size, options
        self._g = _Algebra(structure == "block")
        self.build_time: float | None = None
        self._device_weights: dict = {}
        self._solve_lq = torch.compile(self._lq_and_states, dynamic=False) if options.compile else self._lq_and_states

    def build(self) -> None:
        """Nothing to factor ahead: the recursion depends on each step's linearisation."""
        self.build_time = 0.0

    def solve(self, lin: Linearisation, x0: torch.Tensor, reference: torch.Tensor, u_prev: torch.Tensor, *,
              raise_on_failure: bool = True, validate: bool = True) -> MPCSolution:
        """One step's QP. ``validate=False`` skips the checks of the data and of the solution's
        finiteness (each synchronises with the device), for a controller's loop over data it
        checked once; a non-finite solution then shows in the state it drives."""
        c = self.config
        if validate:
            check_step_data(c, lin, x0, reference, u_prev)
        if lin.structure != self.structure or (self._g.block and lin.a.shape[-1] != self.block_size):
            raise InvalidArgumentError("linearisation", f"has structure {lin.structure!r}; this backend was built for {self.structure!r}")
        if self.build_time is None:
            self.build()
        start = time.perf_counter()
        like = lin.c
        w, r, s, bounds = self._weights(like)
        x0l, upl = self._layout(x0, like), self._layout(u_prev, like)
        ref = torch.stack([self._layout(t, like) for t in reference])
        target = [self._g.mv(self._g.diag(wi), ti) for wi, ti in zip(w, ref)]
        a, b = lin.a, lin.b
        cl = lin.c.reshape(lin.horizon, -1, self.block_size) if self._g.block else lin.c
        zero_u = torch.zeros_like(ref[: c.control_horizon])
        if bounds is None:
            u, x = self._solve_lq(a, b, cl, w, target, r, zero_u, s, x0l, upl)
            iterations, status, message = 0, SolveStatus.SOLVED, "solved by the Riccati recursion"
        else:
            u, x, iterations, status, message = self._admm(a, b, cl, w, target, r, s, x0l, upl, bounds)
        controls = self._flat(u)
        states = torch.cat([x0.to(like)[None], self._flat(x)])
        if validate and not bool(torch.isfinite(controls.sum())):
            raise NonFiniteError("linearisation", "the structured solve produced NaN or Inf (singular or non-finite data)")
        solution = MPCSolution(status, controls, states, iterations, time.perf_counter() - start, message, c, reference, u_prev)
        return finish(solution, raise_on_failure)

    def _layout(self, v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        v = v.to(dtype=like.dtype, device=like.device)
        return v.reshape(-1, self.block_size) if self._g.block else v

    def _flat(self, v: torch.Tensor) -> torch.Tensor:
        return v.reshape(v.shape[0], -1)

    def _weights(self, like: torch.Tensor):
        """Weights and bounds in the working layout, cached per dtype and device."""
        key = (like.dtype, like.device)
        if key not in self._device_weights:
            c = self.config
            L = lambda v: self._layout(v, like)  # noqa: E731
            w = [L(c.Q)] * (c.horizon - 1) + [L(c.QN)]
            bounds = None
            if c.has_control_bounds or c.has_state_bounds:
                bounds = (L(c.umin), L(c.umax), L(c.xmin), L(c.xmax))
            self._device_weights[key] = (w, L(c.R), L(c.S), bounds)
        return self._device_weights[key]

    def _forward(self, a, b, cl, x0: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        g, xs, x = self._g, [], x0
        for i in range(self.config.horizon):
            x = g.mv(a[i], x) + g.mv(b[i], u[min(i, u.shape[0] - 1)]) + cl[i]
            xs.append(x)
        return torch.stack(xs)

    def _lq_and_states(self, a, b, cl, w, target, r, r_target, s, x0, u_prev):
        u = self._lq(a, b, cl, w, target, r, r_target, s, x0, u_prev)
        return u, self._forward(a, b, cl, x0, u)

    def _substitute(self, v: _Quadratic, w, wt, a, b, c) -> _Quadratic:
        """``V(x', u) + |x'|^2_w - 2 wt.x'`` with ``x' = A x + B u + c``, as a quadratic in (x, u)."""
        g = self._g
        pxx = v.xx + g.diag(w)
        m = g.mv(pxx, c) + v.x - wt
        bp = g.mm(g.t(b), v.xy)
        return _Quadratic(
            xx=g.mm(g.t(a), g.mm(pxx, a)),
            xy=g.mm(g.t(a), g.mm(pxx, b) + v.xy),
            yy=g.mm(g.t(b), g.mm(pxx, b)) + bp + g.t(bp) + v.yy,
            x=g.mv(g.t(a), m),
            y=g.mv(g.t(b), m) + g.mv(g.t(v.xy), c) + v.y,
        )

    def _lq(self, a, b, cl, w, target, r, r_target, s, x0, u_prev) -> torch.Tensor:
        """Exact minimiser of the unbounded separable QP with state weights ``w`` (weighted
        targets ``target``), control weight ``r`` (weighted targets ``r_target``) and rate
        weight ``s``; returns the controls (Nc, ...)."""
        g, c = self._g, self.config
        np_, nc = c.horizon, c.control_horizon
        zero = torch.zeros_like(g.diag(w[0]))
        v = _Quadratic(zero, zero, zero, torch.zeros_like(x0), torch.zeros_like(x0))
        for i in range(np_ - 1, nc - 1, -1):  # held stages, u_i = u_{Nc-1}
            v = self._substitute(v, w[i], target[i], a[i], b[i], cl[i])
        R, S = g.diag(r), g.diag(s)
        gains = []
        for j in range(nc - 1, -1, -1):
            e = self._substitute(v, w[j], target[j], a[j], b[j], cl[j])
            hinv = g.inv(e.yy + R + S)
            gvec = e.y - r_target[j]
            kx, ky, k0 = -g.mm(hinv, g.t(e.xy)), g.mm(hinv, S), -g.mv(hinv, gvec)
            gains.append((kx, ky, k0))
            exu_hinv = g.mm(e.xy, hinv)
            v = _Quadratic(
                xx=e.xx - g.mm(exu_hinv, g.t(e.xy)),
                xy=g.mm(exu_hinv, S),
                yy=S - g.mm(S, g.mm(hinv, S)),
                x=e.x - g.mv(exu_hinv, gvec),
                y=g.mv(S, g.mv(hinv, gvec)),
            )
        controls, x, up = [], x0, u_prev
        for j, (kx, ky, k0) in enumerate(reversed(gains)):
            u = g.mv(kx, x) + g.mv(ky, up) + k0
            controls.append(u)
            x, up = g.mv(a[j], x) + g.mv(b[j], u) + cl[j], u
        return torch.stack(controls)

    def _admm(self, a, b, cl, w, target, r, s, x0, u_prev, bounds):
        """ADMM on ``u`` and ``x`` against their boxes; each iteration one ``_lq`` solve."""
        c, opt = self.config, self.options
        umin, umax, xmin, xmax = bounds
        rho, eps = opt.rho, opt.tolerance(x0.dtype)
        w_aug = [wi + rho for wi in w]
        r_aug = r + rho
        u, x = self._solve_lq(a, b, cl, w, target, r, torch.zeros_like(torch.stack(target[: c.control_horizon])), s, x0, u_prev)
        zu, zx = u.clamp(umin, umax), x.clamp(xmin, xmax)
        yu, yx = torch.zeros_like(u), torch.zeros_like(x)
        for it in range(1, opt.max_iterations + 1):
            t_aug = [ti + rho * (zi - yi) for ti, zi, yi in zip(target, zx, yx)]
            u, x = self._solve_lq(a, b, cl, w_aug, t_aug, r_aug, rho * (zu - yu), s, x0, u_prev)
            zu_new, zx_new = (u + yu).clamp(umin, umax), (x + yx).clamp(xmin, xmax)
            yu, yx = yu + u - zu_new, yx + x - zx_new
            primal = max(float((u - zu_new).abs().max()), float((x - zx_new).abs().max()))
            dual = rho * max(float((zu_new - zu).abs().max()), float((zx_new - zx).abs().max()))
            zu, zx = zu_new, zx_new
            if primal <= eps and dual <= eps:
                return zu, self._forward(a, b, cl, x0, zu), it, SolveStatus.SOLVED, f"ADMM converged in {it} iterations"
        return zu, self._forward(a, b, cl, x0, zu), opt.max_iterations, SolveStatus.MAX_ITERATIONS, (
            f"ADMM did not converge in {opt.max_iterations} iterations (primal {primal:.2e}, dual {dual:.2e});"
            " an infeasible QP ends here too"
        )
