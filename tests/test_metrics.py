"""Tests of flowctl.metrics against scikit-image and against closed-form cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from flowctl.errors import InvalidArgumentError, NonFiniteError, ShapeError
from flowctl.metrics import psnr, ssim, straightness, velocity_angle

FAST = settings(max_examples=25, deadline=None)

SKIMAGE_SSIM = dict(gaussian_weights=True, sigma=1.5, use_sample_covariance=False)


def _sk_ssim(a: np.ndarray, b: np.ndarray, data_range: float, **kwargs) -> np.ndarray:
    """skimage SSIM per batch element; (B, C, H, W) uses channel_axis=0 per image."""
    options = {**SKIMAGE_SSIM, **kwargs}
    channel_axis = 0 if a.ndim == 4 else None
    return np.array(
        [
            structural_similarity(
                a[i], b[i], data_range=data_range, channel_axis=channel_axis, **options
            )
            for i in range(a.shape[0])
        ]
    )


def _smooth_images(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Smooth images in [-1, 1]: random sums of low-frequency sinusoids."""
    height, width = shape[-2:]
    yy, xx = np.meshgrid(np.linspace(0, 1, height), np.linspace(0, 1, width), indexing="ij")
    out = np.zeros(shape)
    for _ in range(3):
        fy, fx, phase = rng.uniform(0.5, 3.0), rng.uniform(0.5, 3.0), rng.uniform(0, 2 * np.pi)
        amp = rng.uniform(0.1, 0.3, size=shape[:-2] + (1, 1))
        out += amp * np.sin(2 * np.pi * (fy * yy + fx * xx) + phase)
    return np.clip(out, -1, 1)


# ---------------------------------------------------------------- PSNR


image_batches = st.tuples(
    st.integers(1, 3), st.integers(1, 3), st.integers(2, 9), st.integers(2, 9)
).flatmap(
    lambda shape: st.tuples(
        *[
            hnp.arrays(
                np.float64,
                shape,
                elements=st.floats(-1, 1, allow_subnormal=False, width=64),
            )
            for _ in range(2)
        ]
    )
)


@FAST
@given(pair=image_batches, data_range=st.sampled_from([1.0, 2.0, 255.0, 0.37]))
def test_psnr_matches_skimage(pair, data_range):
    a, b = pair
    ours = psnr(torch.from_numpy(a), torch.from_numpy(b), data_range=data_range)
    with np.errstate(divide="ignore"):
        theirs = np.array(
            [peak_signal_noise_ratio(b[i], a[i], data_range=data_range) for i in range(len(a))]
        )
    assert ours.dtype == torch.float64 and ours.shape == (len(a),)
    np.testing.assert_allclose(ours.numpy(), theirs, rtol=0, atol=1e-10)


def test_psnr_identical_is_inf():
    x = torch.randn(3, 2, 4, 4)
    assert torch.equal(psnr(x, x.clone(), data_range=2.0), torch.full((3,), math.inf).double())


@FAST
@given(seed=st.integers(0, 2**32 - 1), factor=st.floats(1e-3, 1e3))
def test_psnr_scale_invariant(seed, factor):
    rng = np.random.default_rng(seed)
    x, ref = torch.from_numpy(rng.uniform(-1, 1, (2, 3, 5, 5))), torch.from_numpy(
        rng.uniform(-1, 1, (2, 3, 5, 5))
    )
    base = psnr(x, ref, data_range=2.0)
    scaled = psnr(factor * x, factor * ref, data_range=2.0 * factor)
    torch.testing.assert_close(scaled, base, rtol=0, atol=1e-10)


def test_psnr_float32_input_returns_float64():
    x = torch.zeros(2, 4)
    out = psnr(x, x + 0.1, data_range=1.0)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, torch.full((2,), 20.0, dtype=torch.float64))


# ---------------------------------------------------------------- SSIM


@pytest.mark.parametrize("shape", [(3, 1, 16, 16), (2, 3, 12, 20), (2, 14, 11)])
@pytest.mark.parametrize("data_range", [2.0, 1.0, 255.0])
def test_ssim_matches_skimage_random(shape, data_range):
    rng = np.random.default_rng(hash((shape, data_range)) % 2**32)
    a = rng.uniform(0, data_range, shape)
    b = np.clip(a + rng.normal(0, 0.2 * data_range, shape), 0, data_range)
    ours = ssim(torch.from_numpy(a), torch.from_numpy(b), data_range=data_range)
    assert ours.dtype == torch.float64 and ours.shape == (shape[0],)
    np.testing.assert_allclose(ours.numpy(), _sk_ssim(a, b, data_range), rtol=0, atol=1e-10)


@pytest.mark.parametrize("noise", [0.01, 0.1, 0.5])
def test_ssim_matches_skimage_structured(noise):
    rng = np.random.default_rng(7)
    a = _smooth_images(rng, (2, 3, 24, 24))
    b = np.clip(a + noise * rng.normal(size=a.shape), -1, 1)
    ours = ssim(torch.from_numpy(a), torch.from_numpy(b), data_range=2.0)
    theirs = _sk_ssim(a, b, 2.0)
    np.testing.assert_allclose(ours.numpy(), theirs, rtol=0, atol=1e-10)
    assert (theirs < 1).all()


