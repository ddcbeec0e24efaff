"""Time grids: a generic monotone grid for ODEs and SD3's shifted sigma grid.

A sigma grid runs ``sigma_0 > sigma_1 > ... > sigma_N = 0`` with ``sigma_0`` in (0, 1], 1 for a
run from pure noise (sigma = 1 is noise, 0 is data); :class:`SigmaGrid` enforces it. A plain
:class:`Grid` is any strictly monotone grid: ordinary time for toy ODEs, or a piece of a sigma
grid (a transition's horizon, an inversion from data back to noise).

:meth:`SigmaGrid.create` reproduces diffusers' ``FlowMatchEulerDiscreteScheduler``
(diffusers 0.42.1) bit for bit in float32, including its quirks: the training grid's smallest
sigma is already shifted when ``set_timesteps`` shifts the inference grid again (diffusers issue
13243), and with dynamic shifting (``mu``) the shift replaces ``shift``.
"""

from __future__ import annotations

import functools
import math
import sys
from dataclasses import dataclass

import numpy as np
import torch

from .._checks import check_device, check_int, check_real, check_tensor
from ..errors import InvalidArgumentError, NonFiniteError, ShapeError, UnknownNameError

TIME_SHIFTS = ("exponential", "linear")
SIGMA_ROUNDING = 1e-5
"""How far above 1 a sigma grid may start: diffusers' float32 shift formula rounds 1 up by
about 6e-7 at small shifts."""
MAX_STEPS = 1_000_000
"""The most steps a grid is built with: a guard against a typo allocating a huge grid (float32
sigmas stay distinct up to about this many steps)."""
MU_MAX = math.log(sys.float_info.max)
"""The largest exponential dynamic shift ``mu``: ``exp(mu)`` overflows float64 beyond it."""


@dataclass(frozen=True, eq=False)
class Grid:
    """A strictly monotone 1-D grid of times ``t_0, ..., t_N`` (ascending or descending).

    It may end anywhere: ordinary time for a toy ODE, or a piece of a sigma grid (a transition's
    horizon, an inversion from data towards noise). A flow model's run from noise to data takes
    a :class:`SigmaGrid`, which must end at 0. Finite, 1-D, >= 2 times, no repeats; else
    :class:`InvalidArgumentError` naming ``values``.

    Attributes:
        values: the N + 1 grid times; its dtype is the dtype step sizes are computed in.
    """

    values: torch.Tensor

    def __post_init__(self) -> None:
        values = check_tensor("values", self.values, ndim_min=1, finite=False)
        if values.dim() != 1 or values.numel() < 2:
            raise ShapeError("values", f"expected a 1-D grid of >= 2 times, got {tuple(values.shape)}")
        v = self._host_values  # the one host copy every check reads
        if not np.isfinite(v).all():
            raise NonFiniteError("values", "contains NaN or Inf")
        d = np.diff(v)
        if not ((d > 0).all() or (d < 0).all()):
            raise InvalidArgumentError("values", f"grid times must be strictly monotone (no repeats), got {_shown(v)}")

    @classmethod
    def uniform(cls, t0: float, t1: float, steps: int, *, dtype: torch.dtype = torch.float64) -> Grid:
        """``steps`` equal steps from ``t0`` to ``t1`` (either direction), in the floating ``dtype``."""
        steps = check_int("steps", steps, minimum=1, maximum=MAX_STEPS)
        t0, t1 = check_real("t0", t0), check_real("t1", t1)
        if t0 == t1:
            raise InvalidArgumentError("t1", "must differ from t0")
        if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
            raise InvalidArgumentError("dtype", f"expected a real floating-point torch dtype, got {dtype!r}")
        return cls(torch.linspace(t0, t1, steps + 1, dtype=dtype))

    @property
    def steps(self) -> int:
        """Number of steps N (one less than the number of grid times)."""
        return self.values.numel() - 1

    def t(self, i: int) -> torch.Tensor:
        """Grid time ``t_i`` as a 0-dim tensor (``i`` indexes as Python does: -1 is the last)."""
        try:
            return self.values[i]
        except (IndexError, TypeError):  # costs nothing unless raised: loops call this every step
            raise InvalidArgumentError("i", f"expected a grid index in [0, {self.steps}], got {i!r}") from None

    def dt(self, i: int) -> torch.Tensor:
        """Signed step ``t_{i+1} - t_i`` (negative on a sigma grid), computed in the grid's dtype."""
        try:
            return self.values[i + 1] - self.values[i]
        except (IndexError, TypeError):
            raise InvalidArgumentError("i", f"expected a step index in [0, {self.steps - 1}], got {i!r}") from None

    def position(self, t: float | torch.Tensor) -> float:
        """Fractional step index of time ``t``: ``i`` at ``t_i``, linear in t between grid times.

        Times outside the grid are extrapolated linearly from the nearest step.
        """
        try:
            t = float(t)
        except (TypeError, ValueError, RuntimeError):
            raise InvalidArgumentError("t", f"expected a time (a number), got {t!r}") from None
        if t != t:
            raise NonFiniteError("t", "is NaN")
        v = self._ascending_values
        n = len(v) - 1
        j = int(np.clip(np.searchsorted(v, t, side="right") - 1, 0, n - 1))
        pos = j + (t - v[j]) / (v[j + 1] - v[j])
        return pos if self._ascending else n - pos

    @functools.cached_property
    def _host_values(self) -> np.ndarray:
        """The grid times in float64 on the CPU (copied once per grid)."""
        return self.values.detach().cpu().double().numpy()

    @functools.cached_property
    def _ascending(self) -> bool:
        return bool(self._host_values[1] > self._host_values[0])

    @functools.cached_property
    def _ascending_values(self) -> np.ndarray:
        """The grid times ascending, in float64 on the CPU."""
        v = self._host_values
        return v if self._ascending else v[::-1].copy()


