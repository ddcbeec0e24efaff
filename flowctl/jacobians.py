"""Jacobian approximations of a vector field ``f(x) = v(x, t, cond)`` at one state, one interface.

The state ``x`` is a single sample of any shape (e.g. SD3's (1, 16, 128, 128) latent); the
Jacobian is that of the flattened field w.r.t. the flattened state (``n = x.numel()``). Each
estimator is a frozen config with ``estimate(f, x, counter=None) -> JacobianEstimate``, where
``f`` maps a tensor of x's shape to one of x's shape (bind ``t`` and ``cond`` in a closure).

Products: ``J v`` by forward-mode AD (``mode="jvp"``, ``torch.func.jvp``) or by the central
difference ``(f(x + h v) - f(x - h v)) / 2h`` (``mode="fd"``); ``J' w`` by ``torch.func.vjp``.
Products are batched with ``torch.func.vmap`` (``chunk_size`` at a time) and fall back to a plain
loop when ``f`` cannot be vmapped. Cost model (NFECounter kinds, docs/conventions.md): one "jvp"
per JVP, two "forward" per finite-difference product, one "vjp" per VJP plus one "forward" per
linearisation the VJPs share. Every estimate carries its own cost and adds it to ``counter``.
Models whose attention kernels lack forward AD (SD3 on CPU) must be wrapped by the caller in
``torch.nn.attention.sdpa_kernel(SDPBackend.MATH)`` or use ``mode="fd"``.
"""

from __future__ import annotations

from collections import Counter

from collections.abc import Callable, Hashable
from dataclasses import dataclass

import torch

from ._checks import check_int, check_real, check_tensor
from .dynamics import NFECounter
from .errors import (
    FlowctlError,
    InvalidArgumentError,
    NonFiniteError,
    ShapeError,
    UnknownNameError,
)