def test_ssim_default_window_is_skimage_window():
    # skimage's Gaussian SSIM filter has radius int(3.5 * sigma + 0.5) (truncate=3.5).
    assert 2 * int(3.5 * 1.5 + 0.5) + 1 == 11


@FAST
@given(seed=st.integers(0, 2**32 - 1), channels=st.integers(1, 3))
def test_ssim_properties(seed, channels):
    rng = np.random.default_rng(seed)
    x = torch.from_numpy(rng.uniform(-1, 1, (2, channels, 13, 15)))
    y = torch.from_numpy(rng.uniform(-1, 1, (2, channels, 13, 15)))
    assert torch.equal(ssim(x, x, data_range=2.0), torch.ones(2, dtype=torch.float64))
    xy, yx = ssim(x, y, data_range=2.0), ssim(y, x, data_range=2.0)
    torch.testing.assert_close(xy, yx, rtol=0, atol=1e-15)
    assert (xy <= 1).all()


def test_ssim_small_window_on_8x8():
    rng = np.random.default_rng(3)
    a = _smooth_images(rng, (2, 2, 8, 8))
    b = np.clip(a + 0.1 * rng.normal(size=a.shape), -1, 1)
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    # skimage's filter is sized by sigma alone: sigma = 0.8 gives radius int(3.3) = 3, 7 taps.
    ours = ssim(ta, tb, data_range=2.0, window_size=7, sigma=0.8)
    theirs = _sk_ssim(a, b, 2.0, sigma=0.8)
    np.testing.assert_allclose(ours.numpy(), theirs, rtol=0, atol=1e-10)
    small = ssim(ta, tb, data_range=2.0, window_size=3)
    assert small.shape == (2,) and bool(torch.isfinite(small).all()) and (small <= 1).all()


def test_ssim_too_small_image_raises():
    x = torch.rand(1, 1, 10, 12)
    with pytest.raises(ShapeError, match="smaller window_size") as info:
        ssim(x, x, data_range=1.0)
    assert info.value.argument == "x"


def test_ssim_bad_window_and_rank():
    x = torch.rand(1, 1, 12, 12)
    with pytest.raises(InvalidArgumentError) as info:
        ssim(x, x, data_range=1.0, window_size=4)
    assert info.value.argument == "window_size"
    with pytest.raises(ShapeError) as info:
        ssim(torch.rand(2, 144), torch.rand(2, 144), data_range=1.0)
    assert info.value.argument == "x"


# ---------------------------------------------------------------- velocity_angle


def test_velocity_angle_closed_forms():
    v = torch.randn(4, 3, 5, dtype=torch.float64)
    torch.testing.assert_close(velocity_angle(v, 2.5 * v), torch.zeros(4, dtype=torch.float64))
    torch.testing.assert_close(velocity_angle(v, -v), torch.full((4,), 180.0).double())
    e1 = torch.tensor([[1.0, 0.0, 0.0], [0.0, 3.0, 4.0]])
    e2 = torch.tensor([[0.0, 2.0, 0.0], [0.0, -4.0, 3.0]])
    torch.testing.assert_close(velocity_angle(e1, e2), torch.full((2,), 90.0).double())
    diagonal = velocity_angle(torch.tensor([[1.0, 0.0]]), torch.tensor([[1.0, 1.0]]))
    torch.testing.assert_close(diagonal, torch.tensor([45.0], dtype=torch.float64))


@FAST
@given(
    seed=st.integers(0, 2**32 - 1),
    a=st.floats(1e-3, 1e3),
    b=st.floats(1e-3, 1e3),
)
def test_velocity_angle_scale_invariant(seed, a, b):
    gen = torch.Generator().manual_seed(seed)
    v1 = torch.randn(3, 2, 4, generator=gen, dtype=torch.float64)
    v2 = torch.randn(3, 2, 4, generator=gen, dtype=torch.float64)
    base = velocity_angle(v1, v2)
    assert ((base >= 0) & (base <= 180)).all()
    torch.testing.assert_close(velocity_angle(a * v1, b * v2), base, rtol=0, atol=1e-9)
    torch.testing.assert_close(velocity_angle(v2, v1), base, rtol=0, atol=1e-12)


@pytest.mark.parametrize("which", ["v1", "v2"])
def test_velocity_angle_zero_vector_raises(which):
    v = torch.randn(3, 4)
    zero = v.clone()
    zero[1] = 0
    args = (zero, v) if which == "v1" else (v, zero)
    with pytest.raises(InvalidArgumentError) as info:
        velocity_angle(*args)
    assert info.value.argument == which


# ---------------------------------------------------------------- straightness


@st.composite
def decreasing_grids(draw):
    """Strictly decreasing grids from 1 to 0 with N in [2, 20] steps (no tiny steps)."""
    steps = draw(st.integers(2, 20))
    widths = np.array(draw(st.lists(st.floats(0.1, 1.0), min_size=steps, max_size=steps)))
    interior = 1.0 - np.cumsum(widths)[:-1] / widths.sum()
    return torch.from_numpy(np.concatenate([[1.0], interior, [0.0]]))