@dataclass(frozen=True, eq=False)
class SigmaGrid(Grid):
    """A flow model's sigma grid; :meth:`create` builds SD3's for (steps, shift), equal to
    diffusers' FlowMatchEulerDiscreteScheduler.

    ``values`` descend strictly from ``sigma_0`` in (0, 1] to exactly 0, N + 1 of them (a run from
    pure noise starts at 1, up to the float32 rounding of diffusers' shift formula; an
    image-to-image run starts lower); anything else raises :class:`InvalidArgumentError` naming
    ``values``. The model's timestep at step i is ``sigma_i * num_train_timesteps``.

    Attributes:
        shift: static shift (``sigma -> shift sigma / (1 + (shift - 1) sigma)``, > 0); unused when
            ``mu`` is given.
        mu: dynamic (resolution-dependent) shift, or None for the static one.
        time_shift: "exponential" or "linear", the form of the dynamic shift.
        num_train_timesteps: the scheduler's training timesteps (1000 for SD3).
    """

    shift: float = 1.0
    mu: float | None = None
    time_shift: str = "exponential"
    num_train_timesteps: int = 1000

    def __post_init__(self) -> None:
        super().__post_init__()
        problem = sigma_grid_problem(self._host_values)
        if problem:
            raise InvalidArgumentError("values", problem)
        for name, value in zip(("shift", "mu", "time_shift", "num_train_timesteps"), _settings(self.shift, self.mu, self.time_shift, self.num_train_timesteps)):
            object.__setattr__(self, name, value)

    @classmethod
    def create(
        cls,
        steps: int,
        shift: float = 3.0,
        *,
        mu: float | None = None,
        time_shift: str = "exponential",
        num_train_timesteps: int = 1000,
        device: torch.device | str | None = None,
    ) -> SigmaGrid:
        """The grid diffusers' scheduler builds with ``set_timesteps(steps, mu=mu)``.

        Args:
            steps: number of denoising steps N, 1 <= N <= :data:`MAX_STEPS`.
            shift: the scheduler's ``shift`` (> 0); SD3 uses 3.0.
            mu: when given, dynamic shifting (``use_dynamic_shifting=True``) with this ``mu``:
                at most :data:`MU_MAX` for the exponential form, > 0 for the linear one.
            time_shift: form of the dynamic shift, "exponential" (SD3, Flux) or "linear".
            num_train_timesteps: the scheduler's ``num_train_timesteps`` (1 to :data:`MAX_STEPS`).
            device: where the sigma tensor lives (one this machine has).

        Raises:
            InvalidArgumentError: a bad argument, or settings so extreme that the float32 sigmas
                do not descend strictly to 0 (it names ``mu``, or ``shift`` without it).
        """
        steps = check_int("steps", steps, minimum=1, maximum=MAX_STEPS)
        shift, mu, time_shift, n_train = _settings(shift, mu, time_shift, num_train_timesteps)
        device = None if device is None else check_device("device", device)

        # The scheduler's constructor: float32 training sigmas, statically shifted unless dynamic.
        train = torch.from_numpy(np.linspace(1, n_train, n_train, dtype=np.float32)[::-1].copy())
        train = train / n_train
        if mu is None:
            train = shift * train / (1 + (shift - 1) * train)
        sigma_max, sigma_min = train[0].item(), train[-1].item()

        # set_timesteps: float64 linspace over timesteps, shifted (again), then float32.
        with np.errstate(all="ignore"):  # extreme settings give inf or NaN, refused below
            sig = np.linspace(sigma_max * n_train, sigma_min * n_train, steps) / n_train
            if mu is None:
                sig = shift * sig / (1 + (shift - 1) * sig)
            elif time_shift == "exponential":
                sig = math.exp(mu) / (math.exp(mu) + (1 / sig - 1) ** 1.0)
            else:
                sig = mu / (mu + (1 / sig - 1) ** 1.0)
        values = torch.cat([torch.from_numpy(sig).to(torch.float32), torch.zeros(1)])
        problem = sigma_grid_problem(values.double().numpy())
        if problem:
            raise InvalidArgumentError("shift" if mu is None else "mu", f"{problem} (steps={steps}, shift={shift}, mu={mu})")
        return cls(values.to(device), shift=shift, mu=mu, time_shift=time_shift, num_train_timesteps=n_train)

    @property
    def sigmas(self) -> torch.Tensor:
        """The N + 1 sigmas, float32, from 1 to 0."""
        return self.values

    @property
    def timesteps(self) -> torch.Tensor:
        """The N model timesteps ``sigma_i * num_train_timesteps`` (float32), as diffusers has them."""
        return self.values[:-1] * self.num_train_timesteps

    def timestep(self, i: int) -> torch.Tensor:
        """Model timestep at step i (0-dim float32)."""
        return self.t(i) * self.num_train_timesteps

    @property
    def key(self) -> tuple:
        """What identifies the grid: (steps, shift, mu, time_shift, num_train_timesteps)."""
        return (self.steps, self.shift, self.mu, self.time_shift, self.num_train_timesteps)