STRUCTURES = ("dense", "diagonal", "block", "low_rank", "sparse")
MODES = ("jvp", "fd")
DENSE_LIMIT = 4096
PROBE_CHUNK = 256
Field = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True, eq=False)
class JacobianEstimate:
    """An approximation of the (n, n) Jacobian of the flattened field.

    Attributes:
        structure: "dense", "diagonal", "block", "low_rank" or "sparse".
        data: dense: (n, n); diagonal: (n,); block: (nb, bs, bs) diagonal blocks, block b acting
            on the flat entries ``index[b]``; low_rank: a pair (U (n, k), V (n, k)), J ~ U V';
            sparse: a coalesced torch sparse COO (n, n) tensor (a band).
        cost: NFE by kind spent on this estimate (0 for a cache hit).
        index: block only: (nb, bs) flat indices of each block's entries (a partition of
            0..n-1); None for contiguous blocks. ``index.reshape(-1)`` permutes a flat state so
            that the blocks become contiguous, the layout of an MPC "block" linearisation.
    """

    structure: str
    data: object
    cost: dict[str, float]
    index: torch.Tensor | None = None

    def __post_init__(self) -> None:
        # metadata only (no host synchronisation): estimates are made in controllers' loops
        if not isinstance(self.structure, str) or self.structure not in STRUCTURES:
            raise UnknownNameError("structure", self.structure, list(STRUCTURES))
        if not isinstance(self.cost, dict):
            raise InvalidArgumentError("cost", f"expected a dict of NFE by kind, got {type(self.cost).__name__}")
        s, d = self.structure, self.data
        if s == "low_rank":
            if not (isinstance(d, (tuple, list)) and len(d) == 2):
                raise InvalidArgumentError("data", "a low-rank estimate's data is a pair (U, V)")
            u, v = (check_tensor("data", t, ndim_min=2, finite=False) for t in d)
            if u.dim() != 2 or u.shape != v.shape:
                raise ShapeError("data", f"U and V must both be (n, k), got {tuple(u.shape)} and {tuple(v.shape)}")
            return
        d = check_tensor("data", d, finite=False)
        if s == "sparse" and not d.is_sparse:
            raise InvalidArgumentError("data", "a sparse estimate's data is a torch sparse COO tensor")
        ndim = {"dense": 2, "diagonal": 1, "block": 3, "sparse": 2}[s]
        if d.dim() != ndim or (ndim > 1 and d.shape[-1] != d.shape[-2]):
            raise ShapeError("data", f"a {s} estimate's data is {('(n,)', '(n, n)', '(nb, bs, bs)')[ndim - 1]}, got {tuple(d.shape)}")
        if s == "block":
            nb, bs, _ = d.shape
            if self.index is None:
                object.__setattr__(self, "index", torch.arange(nb * bs, device=d.device).reshape(nb, bs))
            elif not (isinstance(self.index, torch.Tensor) and self.index.shape == (nb, bs) and not self.index.is_floating_point()):
                raise InvalidArgumentError("index", f"expected ({nb}, {bs}) integer indices of the blocks' entries")

    @property
    def n(self) -> int:
        if self.structure == "low_rank":
            return self.data[0].shape[0]
        return self.index.numel() if self.structure == "block" else self.data.shape[0]

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        """``J v`` for a flat vector v (n,)."""
        v = check_tensor("v", v, ndim_min=1)
        if v.shape != (self.n,):
            raise ShapeError("v", f"expected a flat vector of shape ({self.n},), got {tuple(v.shape)}")
        s, d = self.structure, self.data
        if s == "block":
            out = torch.empty_like(v)
            out[self.index] = torch.einsum("bij,bj->bi", d, v[self.index])
            return out
        return {"dense": lambda: d @ v, "diagonal": lambda: d * v, "low_rank": lambda: d[0] @ (d[1].T @ v),
                "sparse": lambda: torch.sparse.mm(d, v[:, None])[:, 0]}[s]()

    def to_dense(self) -> torch.Tensor:
        """The (n, n) matrix; small systems only (n <= 4096)."""
        if self.n > DENSE_LIMIT:
            raise InvalidArgumentError("estimate", f"n = {self.n} > {DENSE_LIMIT}: too large to make dense")
        s, d = self.structure, self.data
        if s == "block":
            out = d.new_zeros(self.n, self.n)
            out[self.index[:, :, None], self.index[:, None, :]] = d
            return out
        return {"dense": lambda: d, "diagonal": lambda: torch.diag(d), "low_rank": lambda: d[0] @ d[1].T,
                "sparse": lambda: d.to_dense()}[s]()

    def diagonal(self) -> torch.Tensor:
        """The estimate's diagonal, (n,) (a block estimate's is its blocks' diagonals)."""
        s, d = self.structure, self.data
        if s == "block":
            out = d.new_empty(self.n)
            out[self.index] = d.diagonal(dim1=1, dim2=2)
            return out
        if s == "sparse":
            (i, j), val = d.indices(), d.values()
            return val.new_zeros(self.n).index_put_((i[i == j],), val[i == j], accumulate=True)
        return {"dense": lambda: d.diagonal().clone(), "diagonal": lambda: d, "low_rank": lambda: (d[0] * d[1]).sum(1)}[s]()


class _Products:
    """JVPs and VJPs of ``f`` at ``x`` on flat vectors, counted in ``counter`` and in the
    caller's ``outer`` counter before they are made (so a budgeted counter stops them)."""

    def __init__(self, f: Field, x: torch.Tensor, mode: str, fd_step: float | None, chunk_size: int, counter: NFECounter,
                 outer: NFECounter | None = None):
        self.f, self.x, self.mode, self.counter, self.outer = f, x, mode, counter, outer
        self.chunk = chunk_size
        step = torch.finfo(x.dtype).eps ** (1 / 3) if fd_step is None else fd_step
        self.h_scale = step * max(1.0, float(x.abs().max()))

    def _call(self, z: torch.Tensor) -> torch.Tensor:
        y = self.f(z)
        if not isinstance(y, torch.Tensor) or y.shape != z.shape:
            got = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
            raise ShapeError("f", f"must return a tensor of x's shape {tuple(z.shape)}, got {got}")
        return y

    def _jvp1(self, v: torch.Tensor) -> torch.Tensor:
        v = v.reshape(self.x.shape)
        if self.mode == "jvp":
            return torch.func.jvp(self._call, (self.x,), (v,))[1].reshape(-1)
        h = self.h_scale / v.abs().max().clamp_min(torch.finfo(v.dtype).tiny)
        return ((self._call(self.x + h * v) - self._call(self.x - h * v)) / (2 * h)).reshape(-1)

    def _map(self, one: Callable, vs: torch.Tensor) -> torch.Tensor:
        out = []
        for part in vs.split(max(self.chunk, 1)):
            if self.chunk > 1 and part.shape[0] > 1:
                try:
                    out.append(torch.func.vmap(one)(part))
                    continue
                except FlowctlError:
                    raise
                except Exception:  # noqa: BLE001 -- f is not vmappable (data-dependent control flow, ...): loop
                    self.chunk = 0
            out.append(torch.stack([one(v) for v in part]))
        result = torch.cat(out).detach()
        if not bool(torch.isfinite(result).all()):
            raise NonFiniteError("f", "its derivative products contain NaN or Inf")
        return result

    def _count(self, n: float, kind: str) -> None:
        if self.outer is not None:
            self.outer.add(n, kind=kind)
        self.counter.add(n, kind=kind)

    def jvp(self, vs: torch.Tensor) -> torch.Tensor:
        """Rows ``J v_k`` for the rows v_k of ``vs`` (k, n)."""
        if self.mode == "jvp":
            self._count(vs.shape[0], "jvp")
        else:
            self._count(2 * vs.shape[0], "forward")
        with torch.no_grad():
            return self._map(self._jvp1, vs)

    def vjp(self, ws: torch.Tensor) -> torch.Tensor:
        """Rows ``J' w_k`` for the rows w_k of ``ws`` (k, n), sharing one linearisation."""
        self._count(1, "forward")
        self._count(ws.shape[0], "vjp")
        _, fn = torch.func.vjp(self._call, self.x)
        return self._map(lambda w: fn(w.reshape(self.x.shape))[0].reshape(-1), ws)


