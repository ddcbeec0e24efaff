"""Closed-loop MPC: build once, then a cheap ``step(x, t)`` that applies the first control."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch

from .._checks import check_int, check_tensor
from ..errors import InvalidArgumentError, ShapeError
from .problem import Linearisation, MPCSolution


@runtime_checkable
class LinearModel(Protocol):
    """What the controller linearises: the dynamics along the current path and the reference."""

    def linearise(self, x: torch.Tensor, t: float) -> Linearisation: ...

    def reference(self, t: float) -> torch.Tensor:
        """Targets r_1..r_Np, shape (Np, nx)."""
        ...


class QPBackend(Protocol):
    build_time: float | None

    def build(self) -> None: ...

    def solve(self, lin: Linearisation, x0: torch.Tensor, reference: torch.Tensor, u_prev: torch.Tensor, *, raise_on_failure: bool = True) -> MPCSolution: ...


@dataclass(frozen=True)
class ControllerTiming:
    """Setup and per-step wall times in seconds (linearisation and QP solve included)."""

    setup: float
    step_median: float
    step_max: float
    steps: int


class StepTimer:
    """Setup time and per-step wall times of a closed-loop controller."""

    def __init__(self) -> None:
        self.setup: float | None = None
        self.steps: list[float] = []

    @property
    def timing(self) -> ControllerTiming:
        times = self.steps or [float("nan")]
        return ControllerTiming(self.setup or 0.0, statistics.median(times), max(times), len(self.steps))


@dataclass(frozen=True, eq=False)
class TimeInvariantModel:
    """``x_{k+1} = A x_k + B u_k + c`` at every step, tracking a constant ``target``.

    Attributes:
        a, b: (nx, nx) and (nx, nu) matrices (or "diagonal" (nx,) vectors).
        target: (nx,) state to track.
        horizon: prediction horizon Np.
        c: (nx,) affine term, zero by default.
        structure: "dense" or "diagonal".
    """

    a: torch.Tensor
    b: torch.Tensor
    target: torch.Tensor
    horizon: int
    c: torch.Tensor | None = None
    structure: str = "dense"

    def __post_init__(self) -> None:
        if self.structure not in ("dense", "diagonal"):
            raise InvalidArgumentError("structure", f"expected 'dense' or 'diagonal', got {self.structure!r}")
        check_int("horizon", self.horizon, minimum=1)
        target = check_tensor("target", self.target)
        if target.dim() != 1:
            raise ShapeError("target", f"expected shape (nx,), got {tuple(target.shape)}")
        nx = target.shape[0]
        a, b = check_tensor("a", self.a), check_tensor("b", self.b)
        dense = self.structure == "dense"
        if a.shape != ((nx, nx) if dense else (nx,)):
            raise ShapeError("a", f"expected shape {(nx, nx) if dense else (nx,)} for nx = {nx}, got {tuple(a.shape)}")
        if (b.dim() != 2 or b.shape[0] != nx) if dense else b.shape != (nx,):
            raise ShapeError("b", f"expected shape {'(nx, nu)' if dense else '(nx,)'} for nx = {nx}, got {tuple(b.shape)}")
        if self.c is not None and check_tensor("c", self.c).shape != (nx,):
            raise ShapeError("c", f"expected shape ({nx},), got {tuple(self.c.shape)}")

    def linearise(self, x: torch.Tensor, t: float) -> Linearisation:
        n = self.horizon
        c = torch.zeros_like(self.target) if self.c is None else self.c
        # copies, not views: a caller editing one step must not edit the model or the other steps
        expand = lambda m: m.expand(n, *m.shape).clone()  # noqa: E731
        return Linearisation(expand(self.a), expand(self.b), expand(c), self.structure)

    def reference(self, t: float) -> torch.Tensor:
        return self.target.expand(self.horizon, -1)


class MPCController:
    """Receding-horizon control with any QP backend.

    Args:
        backend: an OSQP, CasADi or structured backend built for the model's sizes.
        model: gives the linearisation and the reference at each step.
        u_init: the control taken as applied before the first step (for the rate term);
            zeros by default.
    """

    def __init__(self, backend: QPBackend, model: LinearModel, u_init: torch.Tensor | None = None):
        self.backend, self.model = backend, model
        self.u_prev = u_init
        self.last: MPCSolution | None = None
        self._timer = StepTimer()

    def build(self) -> None:
        """Set the backend up once (sparsity pattern, solver); timed as the setup time."""
        start = time.perf_counter()
        self.backend.build()
        self._timer.setup = time.perf_counter() - start

    def step(self, x: torch.Tensor, t: float = 0.0) -> torch.Tensor:
        """Linearise at (x, t), solve the QP from x, and return the first control (nu,)."""
        if self._timer.setup is None:
            self.build()
        start = time.perf_counter()
        check_tensor("x", x, ndim_min=1)
        lin = self.model.linearise(x, t)
        if self.u_prev is None:
            self.u_prev = torch.zeros(lin.nu, dtype=x.dtype, device=x.device)
        if x.shape != (lin.nx,):
            raise ShapeError("x", f"expected shape ({lin.nx},), got {tuple(x.shape)}")
        self.last = self.backend.solve(lin, x, self.model.reference(t), self.u_prev)
        u = self.last.controls[0].to(dtype=x.dtype, device=x.device)
        self.u_prev = u
        self._timer.steps.append(time.perf_counter() - start)
        return u

    @property
    def timing(self) -> ControllerTiming:
        return self._timer.timing
