"""Jacobian products and structured Jacobians of the SD3 MMDiT velocity, with measured costs.

A *field* is a callable ``x -> v`` on one latent ``x`` of shape (1, C, H, W) at a fixed sigma
and condition, bound in a closure (e.g. ``lambda x: dynamics.velocity(x, sigma, cond)``;
sigma = 1 is noise, 0 is data). Costs are in NFE-equivalents: wall time relative to one forward
call of the same field on the same input, so a forward costs 1.

Forward-mode AD through the MMDiT needs the MATH attention kernel: torch's fused CPU attention
kernel and the flash / memory-efficient CUDA kernels have no forward-AD formula (torch raises
NotImplementedError). :func:`math_attention` selects MATH for the duration of a block
(``SD3Dynamics.derivatives()`` is that context, and flowctl's planners enter it); :func:`jvp`,
:func:`measure_product_cost` and :func:`measure_estimate` run their products inside it; run an
estimator's ``estimate`` on a field of the transformer inside it too. VJPs work with every
kernel; :func:`vjp` keeps the default ones.

The estimators are flowctl's (:mod:`flowctl.jacobians`), configured for the MMDiT:

- :func:`patch_blocks`: the diagonal blocks over the transformer's latent patches (all C
  channels of a p x p patch, bs = C p^2 entries, the MMDiT's tokens) by colouring the patch
  grid with ``ColouredJacobian(block=(p, p), radius=r)``: C (p + r)^2 JVPs. MMDiT attention is
  global, so every entry depends on every patch and the colouring folds cross-patch terms into
  the blocks it reads (:func:`block_error` measures that against the exact Jacobian); a radius
  r >= max(H, W) - p gives every patch its own colour, exact at C H W JVPs.
- :func:`coloured_diagonal`: the diagonal by ``DiagonalJacobian(radius=r)``, C (r + 1)^2 JVPs,
  r = p - 1 by default (C p^2 JVPs, the cost of ``patch_blocks(p)``, whose diagonal it equals).
- :func:`probed_diagonal`: the diagonal by Rademacher probes, ``probes`` JVPs, unbiased.

:func:`measure_estimate` returns an estimate with its cost in NFE-equivalents, converted from
its cost by kind with per-product costs measured on the same field and input
(:func:`measure_product_cost`), and its own wall time.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch

from flowctl._checks import check_int, check_real, check_tensor
from flowctl.dynamics import NFECounter
from flowctl.errors import InvalidArgumentError, ShapeError, UnknownNameError
from flowctl.jacobians import ColouredJacobian, DiagonalJacobian, JacobianEstimate

from flowctl.adapters.common import math_attention

__all__ = [
    "MeasuredEstimate",
    "ProductCost",
    "block_error",
    "coloured_diagonal",
    "jvp",
    "math_attention",
    "measure_estimate",
    "measure_product_cost",
    "median_seconds",
    "patch_blocks",
    "probed_diagonal",
    "vjp",
]

Field = Callable[[torch.Tensor], torch.Tensor]


def _check_product_args(field: object, x: object, direction: object, name: str, counter: object) -> None:
    if not callable(field):
        raise InvalidArgumentError("field", f"expected a callable x -> v, got {type(field).__name__}")
    check_tensor("x", x)
    check_tensor(name, direction)
    if direction.shape != x.shape:
        raise ShapeError(name, f"shape {tuple(direction.shape)} does not match x's shape {tuple(x.shape)}")
    if counter is not None and not isinstance(counter, NFECounter):
        raise InvalidArgumentError("counter", f"expected an NFECounter or None, got {type(counter).__name__}")


def jvp(field: Field, x: torch.Tensor, v: torch.Tensor, counter: NFECounter | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(field(x), J v)`` by forward-mode AD under :func:`math_attention`; counts one "jvp"."""
    _check_product_args(field, x, v, "v", counter)
    with math_attention(), torch.no_grad():
        value, tangent = torch.func.jvp(field, (x.detach(),), (v.detach(),))
    if counter is not None:
        counter.add(1, kind="jvp")
    return value, tangent