def _check_counter(counter: object) -> None:
    if counter is not None and not isinstance(counter, NFECounter):
        raise InvalidArgumentError("counter", f"expected an NFECounter or None, got {type(counter).__name__}")


@dataclass(frozen=True, eq=False, kw_only=True)
class _Estimator:
    """Options shared by every estimator (fields are keyword-only).

    Attributes:
        mode: "jvp" (forward-mode AD) or "fd" (central finite differences) for products J v.
        fd_step: relative finite-difference step, h = fd_step max(1, |x|_max) / |v|_max;
            None for eps(dtype)^(1/3).
        chunk_size: products per ``torch.func.vmap`` call (>= 0); 0 or 1 for a plain loop.
    """

    mode: str = "jvp"
    fd_step: float | None = None
    chunk_size: int = 16

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise UnknownNameError("mode", self.mode, list(MODES))
        if self.fd_step is not None:
            check_real("fd_step", self.fd_step, positive=True)
        check_int("chunk_size", self.chunk_size, minimum=0)

    def _start(self, f: object, x: object, counter: object) -> tuple[torch.Tensor, _Products]:
        if not callable(f):
            raise InvalidArgumentError("f", f"expected a callable x -> v, got {type(f).__name__}")
        x = check_tensor("x", x).detach()
        if x.numel() == 0:
            raise ShapeError("x", f"has no values: shape {tuple(x.shape)}")
        _check_counter(counter)
        return x, _Products(f, x, self.mode, self.fd_step, self.chunk_size, NFECounter(), counter)

    def _refuse_large(self, x: torch.Tensor) -> None:
        if x.numel() > self.max_size:
            raise InvalidArgumentError(
                "x", f"has n = {x.numel()} values > max_size = {self.max_size}: exact probing needs n JVPs; "
                "use a structured estimate (DiagonalJacobian(probes=k), ColouredJacobian, LowRankJacobian)")


def _cost(spent: NFECounter) -> dict[str, float]:
    """The cost in ``spent`` as a dict (the caller's counter was charged as the products ran)."""
    return {kind: float(n) for kind, n in spent.by_kind.items()}


def _finish(structure: str, data: object, products: _Products, counter: NFECounter | None, index=None) -> JacobianEstimate:
    return JacobianEstimate(structure, data, _cost(products.counter), index)


def _image(x: torch.Tensor) -> tuple[int, int, int]:
    if x.dim() < 3 or any(s != 1 for s in x.shape[:-3]):
        raise ShapeError("x", f"expected an image (C, H, W) or (1, C, H, W), got {tuple(x.shape)}")
    return tuple(x.shape[-3:])


