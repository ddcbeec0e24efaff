"""Time grids: a generic monotone grid for ODEs and SD3's shifted sigma grid.

A sigma grid runs ``sigma_0 = 1 > sigma_1 > ... > sigma_N = 0`` (sigma = 1 is noise, 0 is
data). :meth:`SigmaGrid.create` reproduces diffusers' ``FlowMatchEulerDiscreteScheduler``
(diffusers 0.42.1) bit for bit in float32, including its quirks: the training grid's smallest
sigma is already shifted when ``set_timesteps`` shifts the inference grid again (diffusers issue
13243), and with dynamic shifting (``mu``) the shift replaces ``shift``.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import torch

from .._checks import check_int, check_real, check_tensor
from ..errors import InvalidArgumentError, ShapeError, UnknownNameError

TIME_SHIFTS = ("exponential", "linear")


@dataclass(frozen=True, eq=False)
class Grid:
    """A strictly monotone 1-D grid of times ``t_0, ..., t_N`` (ascending or descending).

    Attributes:
        values: the N + 1 grid times; its dtype is the dtype step sizes are computed in.
    """

    values: torch.Tensor

    def __post_init__(self) -> None:
        values = check_tensor("values", self.values, ndim_min=1)
        if values.dim() != 1 or values.numel() < 2:
            raise ShapeError("values", f"expected a 1-D grid of >= 2 times, got {tuple(values.shape)}")
        d = values[1:] - values[:-1]
        if not (bool((d > 0).all()) or bool((d < 0).all())):
            raise InvalidArgumentError("values", "grid times must be strictly monotone")

    @classmethod
    def uniform(cls, t0: float, t1: float, steps: int, *, dtype: torch.dtype = torch.float64) -> Grid:
        """``steps`` equal steps from ``t0`` to ``t1`` (either direction)."""
        steps = check_int("steps", steps, minimum=1)
        t0, t1 = check_real("t0", t0), check_real("t1", t1)
        if t0 == t1:
            raise InvalidArgumentError("t1", "must differ from t0")
        return cls(torch.linspace(t0, t1, steps + 1, dtype=dtype))

    @property
    def steps(self) -> int:
        """Number of steps N (one less than the number of grid times)."""
        return self.values.numel() - 1

    def t(self, i: int) -> torch.Tensor:
        """Grid time ``t_i`` as a 0-dim tensor."""
        return self.values[i]

    def dt(self, i: int) -> torch.Tensor:
        """Signed step ``t_{i+1} - t_i`` (negative on a sigma grid), computed in the grid's dtype."""
        return self.values[i + 1] - self.values[i]

    def position(self, t: float | torch.Tensor) -> float:
        """Fractional step index of time ``t``: ``i`` at ``t_i``, linear in t between grid times.

        Times outside the grid are extrapolated linearly from the nearest step.
        """
        t = float(t)
        v = self._ascending_values
        n = len(v) - 1
        j = int(np.clip(np.searchsorted(v, t, side="right") - 1, 0, n - 1))
        pos = j + (t - v[j]) / (v[j + 1] - v[j])
        return pos if self._ascending else n - pos

    @functools.cached_property
    def _ascending(self) -> bool:
        return bool(self.values[1] > self.values[0])

    @functools.cached_property
    def _ascending_values(self) -> np.ndarray:
        """The grid times ascending, in float64 on the CPU (copied once per grid)."""
        v = self.values.detach().cpu().double().numpy()
        return v if self._ascending else v[::-1].copy()


@dataclass(frozen=True, eq=False)
class SigmaGrid(Grid):
    """SD3's sigma grid for (steps, shift), equal to diffusers' FlowMatchEulerDiscreteScheduler.

    Build it with :meth:`create`. ``values`` are float32 sigmas from 1 down to 0 (N + 1 of them;
    the first is 1 up to the float32 rounding of diffusers' shift formula);
    the model's timestep at step i is ``sigma_i * num_train_timesteps``.

    Attributes:
        shift: static shift (``sigma -> shift sigma / (1 + (shift - 1) sigma)``); unused when ``mu``
            is given.
        mu: dynamic (resolution-dependent) shift, or None for the static one.
        time_shift: "exponential" or "linear", the form of the dynamic shift.
        num_train_timesteps: the scheduler's training timesteps (1000 for SD3).
    """

    shift: float = 1.0
    mu: float | None = None
    time_shift: str = "exponential"
    num_train_timesteps: int = 1000

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
            steps: number of denoising steps N >= 1.
            shift: the scheduler's ``shift`` (> 0); SD3 uses 3.0.
            mu: when given, dynamic shifting (``use_dynamic_shifting=True``) with this ``mu``.
            time_shift: form of the dynamic shift, "exponential" (SD3, Flux) or "linear".
            num_train_timesteps: the scheduler's ``num_train_timesteps``.
            device: where the sigma tensor lives.
        """
        steps = check_int("steps", steps, minimum=1)
        shift = check_real("shift", shift, positive=True)
        num_train_timesteps = check_int("num_train_timesteps", num_train_timesteps, minimum=1)
        if time_shift not in TIME_SHIFTS:
            raise UnknownNameError("time_shift", time_shift, list(TIME_SHIFTS))
        if mu is not None:
            mu = check_real("mu", mu)
        n_train = num_train_timesteps

        # The scheduler's constructor: float32 training sigmas, statically shifted unless dynamic.
        train = torch.from_numpy(np.linspace(1, n_train, n_train, dtype=np.float32)[::-1].copy())
        train = train / n_train
        if mu is None:
            train = shift * train / (1 + (shift - 1) * train)
        sigma_max, sigma_min = train[0].item(), train[-1].item()

        # set_timesteps: float64 linspace over timesteps, shifted (again), then float32.
        sig = np.linspace(sigma_max * n_train, sigma_min * n_train, steps) / n_train
        if mu is None:
            sig = shift * sig / (1 + (shift - 1) * sig)
        elif time_shift == "exponential":
            sig = math.exp(mu) / (math.exp(mu) + (1 / sig - 1) ** 1.0)
        else:
            sig = mu / (mu + (1 / sig - 1) ** 1.0)
        values = torch.cat([torch.from_numpy(sig).to(torch.float32), torch.zeros(1)]).to(device)
        return cls(values, shift=shift, mu=mu, time_shift=time_shift, num_train_timesteps=n_train)

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
        return self.values[i] * self.num_train_timesteps

    @property
    def key(self) -> tuple:
        """What identifies the grid: (steps, shift, mu, time_shift, num_train_timesteps)."""
        return (self.steps, self.shift, self.mu, self.time_shift, self.num_train_timesteps)
