"""Tests of flowctl.bench.figures: PNG bytes decoded by hand, grid layout, Pareto fronts, SVG."""

from __future__ import annotations

import itertools
import math
import os
import re
import struct
import xml.etree.ElementTree as ET
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from flowctl.bench.figures import (
    image_grid,
    pareto_front,
    speedup_psnr_svg,
    write_png,
    write_text,
)
from flowctl.errors import InvalidArgumentError, NonFiniteError, ShapeError

SVG = "{http://www.w3.org/2000/svg}"

# ----------------------------------------------------------------------------- PNG


def _read_png(data: bytes) -> np.ndarray:
    """Decode an 8-bit, non-interlaced, filter-0 PNG to (H, W, C) uint8, checking every CRC."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    chunks, pos = [], 8
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        tag, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert crc == zlib.crc32(tag + body) & 0xFFFFFFFF, tag
        chunks.append((tag, body))
        pos += 12 + length
    assert chunks[0][0] == b"IHDR" and chunks[-1] == (b"IEND", b"")
    width, height, depth, colour, compression, filtering, interlace = struct.unpack(
        ">IIBBBBB", chunks[0][1]
    )
    assert (depth, compression, filtering, interlace) == (8, 0, 0, 0)
    channels = {0: 1, 2: 3}[colour]
    raw = zlib.decompress(b"".join(body for tag, body in chunks if tag == b"IDAT"))
    rows = np.frombuffer(raw, dtype=np.uint8).reshape(height, 1 + width * channels)
    assert (rows[:, 0] == 0).all(), "every row must use filter type 0"
    return rows[:, 1:].reshape(height, width, channels)


def _expected_pixels(image: torch.Tensor, lo: float, hi: float) -> np.ndarray:
    """The documented quantisation, in numpy, as (H, W, C)."""
    x = np.clip(image.numpy().astype(np.float64), lo, hi)
    q = np.round((x - lo) / (hi - lo) * 255.0).astype(np.uint8)
    return q.reshape(-1, *q.shape[-2:]).transpose(1, 2, 0)


def test_png_rgb_decodes_to_the_documented_quantisation(tmp_path: Path) -> None:
    image = torch.empty(3, 5, 7).uniform_(-1.5, 1.5, generator=torch.Generator().manual_seed(0))
    write_png(tmp_path / "rgb.png", image)
    pixels = _read_png((tmp_path / "rgb.png").read_bytes())
    assert pixels.shape == (5, 7, 3)
    np.testing.assert_array_equal(pixels, _expected_pixels(image, -1.0, 1.0))


@pytest.mark.parametrize("shape", [(1, 4, 6), (4, 6)])
def test_png_grey_from_either_shape(tmp_path: Path, shape: tuple[int, ...]) -> None:
    image = torch.linspace(0.0, 1.0, 24, dtype=torch.float64).reshape(shape)
    write_png(tmp_path / "grey.png", image, data_range=(0.0, 1.0))
    pixels = _read_png((tmp_path / "grey.png").read_bytes())
    assert pixels.shape == (4, 6, 1)
    np.testing.assert_array_equal(pixels, _expected_pixels(image, 0.0, 1.0))


def test_png_known_values_clip_and_round_half_to_even(tmp_path: Path) -> None:
    image = torch.tensor([[[-5.0, -1.0, 0.0, 0.5, 1.0, 2.0]]])
    write_png(tmp_path / "v.png", image)
    assert _read_png((tmp_path / "v.png").read_bytes()).ravel().tolist() == [
        0,
        0,
        128,  # 127.5 rounds half to even
        191,  # 191.25
        255,
        255,
    ]


def test_png_opens_in_pillow(tmp_path: Path) -> None:
    image_module = pytest.importorskip("PIL.Image")
    image = torch.rand(3, 6, 9, generator=torch.Generator().manual_seed(1)) * 2 - 1
    write_png(tmp_path / "p.png", image)
    with image_module.open(tmp_path / "p.png") as im:
        assert im.mode == "RGB" and im.size == (9, 6)
        np.testing.assert_array_equal(np.asarray(im), _expected_pixels(image, -1.0, 1.0))


@pytest.mark.parametrize(
    ("image", "error", "argument"),
    [
        (torch.full((3, 2, 2), math.nan), NonFiniteError, "image"),
        (torch.tensor([[[0.0, math.inf]]]), NonFiniteError, "image"),
        (torch.zeros(2, 4, 4), ShapeError, "image"),
        (torch.zeros(4), ShapeError, "image"),
        (torch.zeros(1, 1, 3, 3), ShapeError, "image"),
        (torch.zeros(3, 0, 4), ShapeError, "image"),
        (torch.zeros(3, 2, 2, dtype=torch.int64), InvalidArgumentError, "image"),
        (torch.zeros(3, 2, 2, dtype=torch.complex64), InvalidArgumentError, "image"),
        (np.zeros((3, 2, 2)), InvalidArgumentError, "image"),
    ],
)
def test_png_rejects_bad_images(tmp_path: Path, image, error, argument) -> None:
    with pytest.raises(error) as info:
        write_png(tmp_path / "bad.png", image)
    assert info.value.argument == argument
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    ("data_range", "error"),
    [
        ((1.0, 1.0), InvalidArgumentError),
        ((1.0, 0.0), InvalidArgumentError),
        ((0.0, math.inf), NonFiniteError),
        ((0.0,), InvalidArgumentError),
        (1.0, InvalidArgumentError),
    ],
)
def test_png_rejects_bad_data_range(tmp_path: Path, data_range, error) -> None:
    with pytest.raises(error) as info:
        write_png(tmp_path / "bad.png", torch.zeros(3, 2, 2), data_range=data_range)
    assert info.value.argument == "data_range"


# ----------------------------------------------------------------------------- atomic writes


def test_write_text_creates_parents_replaces_and_leaves_no_temporaries(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "report.md"
    write_text(target, "first")
    write_text(target, "second \u221e <&>")
    assert target.read_text(encoding="utf-8") == "second \u221e <&>"
    assert os.listdir(target.parent) == ["report.md"]


def test_write_png_replaces_an_existing_file(tmp_path: Path) -> None:
    target = tmp_path / "x.png"
    write_text(target, "not a png")
    write_png(target, torch.ones(1, 2, 2))
    assert _read_png(target.read_bytes()).ravel().tolist() == [255] * 4
    assert os.listdir(tmp_path) == ["x.png"]


def test_failed_write_removes_its_temporary_file(tmp_path: Path) -> None:
    (tmp_path / "taken").mkdir()
    with pytest.raises(OSError):
        write_text(tmp_path / "taken", "cannot replace a directory")
    assert os.listdir(tmp_path) == ["taken"]


def test_write_text_rejects_bytes(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgumentError) as info:
        write_text(tmp_path / "t.txt", b"bytes")
    assert info.value.argument == "text"


# ----------------------------------------------------------------------------- grids


def _tile(value: float, shape: tuple[int, int, int] = (2, 3, 4)) -> torch.Tensor:
    return torch.full(shape, value)


def test_grid_places_tiles_and_fills_padding() -> None:
    rows = [[_tile(10.0 * i + j) for j in range(3)] for i in range(2)]
    out = image_grid(rows, pad=2, pad_value=-7.0)
    assert out.shape == (2, 2 * (3 + 2) + 2, 3 * (4 + 2) + 2)
    covered = torch.zeros(out.shape, dtype=torch.bool)
    for i in range(2):
        for j in range(3):
            top, left = 2 + i * 5, 2 + j * 6
            assert (out[:, top : top + 3, left : left + 4] == 10.0 * i + j).all()
            covered[:, top : top + 3, left : left + 4] = True
    assert (out[~covered] == -7.0).all()


def test_grid_scale_is_nearest_neighbour() -> None:
    tile = torch.arange(6, dtype=torch.float64).reshape(1, 2, 3)
    out = image_grid([[tile]], pad=0, scale=3)
    assert out.dtype == torch.float64
    np.testing.assert_array_equal(out[0].numpy(), np.kron(tile[0].numpy(), np.ones((3, 3))))


def test_grid_ragged_rows_leave_missing_cells_as_padding() -> None:
    out = image_grid([[_tile(1.0), _tile(2.0)], [_tile(3.0)]], pad=1, pad_value=0.5)
    assert out.shape == (2, 2 * 4 + 1, 2 * 5 + 1)
    assert (out[:, 5:8, 1:5] == 3.0).all()
    assert (out[:, 5:8, 6:10] == 0.5).all()


@given(
    n_rows=st.integers(1, 3),
    n_cols=st.integers(1, 3),
    height=st.integers(1, 4),
    width=st.integers(1, 4),
    pad=st.integers(0, 3),
    scale=st.integers(1, 3),
)
def test_grid_shape_arithmetic(n_rows, n_cols, height, width, pad, scale) -> None:
    rows = [[torch.zeros(3, height, width)] * n_cols for _ in range(n_rows)]
    out = image_grid(rows, pad=pad, scale=scale, pad_value=1.0)
    assert out.shape == (
        3,
        n_rows * (height * scale + pad) + pad,
        n_cols * (width * scale + pad) + pad,
    )
    pad_pixels = out[0].numel() - n_rows * n_cols * height * width * scale**2
    assert int(out[0].sum()) == pad_pixels


@pytest.mark.parametrize(
    ("rows", "kwargs", "error", "argument"),
    [
        ([[_tile(0.0)], [_tile(0.0, (2, 3, 5))]], {}, ShapeError, "rows[1][0]"),
        ([[_tile(0.0), _tile(math.nan)]], {}, NonFiniteError, "rows[0][1]"),
        ([[torch.zeros(3, 4)]], {}, ShapeError, "rows[0][0]"),
        ([], {}, InvalidArgumentError, "rows"),
        ([[], []], {}, InvalidArgumentError, "rows"),
        (torch.zeros(1, 1, 3, 2, 2), {}, InvalidArgumentError, "rows"),
        ([_tile(0.0)], {}, InvalidArgumentError, "rows[0]"),
        ([[_tile(0.0)]], {"pad": -1}, InvalidArgumentError, "pad"),
        ([[_tile(0.0)]], {"scale": 0}, InvalidArgumentError, "scale"),
        ([[_tile(0.0)]], {"scale": 1.5}, InvalidArgumentError, "scale"),
        ([[_tile(0.0)]], {"pad_value": math.nan}, NonFiniteError, "pad_value"),
    ],
)
def test_grid_rejects_bad_input(rows, kwargs, error, argument) -> None:
    with pytest.raises(error) as info:
        image_grid(rows, **kwargs)
    assert info.value.argument == argument


# ----------------------------------------------------------------------------- Pareto front

_coordinate = st.integers(0, 4).map(float) | st.floats(-1e6, 1e6) | st.just(math.inf)


def _dominates(a: tuple[float, float], b: tuple[float, float]) -> bool:
    return a != b and a[0] >= b[0] and a[1] >= b[1]


@given(st.lists(st.tuples(_coordinate, _coordinate), max_size=30))
def test_pareto_front_is_the_non_dominated_set(points) -> None:
    front = pareto_front(points)
    assert set(front) <= set(points)
    assert len(front) == len(set(front))
    assert all(not any(_dominates(q, p) for q in points) for p in front)
    assert all(any(f[0] >= p[0] and f[1] >= p[1] for f in front) for p in points)
    assert all(a[0] < b[0] and a[1] > b[1] for a, b in itertools.pairwise(front))


def test_pareto_front_example_and_empty() -> None:
    points = [(1.0, 30.0), (2.0, 25.0), (1.5, 31.0), (3.0, 20.0), (2.5, 18.0), (2.0, 25.0)]
    assert pareto_front(points) == [(1.5, 31.0), (2.0, 25.0), (3.0, 20.0)]
    assert pareto_front([]) == []


@pytest.mark.parametrize(
    ("points", "error"),
    [
        ([(1.0, math.nan)], NonFiniteError),
        ([(1.0, 2.0, 3.0)], InvalidArgumentError),
        ([(1.0, "a")], InvalidArgumentError),
        ([1.0], InvalidArgumentError),
    ],
)
def test_pareto_front_rejects_bad_points(points, error) -> None:
    with pytest.raises(error) as info:
        pareto_front(points)
    assert info.value.argument == "points[0]"


# ----------------------------------------------------------------------------- SVG


def _translate(element: ET.Element) -> tuple[float, float]:
    match = re.fullmatch(r"translate\(([-\d.]+),([-\d.]+)\)", element.get("transform", ""))
    assert match, element.attrib
    return float(match[1]), float(match[2])


def _by_class(root: ET.Element, cls: str) -> list[ET.Element]:
    return [e for e in root.iter() if cls in e.get("class", "").split()]


def _plot_box(root: ET.Element) -> tuple[float, float, float, float]:
    (axes,) = _by_class(root, "axes")
    (box,) = axes.findall(f"{SVG}rect")
    x, y = float(box.get("x")), float(box.get("y"))
    return x, y, x + float(box.get("width")), y + float(box.get("height"))


def _tick_positions(root: ET.Element, axis: str) -> dict[str, float]:
    coord = "x1" if axis == "x" else "y1"
    return {
        "".join(t.find(f"{SVG}text").itertext()): float(t.find(f"{SVG}line").get(coord))
        for t in _by_class(root, f"{axis}-tick")
    }


SERIES = {
    "cache": [(1.0, 30.0), (2.0, 25.0), (1.5, 31.0), (3.0, 20.0), (2.5, 18.0)],
    "taylor": [(1.2, 33.0), (2.2, 27.0), (3.5, 22.5)],
    "noise-shift": [(1.1, 29.0)],
}


def test_svg_has_one_legend_entry_colour_and_marker_per_series() -> None:
    root = ET.fromstring(speedup_psnr_svg(SERIES, title="SD3"))
    entries = _by_class(root, "legend-entry")
    assert ["".join(e.itertext()) for e in entries] == list(SERIES)
    groups = _by_class(root, "series")
    assert [g.get("data-name") for g in groups] == list(SERIES)
    assert len({g.get("fill") for g in groups}) == len(SERIES)
    markers = [ET.tostring(_by_class(g, "point")[0][0]) for g in groups]
    assert len(set(markers)) == len(SERIES)
    assert [len(_by_class(g, "point")) for g in groups] == [len(p) for p in SERIES.values()]


def test_svg_points_lie_in_the_plot_and_fronts_pass_through_the_pareto_points() -> None:
    root = ET.fromstring(speedup_psnr_svg(SERIES, title="SD3"))
    left, top, right, bottom = _plot_box(root)
    for group, points in zip(_by_class(root, "series"), SERIES.values(), strict=True):
        pixels = dict(zip(points, map(_translate, _by_class(group, "point")), strict=True))
        assert all(left < px < right and top < py < bottom for px, py in pixels.values())
        (polyline,) = _by_class(group, "pareto-front")
        corners = [tuple(map(float, c.split(","))) for c in polyline.get("points").split()]
        front = [pixels[p] for p in pareto_front(points)]
        # The attainment staircase: from each front point straight down, then right to the next.
        expected = front[:1]
        for (x0, _), (x1, y1) in itertools.pairwise(front):
            expected += [(x0, y1), (x1, y1)]
        assert corners == expected


def test_svg_ticks_are_evenly_spaced_one_two_five_steps() -> None:
    root = ET.fromstring(speedup_psnr_svg(SERIES, title="SD3"))
    for axis in ("x", "y"):
        ticks = sorted((float(label), pos) for label, pos in _tick_positions(root, axis).items())
        values = np.array([v for v, _ in ticks])
        steps = np.diff(values)
        assert len(ticks) >= 4 and np.allclose(steps, steps[0])
        mantissa = steps[0] / 10 ** math.floor(math.log10(steps[0]))
        assert any(math.isclose(mantissa, m) for m in (1, 2, 5))
        pixel_steps = np.diff([p for _, p in ticks])
        assert np.allclose(pixel_steps, pixel_steps[0], atol=0.02)  # pixels are printed to 0.01


def test_svg_escapes_xml_in_every_label() -> None:
    name, title = "a<b&c>", "<T&>"
    svg = speedup_psnr_svg(
        {name: [(1.0, 20.0)]},
        title=title,
        x_label="x<&>",
        y_label="y<&>",
        reference_lines={"floor <&>": 10.0},
    )
    assert "a&lt;b&amp;c&gt;" in svg and name not in svg and "<T&>" not in svg
    root = ET.fromstring(svg)
    texts = {"".join(e.itertext()) for e in root.iter(f"{SVG}text")}
    assert {name, title, "x<&>", "y<&>", "floor <&>"} <= texts


def test_svg_clips_infinite_psnr_to_the_top_row_and_notes_it() -> None:
    svg = speedup_psnr_svg({"m": [(1.0, math.inf), (2.0, 25.0), (3.0, 20.0)]}, title="t")
    root = ET.fromstring(svg)
    (clipped,) = _by_class(root, "clipped")
    others = [_translate(p) for p in _by_class(root, "point") if p is not clipped]
    _, top, _, _ = _plot_box(root)
    assert _translate(clipped)[1] == top == _tick_positions(root, "y")["\u221e"]
    assert all(y > top for _, y in others)
    (note,) = _by_class(root, "note")
    assert "inf" in "".join(note.itertext())
    assert "clipped" not in speedup_psnr_svg(SERIES, title="t")


def test_svg_handles_empty_series_and_no_series() -> None:
    root = ET.fromstring(speedup_psnr_svg({"done": [(2.0, 20.0)], "pending": []}, title="t"))
    assert ["".join(e.itertext()) for e in _by_class(root, "legend-entry")] == [
        "done",
        "pending (no points)",
    ]
    assert len(_by_class(root, "point")) == 1
    assert len(_by_class(root, "pareto-front")) == 1
    empty = ET.fromstring(speedup_psnr_svg({}, title="nothing yet"))
    assert _by_class(empty, "legend-entry") == [] and _by_class(empty, "point") == []


def test_svg_reference_lines_are_dashed_labelled_and_inside_the_axis() -> None:
    root = ET.fromstring(
        speedup_psnr_svg(SERIES, title="t", reference_lines={"no-op floor": 8.0, "ceiling": 40.0})
    )
    _, top, _, bottom = _plot_box(root)
    lines = _by_class(root, "reference-line")
    assert ["".join(g.itertext()) for g in lines] == ["no-op floor", "ceiling"]
    ys = [float(g.find(f"{SVG}line").get("y1")) for g in lines]
    assert all(top < y < bottom for y in ys) and ys[0] > ys[1]
    assert all(g.find(f"{SVG}line").get("stroke-dasharray") for g in lines)


@pytest.mark.parametrize(
    ("kwargs", "error", "argument"),
    [
        ({"series": {"m": [(1.0, math.nan)]}}, NonFiniteError, "series['m'][0]"),
        ({"series": {"m": [(math.inf, 20.0)]}}, NonFiniteError, "series['m'][0]"),
        ({"series": {"m": [(1.0, 20.0), (1.0, -math.inf)]}}, NonFiniteError, "series['m'][1]"),
        ({"series": {"m": [(1.0,)]}}, InvalidArgumentError, "series['m'][0]"),
        ({"series": {"m": 3.0}}, InvalidArgumentError, "series['m']"),
        ({"series": [(1.0, 2.0)]}, InvalidArgumentError, "series"),
        ({"series": {1: [(1.0, 2.0)]}}, InvalidArgumentError, "series"),
        ({"series": {}, "title": None}, InvalidArgumentError, "title"),
        (
            {"series": {}, "reference_lines": {"f": math.nan}},
            NonFiniteError,
            "reference_lines['f']",
        ),
        ({"series": {}, "reference_lines": [1.0]}, InvalidArgumentError, "reference_lines"),
    ],
)
def test_svg_rejects_bad_input(kwargs, error, argument) -> None:
    with pytest.raises(error) as info:
        speedup_psnr_svg(**{"title": "t", **kwargs})
    assert info.value.argument == argument