def _straight_path(sigmas: torch.Tensor, x0: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    s = sigmas.view(-1, *([1] * x0.dim()))
    return (1 - s) * x0 + s * eps


@FAST
@given(sigmas=decreasing_grids(), seed=st.integers(0, 2**32 - 1))
def test_straightness_zero_on_straight_paths(sigmas, seed):
    gen = torch.Generator().manual_seed(seed)
    x0 = torch.randn(3, 2, 4, 4, generator=gen, dtype=torch.float64)
    eps = torch.randn(3, 2, 4, 4, generator=gen, dtype=torch.float64)
    out = straightness(_straight_path(sigmas, x0, eps), sigmas)
    assert out.dtype == torch.float64 and out.shape == (3,)
    torch.testing.assert_close(out, torch.zeros(3, dtype=torch.float64), rtol=0, atol=1e-12)


def test_straightness_positive_on_curved_path():
    sigmas = torch.linspace(1, 0, 11, dtype=torch.float64)
    x0 = torch.randn(2, 8, dtype=torch.float64)
    eps = torch.randn(2, 8, dtype=torch.float64)
    s = sigmas.view(-1, 1, 1)
    curved = _straight_path(sigmas, x0, eps) + torch.sin(torch.pi * s) * torch.randn(2, 8).double()
    out = straightness(curved, sigmas)
    assert (out > 0.1).all()
    # Increasing sigmas are accepted too; a straight path stays at zero.
    flipped = sigmas.flip(0)
    zero = straightness(_straight_path(flipped, x0, eps), flipped)
    torch.testing.assert_close(zero, torch.zeros(2, dtype=torch.float64), rtol=0, atol=1e-12)


def test_straightness_bad_inputs():
    x = torch.randn(2, 3, 4)
    with pytest.raises(InvalidArgumentError) as info:
        straightness(x, torch.tensor([1.0, 0.0]))
    assert info.value.argument == "states"
    with pytest.raises(ShapeError) as info:
        straightness(torch.randn(4, 3, 4), torch.tensor([1.0, 0.5, 0.0]))
    assert info.value.argument == "sigmas"
    with pytest.raises(InvalidArgumentError) as info:
        straightness(torch.randn(4, 3, 4), torch.tensor([1.0, 0.5, 0.5, 0.0]))
    assert info.value.argument == "sigmas"
    with pytest.raises(InvalidArgumentError) as info:
        straightness(torch.randn(4, 3, 4), torch.tensor([1.0, 0.2, 0.5, 0.0]))
    assert info.value.argument == "sigmas"


# ---------------------------------------------------------------- validation


def _calls(bad_first: bool, bad: torch.Tensor, good: torch.Tensor):
    """(name, call) pairs with ``bad`` in the first or second tensor argument."""
    first, second = (bad, good) if bad_first else (good, bad)
    return [
        (("x", "ref"), lambda: psnr(first, second, data_range=1.0)),
        (("x", "ref"), lambda: ssim(first, second, data_range=1.0, window_size=3)),
        (("v1", "v2"), lambda: velocity_angle(first, second)),
    ]


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("bad_first", [True, False])
def test_non_finite_raises(value, bad_first):
    good = torch.rand(2, 1, 5, 5)
    bad = good.clone()
    bad[1, 0, 2, 3] = value
    for names, call in _calls(bad_first, bad, good):
        with pytest.raises(NonFiniteError) as info:
            call()
        assert info.value.argument == names[0 if bad_first else 1]
    with pytest.raises(NonFiniteError) as info:
        straightness(bad, torch.tensor([1.0, 0.5]))
    assert info.value.argument == "states"
    with pytest.raises(NonFiniteError) as info:
        straightness(torch.rand(3, 2, 4), torch.tensor([1.0, value, 0.0]))
    assert info.value.argument == "sigmas"


def test_shape_mismatch_raises():
    x, other = torch.rand(2, 1, 5, 5), torch.rand(2, 1, 5, 6)
    for names, call in _calls(True, x, other):
        with pytest.raises(ShapeError) as info:
            call()
        assert info.value.argument == names[1]


def test_missing_batch_axis_and_dtype_raise():
    with pytest.raises(ShapeError) as info:
        psnr(torch.rand(5), torch.rand(5), data_range=1.0)
    assert info.value.argument == "x"
    with pytest.raises(ShapeError) as info:
        straightness(torch.rand(3, 4), torch.tensor([1.0, 0.5, 0.0]))
    assert info.value.argument == "states"
    with pytest.raises(InvalidArgumentError) as info:
        velocity_angle(torch.ones(2, 3, dtype=torch.int64), torch.ones(2, 3))
    assert info.value.argument == "v1"


@pytest.mark.parametrize("data_range", [0.0, -1.0])
def test_data_range_must_be_positive(data_range):
    x = torch.rand(1, 1, 5, 5)
    for metric in (psnr, ssim):
        with pytest.raises(InvalidArgumentError) as info:
            metric(x, x, data_range=data_range)
        assert info.value.argument == "data_range"
