"""Image and trajectory metrics, per batch element.

Every function takes torch tensors batched on the first axis and returns a float64 tensor of
shape ``(B,)``, whatever the input dtype (the computation is done in float64). Units: PSNR in
dB, SSIM dimensionless (at most 1), angles in degrees, straightness in data units (the units
of ``x``).

Conventions (docs/conventions.md): ``sigma = 1`` is pure noise and ``sigma = 0`` is data;
``x_sigma = (1 - sigma) x0 + sigma eps``, the model predicts ``v = eps - x0`` and the denoised
estimate is ``x0_hat = x - sigma v``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ._checks import check_int, check_real, check_same_shape, check_tensor
from .errors import InvalidArgumentError, ShapeError

__all__ = ["psnr", "ssim", "velocity_angle", "straightness"]

_K1 = 0.01
_K2 = 0.03


def _real(name: str, x: object, *, ndim_min: int) -> torch.Tensor:
    """Check that ``x`` is a finite real floating-point tensor; return it in float64."""
    return check_tensor(name, x, ndim_min=ndim_min).to(torch.float64)


def _batched(name: str, x: object, *, ndim_min: int, batch_axis: int = 0) -> torch.Tensor:
    """Like :func:`_real`, and each batch element must hold at least one value."""
    x = _real(name, x, ndim_min=ndim_min)
    if math.prod(x.shape[batch_axis + 1 :]) == 0:
        raise ShapeError(name, f"has no values per batch element: shape {tuple(x.shape)}")
    return x


def _pair(x: object, ref: object) -> tuple[torch.Tensor, torch.Tensor]:
    a = _batched("x", x, ndim_min=2)
    b = _batched("ref", ref, ndim_min=2)
    check_same_shape("ref", b, "x", a)
    return a, b


def psnr(x: torch.Tensor, ref: torch.Tensor, *, data_range: float) -> torch.Tensor:
    """Peak signal-to-noise ratio ``10 log10(data_range^2 / MSE)`` in dB, shape ``(B,)``, float64.

    The MSE is taken per batch element over all non-batch axes. ``data_range`` is the width of
    the value range (2 for images in [-1, 1], 1 for [0, 1], 255 for uint8-valued). Identical
    inputs give ``+inf``.
    """
    a, b = _pair(x, ref)
    data_range = check_real("data_range", data_range, positive=True)
    mse = (a - b).square().flatten(1).mean(dim=1)
    return 10 * torch.log10(data_range**2 / mse)


def _gaussian_window(window_size: int, sigma: float) -> torch.Tensor:
    """Normalised 1-D Gaussian, ``window_size`` taps, built as scipy.ndimage builds its kernel."""
    radius = (window_size - 1) // 2
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
    taps = torch.exp(-0.5 / sigma**2 * offsets.square())
    return taps / taps.sum()


def ssim(
    x: torch.Tensor,
    ref: torch.Tensor,
    *,
    data_range: float,
    window_size: int = 11,
    sigma: float = 1.5,
) -> torch.Tensor:
    """Structural similarity (Wang et al. 2004), shape ``(B,)``, float64, at most 1.

    Inputs are ``(B, C, H, W)`` or ``(B, H, W)`` (one channel). Local statistics use a
    normalised Gaussian window of ``window_size`` taps (odd) and standard deviation ``sigma``
    pixels, K1 = 0.01, K2 = 0.03 and population covariances; the SSIM map is averaged over the
    valid region (positions where the whole window fits) and over channels.

    This equals scikit-image's ``structural_similarity(..., data_range=data_range,
    gaussian_weights=True, sigma=sigma, use_sample_covariance=False, channel_axis=0)`` per image
    when ``window_size == 2 * int(3.5 * sigma + 0.5) + 1`` (11 for sigma = 1.5). skimage sizes
    its filter from ``sigma`` alone and uses ``win_size`` only to crop the border, so for any
    other ``window_size`` the two differ.
    """
    a, b = _pair(x, ref)
    if a.dim() not in (3, 4):
        raise ShapeError("x", f"expected shape (B, C, H, W) or (B, H, W), got {tuple(a.shape)}")
    data_range = check_real("data_range", data_range, positive=True)
    window_size = check_int("window_size", window_size, minimum=1)
    if window_size % 2 == 0:
        raise InvalidArgumentError("window_size", f"must be odd, got {window_size}")
    sigma = check_real("sigma", sigma, positive=True)
    height, width = a.shape[-2:]
    if height < window_size or width < window_size:
        raise ShapeError(
            "x",
            f"spatial size {height}x{width} is smaller than window_size={window_size}; "
            f"pass a smaller window_size (odd, at most {min(height, width)})",
        )

    batch = a.shape[0]
    channels = a.shape[1] if a.dim() == 4 else 1
    a = a.reshape(batch * channels, 1, height, width)
    b = b.reshape(batch * channels, 1, height, width)
    # One depthwise pass over all five moments: mean of x, y and of x^2, y^2, xy.
    moments = torch.cat([a, b, a * a, b * b, a * b], dim=1)
    taps = _gaussian_window(window_size, sigma).to(a.device)
    weight_h = taps.view(1, 1, window_size, 1).expand(5, 1, window_size, 1)
    weight_w = taps.view(1, 1, 1, window_size).expand(5, 1, 1, window_size)
    filtered = F.conv2d(F.conv2d(moments, weight_h, groups=5), weight_w, groups=5)
    ux, uy, uxx, uyy, uxy = filtered.unbind(dim=1)
    vx = uxx - ux * ux
    vy = uyy - uy * uy
    vxy = uxy - ux * uy

    c1 = (_K1 * data_range) ** 2
    c2 = (_K2 * data_range) ** 2
    numerator = (2 * ux * uy + c1) * (2 * vxy + c2)
    denominator = (ux**2 + uy**2 + c1) * (vx + vy + c2)
    ssim_map = numerator / denominator
    return ssim_map.flatten(1).mean(dim=1).view(batch, channels).mean(dim=1)


def _unit_rows(name: str, v: torch.Tensor) -> torch.Tensor:
    """Rows of ``v`` (flattened per batch element) scaled to unit length; zero rows raise."""
    rows = v.flatten(1)
    scale = rows.abs().amax(dim=1, keepdim=True)
    zero = (scale == 0).squeeze(1)
    if bool(zero.any()):
        index = int(zero.nonzero()[0, 0])
        raise InvalidArgumentError(name, f"batch element {index} is zero and has no direction")
    rows = rows / scale  # guards the norm against overflow
    return rows / torch.linalg.vector_norm(rows, dim=1, keepdim=True)


def velocity_angle(v1: torch.Tensor, v2: torch.Tensor) -> torch.Tensor:
    """Angle between two velocity fields in degrees, in [0, 180], shape ``(B,)``, float64.

    Each batch element is flattened over its non-batch axes. Computed as
    ``2 atan2(|u1 - u2|, |u1 + u2|)`` on the unit vectors ``u1``, ``u2``, which equals
    ``arccos`` of the cosine clamped to [-1, 1] but stays accurate near 0 and 180 degrees.
    """
    a = _batched("v1", v1, ndim_min=2)
    b = _batched("v2", v2, ndim_min=2)
    check_same_shape("v2", b, "v1", a)
    u1 = _unit_rows("v1", a)
    u2 = _unit_rows("v2", b)
    half = torch.atan2(
        torch.linalg.vector_norm(u1 - u2, dim=1), torch.linalg.vector_norm(u1 + u2, dim=1)
    )
    return torch.rad2deg(2 * half)


def straightness(states: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """Total change of the denoised estimate along a path, in data units, shape ``(B,)``, float64.

    ``states`` is ``(N + 1, B, ...)``: the states ``x_0 .. x_N`` on the strictly monotone grid
    ``sigmas`` (1-D, length ``N + 1``, ``N >= 2``; either direction and ending anywhere, since a
    piece of a run, or an inversion towards noise, is a path too). Step ``i`` has slope
    ``s_i = (x_{i+1} - x_i) / (sigma_{i+1} - sigma_i)`` (for Euler, the model velocity at ``x_i``)
    and denoised estimate ``x0_hat_i = x_i - sigma_i s_i``. The result is the sum over ``i`` of
    the RMS over non-batch axes of ``x0_hat_{i+1} - x0_hat_i``: 0 for a straight path
    ``x_i = (1 - sigma_i) x0 + sigma_i eps``.
    """
    xs = _batched("states", states, ndim_min=3, batch_axis=1)
    sig = _real("sigmas", sigmas, ndim_min=1)
    if sig.dim() != 1:
        raise ShapeError("sigmas", f"expected a 1-D tensor, got shape {tuple(sig.shape)}")
    if sig.shape[0] != xs.shape[0]:
        raise ShapeError(
            "sigmas",
            f"length {sig.shape[0]} does not match the {xs.shape[0]} states along states' axis 0",
        )
    steps = xs.shape[0] - 1
    if steps < 2:
        raise InvalidArgumentError(
            "states", f"needs at least 3 states (N >= 2 steps), got {xs.shape[0]}"
        )
    sig = sig.to(xs.device)
    dsig = sig[1:] - sig[:-1]
    if not (bool((dsig > 0).all()) or bool((dsig < 0).all())):
        raise InvalidArgumentError("sigmas", "must be strictly monotone")

    bcast = (steps,) + (1,) * (xs.dim() - 1)
    slopes = (xs[1:] - xs[:-1]) / dsig.view(bcast)
    x0_hat = xs[:-1] - sig[:-1].view(bcast) * slopes
    change = (x0_hat[1:] - x0_hat[:-1]).flatten(2)
    return change.square().mean(dim=2).sqrt().sum(dim=0)