def vjp(field: Field, x: torch.Tensor, w: torch.Tensor, counter: NFECounter | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(field(x), J' w)`` by reverse-mode AD; counts one "forward" (the pass recording the
    graph) and one "vjp" (the backward pass), as :mod:`flowctl.jacobians` does."""
    _check_product_args(field, x, w, "w", counter)
    value, pullback = torch.func.vjp(field, x.detach())
    (cotangent,) = pullback(w.detach())
    if counter is not None:
        counter.add(1, kind="forward")
        counter.add(1, kind="vjp")
    return value.detach(), cotangent.detach()


@dataclass(frozen=True)
class ProductCost:
    """Measured wall times of a field's calls at one input (medians over ``repeats`` calls).

    Attributes:
        forward_s: one forward call, no graph, default attention kernels (1 NFE by definition).
        jvp_s: one JVP, :func:`jvp` (its forward included, MATH attention).
        vjp_forward_s: the forward that records the graph a VJP needs (``torch.func.vjp``).
        vjp_s: one VJP on that graph: the backward pass alone.
        repeats: timed calls behind each median.
    """

    forward_s: float
    jvp_s: float
    vjp_forward_s: float
    vjp_s: float
    repeats: int

    def __post_init__(self) -> None:
        for name in ("forward_s", "jvp_s", "vjp_forward_s", "vjp_s"):
            check_real(name, getattr(self, name), positive=True)
        check_int("repeats", self.repeats, minimum=1)

    @property
    def rates(self) -> dict[str, float]:
        """NFE-equivalents per unit of each NFECounter kind: "forward" 1, "jvp" jvp_s /
        forward_s, "vjp" vjp_s / forward_s (a VJP's graph-recording forward counts as a
        "forward", as in :mod:`flowctl.jacobians`)."""
        return {"forward": 1.0, "jvp": self.jvp_s / self.forward_s, "vjp": self.vjp_s / self.forward_s}

    def nfe_equivalents(self, cost: Mapping[str, float]) -> float:
        """A cost by kind (e.g. ``JacobianEstimate.cost``) in NFE-equivalents."""
        rates = self.rates
        unknown = [kind for kind in cost if kind not in rates]
        if unknown:
            raise UnknownNameError("cost", unknown[0], list(rates))
        return float(sum(n * rates[kind] for kind, n in cost.items()))


def _seconds(call: Callable[[], object], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    call()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def median_seconds(call: Callable[[], object], device: torch.device, repeats: int, warmup: int = 1) -> float:
    """Median wall time of ``call()`` over ``repeats`` calls after ``warmup`` untimed ones
    (CUDA synchronised before and after each call on a CUDA ``device``)."""
    for _ in range(warmup):
        _seconds(call, device)
    return statistics.median(_seconds(call, device) for _ in range(repeats))


def measure_product_cost(field: Field, x: torch.Tensor, *, repeats: int = 5, warmup: int = 1, seed: int = 0) -> ProductCost:
    """Time a forward call, a JVP and a VJP of ``field`` at ``x`` (``warmup`` untimed calls of
    each first; directions drawn from N(0, I) with ``seed``; CUDA synchronised around calls)."""
    repeats, warmup = check_int("repeats", repeats, minimum=1), check_int("warmup", warmup, minimum=0)
    gen = torch.Generator().manual_seed(check_int("seed", seed, minimum=0))
    direction = torch.randn(x.shape, generator=gen, dtype=torch.float64).to(dtype=x.dtype, device=x.device)
    _check_product_args(field, x, direction, "direction", None)
    x = x.detach()

    def forward() -> None:
        with torch.no_grad():
            field(x)

    graph = {}

    def linearise() -> None:
        graph["pullback"] = torch.func.vjp(field, x)[1]

    dev = x.device
    forward_s = median_seconds(forward, dev, repeats, warmup)
    jvp_s = median_seconds(lambda: jvp(field, x, direction), dev, repeats, warmup)
    vjp_forward_s = median_seconds(linearise, dev, repeats, warmup)
    vjp_s = median_seconds(lambda: graph["pullback"](direction), dev, repeats, warmup)
    return ProductCost(forward_s, jvp_s, vjp_forward_s, vjp_s, repeats)


def patch_blocks(patch_size: int, radius: int = 0, *, chunk_size: int = 16) -> ColouredJacobian:
    """Per-patch diagonal blocks (structure "block", bs = C p^2): C (p + r)^2 JVPs, vmapped
    ``chunk_size`` at a time. ``patch_size`` is the transformer's (``config.patch_size``)."""
    p = check_int("patch_size", patch_size, minimum=1)
    return ColouredJacobian(block=(p, p), radius=radius, chunk_size=chunk_size)


def coloured_diagonal(patch_size: int, radius: int | None = None, *, chunk_size: int = 16) -> DiagonalJacobian:
    """The coloured diagonal (structure "diagonal"): C (r + 1)^2 JVPs; ``radius`` None for
    p - 1 (C p^2 JVPs). The patch embedding mixes the pixels of one patch into one token, so a
    radius below p - 1 puts pixels of one patch in one colour and folds their direct coupling
    into the diagonal (on the tiny MMDiT with p = 2, radius 0 errs by more than the diagonal's
    own size)."""
    p = check_int("patch_size", patch_size, minimum=1)
    return DiagonalJacobian(radius=p - 1 if radius is None else radius, chunk_size=chunk_size)


def probed_diagonal(probes: int, *, seed: int = 0, chunk_size: int = 16) -> DiagonalJacobian:
    """The diagonal from ``probes`` Rademacher probes (structure "diagonal"): ``probes`` JVPs."""
    return DiagonalJacobian(probes=probes, seed=seed, chunk_size=chunk_size)


@dataclass(frozen=True, eq=False)
class MeasuredEstimate:
    """A Jacobian estimate with its cost.

    Attributes:
        estimate: the estimate (its ``cost`` is by NFECounter kind).
        product_cost: the per-product costs that convert it.
        seconds: wall time of the estimate itself.
    """

    estimate: JacobianEstimate
    product_cost: ProductCost
    seconds: float

    @property
    def nfe_equivalents(self) -> float:
        """The estimate's cost by kind in NFE-equivalents (each product at its measured cost)."""
        return self.product_cost.nfe_equivalents(self.estimate.cost)

    @property
    def wall_nfe(self) -> float:
        """The estimate's own wall time in NFE-equivalents (includes vmap batching's effect)."""
        return self.seconds / self.product_cost.forward_s


def measure_estimate(estimator, field: Field, x: torch.Tensor, *, product_cost: ProductCost | None = None,
                     repeats: int = 5, counter: NFECounter | None = None) -> MeasuredEstimate:
    """Run ``estimator`` on ``field`` at ``x`` once, timed, and cost it in NFE-equivalents with
    ``product_cost`` (measured here with ``repeats`` if None), under :func:`math_attention`. The
    estimate's cost by kind is added to ``counter``."""
    if not callable(getattr(estimator, "estimate", None)):
        raise InvalidArgumentError("estimator", f"expected a Jacobian estimator, got {type(estimator).__name__}")
    if product_cost is None:
        product_cost = measure_product_cost(field, x, repeats=repeats)
    elif not isinstance(product_cost, ProductCost):
        raise InvalidArgumentError("product_cost", f"expected a ProductCost or None, got {type(product_cost).__name__}")
    made: list[JacobianEstimate] = []
    with math_attention():
        seconds = _seconds(lambda: made.append(estimator.estimate(field, x, counter)), x.device)
    return MeasuredEstimate(made[0], product_cost, seconds)


def block_error(estimate: JacobianEstimate, exact: torch.Tensor) -> float:
    """Relative Frobenius error ``|E - J|_F / |J|_F`` over the entries a "block" or "diagonal"
    estimate holds (its blocks, or the diagonal), against the exact (n, n) Jacobian ``exact``."""
    if not isinstance(estimate, JacobianEstimate) or estimate.structure not in ("block", "diagonal"):
        raise InvalidArgumentError("estimate", "expected a 'block' or 'diagonal' JacobianEstimate")
    exact = check_tensor("exact", exact, ndim_min=2)
    if tuple(exact.shape) != (estimate.n, estimate.n):
        raise ShapeError("exact", f"expected ({estimate.n}, {estimate.n}), got {tuple(exact.shape)}")
    if estimate.structure == "diagonal":
        held = exact.diagonal()
    else:
        index = estimate.index.to(exact.device)
        held = exact[index[:, :, None], index[:, None, :]]
    reference = torch.linalg.vector_norm(held)
    if float(reference) == 0.0:
        raise InvalidArgumentError("exact", "is zero on the estimate's entries: a relative error is undefined")
    return float(torch.linalg.vector_norm(estimate.data.to(held) - held) / reference)