def _settings(shift: object, mu: object, time_shift: object, num_train_timesteps: object) -> tuple[float, float | None, str, int]:
    """A sigma grid's scheduler settings, checked: (shift, mu, time_shift, num_train_timesteps)."""
    shift = check_real("shift", shift, positive=True)
    if time_shift not in TIME_SHIFTS:
        raise UnknownNameError("time_shift", time_shift, list(TIME_SHIFTS))
    if mu is not None:
        mu = check_real("mu", mu, positive=True) if time_shift == "linear" else check_real("mu", mu, high=MU_MAX)
    return shift, mu, time_shift, check_int("num_train_timesteps", num_train_timesteps, minimum=1, maximum=MAX_STEPS)


def sigma_grid_problem(v: np.ndarray) -> str | None:
    """What keeps float64 host values from being a sigma grid (strictly descending from (0, 1]
    to exactly 0), or None."""
    if not np.isfinite(v).all():
        return "sigmas must be finite"
    if not (np.diff(v) < 0).all() or v[-1] != 0 or not 0 < v[0] <= 1 + SIGMA_ROUNDING:
        return f"sigmas must descend strictly from (0, 1] to exactly 0, got {_shown(v)}"
    return None


def _shown(v: np.ndarray) -> str:
    """Grid values for a message: all of a short grid, the ends of a long one."""
    return str(v.tolist()) if v.size <= 8 else f"{v[:4].tolist()} ... {v[-4:].tolist()}"