def _coloured_products(p: _Products, period: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Colour (c, i mod ph, j mod pw) of each flat entry of an image, and ``J 1_k`` for each
    colour class k, (colours, n): one JVP per colour."""
    c, h, w = _image(p.x)
    ph, pw = min(period[0], h), min(period[1], w)
    ci, ii, jj = torch.meshgrid(*(torch.arange(s, device=p.x.device) for s in (c, h, w)), indexing="ij")
    colour = ((ci * ph + ii % period[0]) * pw + jj % period[1]).reshape(-1)
    return colour, p.jvp(torch.nn.functional.one_hot(colour, c * ph * pw).T.to(p.x.dtype))


@dataclass(frozen=True, eq=False, kw_only=True)
class DenseJacobian(_Estimator):
    """The full Jacobian from n JVPs with the basis vectors (small systems only).

    Attributes:
        max_size: largest n accepted (>= 1); a larger state raises InvalidArgumentError.
        mode, fd_step, chunk_size: see :class:`_Estimator`.
    """

    max_size: int = DENSE_LIMIT

    def __post_init__(self) -> None:
        super().__post_init__()
        check_int("max_size", self.max_size, minimum=1)

    def estimate(self, f: Field, x: torch.Tensor, counter: NFECounter | None = None) -> JacobianEstimate:
        x, p = self._start(f, x, counter)
        self._refuse_large(x)
        cols = p.jvp(torch.eye(x.numel(), dtype=x.dtype, device=x.device))
        return _finish("dense", cols.T.contiguous(), p, counter)


@dataclass(frozen=True, eq=False, kw_only=True)
class DiagonalJacobian(_Estimator):
    """The Jacobian's diagonal: exact probing, a coloured probe, or a stochastic estimate.

    Attributes:
        probes: None: exact (n JVPs with basis vectors, n <= max_size), or coloured if ``radius``
            is given; k >= 1: Bekas-Kokiopoulou-Saad ``mean_k z_k * (J z_k)`` with Rademacher
            z_k, k JVPs, unbiased, error ~ 1/sqrt(k).
        radius: None, or r >= 0 for the coloured diagonal of an image state (C, H, W) or
            (1, C, H, W): exact when output (c', i', j') depends on input (c, i, j) only for
            max(|i - i'|, |j - j'|) <= r; colours (c, i mod (r+1), j mod (r+1)), so
            C (r+1)^2 JVPs whatever H and W. Excludes ``probes``.
        seed: seed of the Rademacher probes (>= 0).
        max_size: largest n for exact probing.
        mode, fd_step, chunk_size: see :class:`_Estimator`.
    """

    probes: int | None = None
    radius: int | None = None
    seed: int = 0
    max_size: int = DENSE_LIMIT

    def __post_init__(self) -> None:
        super().__post_init__()
        for name, minimum in (("probes", 1), ("radius", 0)):
            if getattr(self, name) is not None:
                check_int(name, getattr(self, name), minimum=minimum)
        check_int("seed", self.seed, minimum=0)
        check_int("max_size", self.max_size, minimum=1)
        if self.probes is not None and self.radius is not None:
            raise InvalidArgumentError("probes", "give either probes (stochastic) or radius (coloured), not both")

    def estimate(self, f: Field, x: torch.Tensor, counter: NFECounter | None = None) -> JacobianEstimate:
        x, p = self._start(f, x, counter)
        n = x.numel()
        if self.radius is not None:
            colour, ys = _coloured_products(p, (self.radius + 1, self.radius + 1))
            diag = ys[colour, torch.arange(n, device=x.device)]
        elif self.probes is None:
            self._refuse_large(x)
            diag = p.jvp(torch.eye(n, dtype=x.dtype, device=x.device)).diagonal().clone()
        else:
            gen, diag = torch.Generator().manual_seed(self.seed), x.new_zeros(n)
            for k in range(0, self.probes, PROBE_CHUNK):  # bounded memory: PROBE_CHUNK probes at a time
                z = (2.0 * torch.randint(0, 2, (min(PROBE_CHUNK, self.probes - k), n), generator=gen) - 1).to(x)
                diag += (z * p.jvp(z)).sum(0)
            diag /= self.probes
        return _finish("diagonal", diag, p, counter)


@dataclass(frozen=True, eq=False, kw_only=True)
class ColouredJacobian(_Estimator):
    """Local (band or block) Jacobian of an image state (C, H, W) or (1, C, H, W) by colouring.

    Assumes output (c', i', j') depends on input (c, i, j) only for max(|i - i'|, |j - j'|) <=
    ``radius``: exact then; otherwise the ignored interactions fold into the entries read. All
    entries of a colour class are recovered by one JVP with the class's indicator; the cost is
    C x (spatial colours) JVPs, independent of H and W.

    Attributes:
        radius: assumed interaction radius r >= 0.
        block: None: structure "sparse", the band (rows within r of their column), by a
            distance-2 colouring (i mod (2r+1), j mod (2r+1)): C (2r+1)^2 JVPs.
            (bh, bw) dividing (H, W): structure "block", the diagonal blocks over non-overlapping
            bh x bw patches with all channels (bs = C bh bw, ``index`` gives the entries);
            colouring (i mod (bh+r), j mod (bw+r)) keeps entries of one colour in different
            blocks, more than r apart from each other's blocks: C (bh+r)(bw+r) JVPs.
        mode, fd_step, chunk_size: see :class:`_Estimator`.
    """

    radius: int = 1
    block: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        check_int("radius", self.radius, minimum=0)
        if self.block is not None:
            if not (isinstance(self.block, (tuple, list)) and len(self.block) == 2):
                raise InvalidArgumentError("block", f"expected a pair (bh, bw), got {self.block!r}")
            object.__setattr__(self, "block", tuple(check_int("block", b, minimum=1) for b in self.block))

    def estimate(self, f: Field, x: torch.Tensor, counter: NFECounter | None = None) -> JacobianEstimate:
        x, p = self._start(f, x, counter)
        (c, h, w), r, dev = _image(x), self.radius, x.device
        flat = torch.arange(x.numel(), device=dev).reshape(c, h, w)
        if self.block is not None:
            bh, bw = self.block
            if h % bh or w % bw:
                raise ShapeError("x", f"spatial size ({h}, {w}) is not divisible by block {self.block}")
            colour, ys = _coloured_products(p, (bh + r, bw + r))
            index = flat.reshape(c, h // bh, bh, w // bw, bw).permute(1, 3, 0, 2, 4).reshape(-1, c * bh * bw)
            return _finish("block", ys[colour[index][:, None, :], index[:, :, None]], p, counter, index)
        colour, ys = _coloured_products(p, (2 * r + 1, 2 * r + 1))
        d = torch.arange(-r, r + 1, device=dev)
        at = flat[..., None, None, None]  # (C, H, W, 1, 1, 1): each row; its columns follow, sorted
        ci, cj = at // w % h + d.view(-1, 1), at % w + d  # (C, H, W, 1, D, 1), (C, H, W, 1, 1, D)
        cols = (torch.arange(c, device=dev).view(-1, 1, 1) * h + ci) * w + cj  # (C, H, W, C, D, D)
        ok = ((ci >= 0) & (ci < h) & (cj >= 0) & (cj < w)).expand_as(cols)
        rows, cols = at.expand_as(cols)[ok], cols[ok]
        band = torch.sparse_coo_tensor(torch.stack([rows, cols]), ys[colour[cols], rows], (x.numel(),) * 2,
                                       is_coalesced=True, check_invariants=False)  # row-major, no repeats
        return _finish("sparse", band, p, counter)


@dataclass(frozen=True, eq=False, kw_only=True)
class LowRankJacobian(_Estimator):
    """Randomised range finder (Halko, Martinsson and Tropp 2011): J ~ U V' of rank ``rank``.

    Y = J Omega with m = rank + oversampling Gaussian probes (m JVPs), Q = qr(Y), B = Q' J (m
    VJPs sharing one forward), truncated to ``rank`` by an SVD of B. Each power iteration adds
    m VJPs, one forward and m JVPs. Exact when J has rank <= ``rank``.

    Attributes:
        rank: k >= 1, at most n.
        oversampling: extra probes p >= 0 (m = min(k + p, n)).
        power_iterations: q >= 0 subspace iterations (for a slowly decaying spectrum).
        seed: seed of Omega (>= 0).
        mode, fd_step, chunk_size: see :class:`_Estimator` (mode applies to the JVPs).
    """

    rank: int = 8
    oversampling: int = 5
    power_iterations: int = 0
    seed: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        check_int("rank", self.rank, minimum=1)
        for name in ("oversampling", "power_iterations", "seed"):
            check_int(name, getattr(self, name), minimum=0)

    def estimate(self, f: Field, x: torch.Tensor, counter: NFECounter | None = None) -> JacobianEstimate:
        x, p = self._start(f, x, counter)
        n, k = x.numel(), self.rank
        if k > n:
            raise InvalidArgumentError("rank", f"must be <= n = {n}, got {k}")
        work = torch.promote_types(x.dtype, torch.float32)  # QR and SVD have no half-precision kernels
        orth = lambda a: torch.linalg.qr(a.to(work)).Q.to(x.dtype)  # noqa: E731
        omega = torch.randn(min(k + self.oversampling, n), n, generator=torch.Generator().manual_seed(self.seed), dtype=x.dtype)
        y = p.jvp(omega.to(x.device))  # rows: (J Omega)'
        for _ in range(self.power_iterations):
            y = p.jvp(orth(p.vjp(orth(y.T).T).T).T)  # J J' applied to range(Y)
        q = orth(y.T)  # (n, m)
        ub, s, vh = (m.to(x.dtype) for m in torch.linalg.svd(p.vjp(q.T).to(work), full_matrices=False))  # B = Q' J (m, n)
        return _finish("low_rank", (q @ (ub[:, :k] * s[:k]), vh[:k].T.contiguous()), p, counter)


def _combine(parts: list[tuple[float, JacobianEstimate]], cost: dict[str, float]) -> JacobianEstimate:
    """``sum_i w_i J_i`` for estimates of one structure (and one block partition)."""
    e0 = parts[0][1]
    if any(e.structure != e0.structure or (e0.index is not None and not torch.equal(e.index, e0.index)) for _, e in parts):
        raise InvalidArgumentError("estimator", "the two sides gave estimates of different structure")
    if e0.structure == "low_rank":  # [w_b U_b, w_a U_a] [V_b, V_a]'
        data = (torch.cat([w * e.data[0] for w, e in parts], 1), torch.cat([e.data[1] for _, e in parts], 1))
    else:
        data = parts[0][0] * e0.data
        for w, e in parts[1:]:
            data = data + w * e.data
        data = data.coalesce() if e0.structure == "sparse" else data
    return JacobianEstimate(e0.structure, data, cost, e0.index)


class BlendedJacobian:
    """Jacobian of the blend ``alpha f_b + (1 - alpha) f_a`` with a per-condition cache.

    Each side's estimate is cached under its condition key, tagged with the step it was made
    at; a later request for that key at ``step`` reuses it while ``0 <= step - tag <=
    reuse_steps`` (at no cost), else re-estimates at the current x (and replaces it). The cache
    ignores x by design: reuse trades accuracy for JVPs. alpha in {0, 1} touches one side only.

    Args:
        estimator: any estimator above (its ``estimate(f, x, counter)`` is used).
        reuse_steps: n >= 0, the number of later steps an entry stays valid for.
    """

    def __init__(self, estimator, reuse_steps: int = 0):
        if not callable(getattr(estimator, "estimate", None)):
            raise InvalidArgumentError("estimator", f"expected a Jacobian estimator, got {type(estimator).__name__}")
        self.estimator = estimator
        self.reuse_steps = check_int("reuse_steps", reuse_steps, minimum=0)
        self._cache: dict[Hashable, tuple[int, JacobianEstimate]] = {}

    def clear(self) -> None:
        self._cache.clear()

    def estimate(self, f_a: Field, f_b: Field, x: torch.Tensor, alpha: float, step: int,
                 counter: NFECounter | None = None, keys: tuple[Hashable, Hashable] = ("a", "b")) -> JacobianEstimate:
        """``alpha J_b + (1 - alpha) J_a`` at ``x``; ``keys`` name the two conditions in the cache."""
        alpha = check_real("alpha", alpha, low=0.0, high=1.0)
        step = check_int("step", step, minimum=0)
        if not (isinstance(keys, tuple) and len(keys) == 2):
            raise InvalidArgumentError("keys", f"expected a pair of cache keys, got {keys!r}")
        _check_counter(counter)
        spent: Counter[str] = Counter()
        sides = [(w, f, key) for w, f, key in ((1.0 - alpha, f_a, keys[0]), (alpha, f_b, keys[1])) if w > 0]
        parts = []
        for w, f, key in sides:
            hit = self._cache.get(key)
            if hit is None or not 0 <= step - hit[0] <= self.reuse_steps:
                hit = (step, self.estimator.estimate(f, x, counter))
                spent.update(hit[1].cost)
                self._cache[key] = hit
            parts.append((w, hit[1]))
        return _combine(parts, {kind: float(n) for kind, n in spent.items()})
