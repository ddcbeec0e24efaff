"""Dependency-free figures for the benchmark report: PNG images, image grids, SVG scatter plots.

Only torch, numpy and the standard library are used (no matplotlib, no Pillow). Images are
float tensors shaped ``(C, H, W)`` with ``C`` = 1 (grey) or 3 (RGB), values in data units
(``[-1, 1]`` by default, the model's convention). Every file is written atomically: to a
temporary file in the target's directory, then moved over the target with :func:`os.replace`,
so a reader never sees a half-written file.
"""

from __future__ import annotations

import html
import math
import numbers
import os
import secrets
import struct
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from .._checks import check_int, check_real, check_tensor
from ..errors import InvalidArgumentError, NonFiniteError, ShapeError

__all__ = ["image_grid", "pareto_front", "speedup_psnr_svg", "write_png", "write_text"]

PathLike = str | os.PathLike

# ----------------------------------------------------------------------------- files


def _write_atomic(path: PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary sibling file and :func:`os.replace`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "xb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text(path: PathLike, text: str) -> None:
    """Atomically write ``text`` to ``path`` as UTF-8, creating parent directories."""
    if not isinstance(text, str):
        raise InvalidArgumentError("text", f"expected a str, got {type(text).__name__}")
    _write_atomic(path, text.encode("utf-8"))


# ----------------------------------------------------------------------------- PNG

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_GREY, _RGB = 0, 2  # PNG colour types


def _check_data_range(data_range: object) -> tuple[float, float]:
    try:
        lo, hi = data_range  # type: ignore[misc]
    except (TypeError, ValueError):
        raise InvalidArgumentError(
            "data_range", f"expected a pair (low, high), got {data_range!r}"
        ) from None
    lo = check_real("data_range", lo)
    hi = check_real("data_range", hi)
    if not lo < hi:
        raise InvalidArgumentError("data_range", f"needs low < high, got ({lo}, {hi})")
    return lo, hi


def _check_image(image: object) -> torch.Tensor:
    """Return ``image`` as a real ``(C, H, W)`` tensor, ``C`` in {1, 3}, with pixels."""
    image = check_tensor("image", image, ndim_min=2)
    if image.dim() == 2:
        image = image.unsqueeze(0)
    if image.dim() != 3 or image.shape[0] not in (1, 3):
        raise ShapeError(
            "image", f"expected (H, W), (1, H, W) or (3, H, W), got {tuple(image.shape)}"
        )
    if image.numel() == 0:
        raise ShapeError("image", f"has no pixels: shape {tuple(image.shape)}")
    return image


def _quantise(image: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    """Map ``[lo, hi]`` (values outside clipped) to uint8 0..255, rounding half to even."""
    x = image.detach().to(device="cpu", dtype=torch.float64).clamp(lo, hi)
    return torch.round((x - lo) / (hi - lo) * 255.0).to(torch.uint8)


def _png_chunk(tag: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(tag + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", crc)


def _png_bytes(pixels: torch.Tensor) -> bytes:
    """Encode uint8 ``(C, H, W)`` pixels as an 8-bit PNG, filter type 0 on every row."""
    channels, height, width = pixels.shape
    rows = pixels.permute(1, 2, 0).reshape(height, width * channels)
    raw = torch.cat([torch.zeros(height, 1, dtype=torch.uint8), rows], dim=1)
    colour_type = _RGB if channels == 3 else _GREY
    header = struct.pack(">IIBBBBB", width, height, 8, colour_type, 0, 0, 0)
    return (
        _PNG_SIGNATURE
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", zlib.compress(raw.numpy().tobytes(), 9))
        + _png_chunk(b"IEND", b"")
    )


def write_png(
    path: PathLike, image: torch.Tensor, *, data_range: tuple[float, float] = (-1.0, 1.0)
) -> None:
    """Atomically write ``image`` as an 8-bit PNG (RGB for 3 channels, greyscale for 1).

    ``image`` is ``(3, H, W)``, ``(1, H, W)`` or ``(H, W)``, finite, in data units. Values are
    clipped to ``data_range = (low, high)`` and mapped linearly to 0..255 (``low`` -> 0,
    ``high`` -> 255), rounding half to even.
    """
    image = _check_image(image)
    lo, hi = _check_data_range(data_range)
    _write_atomic(path, _png_bytes(_quantise(image, lo, hi)))


# ----------------------------------------------------------------------------- grids


def _check_rows(rows: object) -> list[list[torch.Tensor]]:
    """Return ``rows`` as lists of finite real ``(C, H, W)`` tensors, all of one shape."""
    if isinstance(rows, torch.Tensor) or not isinstance(rows, Sequence):
        raise InvalidArgumentError("rows", "expected a sequence of rows, each a sequence of images")
    checked: list[list[torch.Tensor]] = []
    shape = None
    for i, row in enumerate(rows):
        if isinstance(row, torch.Tensor) or not isinstance(row, Sequence):
            raise InvalidArgumentError(f"rows[{i}]", "expected a sequence of images")
        checked.append([])
        for j, tile in enumerate(row):
            name = f"rows[{i}][{j}]"
            tile = check_tensor(name, tile)
            if tile.dim() != 3:
                raise ShapeError(name, f"expected a (C, H, W) image, got {tuple(tile.shape)}")
            if shape is None:
                shape = tile.shape
            elif tile.shape != shape:
                raise ShapeError(
                    name, f"shape {tuple(tile.shape)} does not match rows[0][0]'s {tuple(shape)}"
                )
            checked[-1].append(tile)
    if shape is None:
        raise InvalidArgumentError("rows", "holds no images")
    return checked


def image_grid(
    rows: Sequence[Sequence[torch.Tensor]], *, pad: int = 2, scale: int = 1, pad_value: float = 1.0
) -> torch.Tensor:
    """Tile equally shaped ``(C, H, W)`` images into one ``(C, H', W')`` image.

    ``rows[i][j]`` goes to grid row ``i``, column ``j``; rows may differ in length (missing
    cells are filled with ``pad_value``). Each tile is first upscaled by the integer ``scale``
    (nearest neighbour), then ``pad`` pixels of ``pad_value`` (data units) separate the tiles
    and surround the grid: ``H' = R (H scale + pad) + pad``, ``W' = K (W scale + pad) + pad``
    for ``R`` rows and ``K`` columns. The result has the first image's dtype and device.
    """
    tiles = _check_rows(rows)
    pad = check_int("pad", pad, minimum=0)
    scale = check_int("scale", scale, minimum=1)
    pad_value = check_real("pad_value", pad_value)
    first = next(tile for row in tiles for tile in row)
    channels, height, width = first.shape
    cell_h, cell_w = height * scale + pad, width * scale + pad
    n_cols = max(len(row) for row in tiles)
    out = first.new_full((channels, len(tiles) * cell_h + pad, n_cols * cell_w + pad), pad_value)
    for i, row in enumerate(tiles):
        for j, tile in enumerate(row):
            top, left = pad + i * cell_h, pad + j * cell_w
            big = tile.repeat_interleave(scale, dim=1).repeat_interleave(scale, dim=2)
            out[:, top : top + height * scale, left : left + width * scale] = big
    return out


# ----------------------------------------------------------------------------- Pareto front


def _real_pair(name: str, point: object) -> tuple[float, float]:
    """Return ``point`` as ``(x, y)`` floats; each must be a real number, not NaN (inf is ok)."""
    try:
        x, y = point  # type: ignore[misc]
    except (TypeError, ValueError):
        raise InvalidArgumentError(name, f"expected a pair (x, y), got {point!r}") from None
    values = []
    for value in (x, y):
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            value = value.item()
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise InvalidArgumentError(name, f"expected real coordinates, got {point!r}")
        if math.isnan(value):
            raise NonFiniteError(name, f"contains NaN: {point!r}")
        values.append(float(value))
    return values[0], values[1]


def pareto_front(points: Iterable[tuple[float, float]]) -> list[tuple[float, float]]:
    """The non-dominated points of ``points``, larger ``x`` and larger ``y`` both better.

    A point is dominated when another point is at least as good in both coordinates and
    differs from it. Duplicates are returned once. The front is sorted by ``x`` ascending
    (so ``y`` is strictly descending). Coordinates may be infinite but not NaN.
    """
    pairs = [_real_pair(f"points[{i}]", p) for i, p in enumerate(points)]
    front: list[tuple[float, float]] = []
    for x, y in sorted(pairs, key=lambda p: (-p[0], -p[1])):
        if not front or y > front[-1][1]:
            front.append((x, y))
    return front[::-1]


# ----------------------------------------------------------------------------- SVG scatter

# Okabe-Ito colour-blind-safe palette (yellow left out: too faint on white).
_COLOURS = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000")
_MARKERS = (
    '<circle r="4.5"/>',
    '<rect x="-4" y="-4" width="8" height="8"/>',
    '<polygon points="0,-5.2 4.5,3.4 -4.5,3.4"/>',
    '<polygon points="0,-5.5 5.5,0 0,5.5 -5.5,0"/>',
    '<polygon points="0,5.2 4.5,-3.4 -4.5,-3.4"/>',
    '<path d="M-5,0H5M0,-5V5" stroke-width="2"/>',
)
_PLOT_W, _PLOT_H = 480.0, 300.0
_LEFT, _TOP, _BOTTOM, _GAP = 64.0, 44.0, 56.0, 20.0
_LEGEND_ROW = 18.0
_AXIS_MARGIN = 0.05  # fraction of the data span left free at each end of an axis
_MIN_TICKS = 4
_CHAR_W = 7.0  # rough width of one character at font-size 12, for the legend's width
_INF_LABEL = "\u221e"


def _esc(text: str) -> str:
    return html.escape(text, quote=True)


def _num(value: float) -> str:
    return f"{value:.2f}"


@dataclass(frozen=True)
class _Axis:
    """A linear axis from ``lo`` to ``hi`` (data units) with tick values and their labels."""

    lo: float
    hi: float
    ticks: tuple[float, ...]
    labels: tuple[str, ...]


def _nice_axis(values: Sequence[float], *, inf_row: bool = False) -> _Axis:
    """An axis spanning ``values`` plus a 5% margin, ticked every 1, 2 or 5 times a power of ten.

    The step is the largest such that the axis holds at least :data:`_MIN_TICKS` ticks.

    With ``inf_row``, the axis is extended one tick step above its last tick, and that top
    tick is labelled infinity: points with an infinite value are drawn there, clipped.
    """
    lo, hi = (min(values), max(values)) if values else (0.0, 1.0)
    if hi - lo <= 0:
        half = abs(lo) * 0.1 or 1.0
        lo, hi = lo - half, hi + half
    margin = _AXIS_MARGIN * (hi - lo)
    lo, hi = lo - margin, hi + margin
    raw = (hi - lo) / _MIN_TICKS
    magnitude = 10.0 ** math.floor(math.log10(raw))
    step = max(m * magnitude for m in (1, 2, 5, 10) if m * magnitude <= raw * (1 + 1e-9))
    first, last = math.ceil(lo / step - 1e-9), math.floor(hi / step + 1e-9)
    ticks = [k * step for k in range(first, last + 1)]
    decimals = max(0, -math.floor(math.log10(step)))
    labels = [f"{round(t, decimals) + 0.0:.{decimals}f}" for t in ticks]
    if inf_row:
        hi = ticks[-1] + step
        ticks.append(hi)
        labels.append(_INF_LABEL)
    return _Axis(lo, hi, tuple(ticks), tuple(labels))


@dataclass(frozen=True)
class _Frame:
    """The plot box (SVG pixels, y down) and the data axes mapped onto it."""

    x_axis: _Axis
    y_axis: _Axis
    left: float = _LEFT
    top: float = _TOP

    def px(self, x: float) -> float:
        a = self.x_axis
        return self.left + (x - a.lo) / (a.hi - a.lo) * _PLOT_W

    def py(self, y: float) -> float:
        """Map ``y`` to pixels; ``+inf`` is clipped to the top of the axis."""
        a = self.y_axis
        return self.top + (a.hi - min(y, a.hi)) / (a.hi - a.lo) * _PLOT_H

    @property
    def right(self) -> float:
        return self.left + _PLOT_W

    @property
    def bottom(self) -> float:
        return self.top + _PLOT_H


def _check_label(name: str, value: object) -> str:
    if not isinstance(value, str):
        raise InvalidArgumentError(name, f"expected a str, got {type(value).__name__}")
    return value


def _check_series(series: object) -> dict[str, list[tuple[float, float]]]:
    """Return ``series`` as ``{name: [(speedup, psnr), ...]}``; speedups finite, PSNRs not -inf."""
    if not isinstance(series, Mapping):
        raise InvalidArgumentError("series", "expected a mapping from method name to points")
    checked = {}
    for name, points in series.items():
        _check_label("series", name)
        if isinstance(points, (str, bytes)) or not isinstance(points, Iterable):
            raise InvalidArgumentError(f"series[{name!r}]", "expected a sequence of (x, y) pairs")
        pairs = [_real_pair(f"series[{name!r}][{i}]", p) for i, p in enumerate(points)]
        for i, (x, y) in enumerate(pairs):
            if not math.isfinite(x) or y == -math.inf:
                raise NonFiniteError(
                    f"series[{name!r}][{i}]",
                    f"speedup must be finite and PSNR finite or +inf, got {(x, y)}",
                )
        checked[name] = pairs
    return checked


def _check_reference_lines(lines: object) -> list[tuple[str, float]]:
    if lines is None:
        return []
    if not isinstance(lines, Mapping):
        raise InvalidArgumentError("reference_lines", "expected a mapping from label to y value")
    return [
        (_check_label("reference_lines", label), check_real(f"reference_lines[{label!r}]", y))
        for label, y in lines.items()
    ]


def _svg_axes(frame: _Frame, x_label: str, y_label: str) -> list[str]:
    """Grid lines, ticks with labels, the frame and the axis labels."""
    parts = ['<g class="axes" font-size="11">']
    for x, label in zip(frame.x_axis.ticks, frame.x_axis.labels, strict=True):
        px = _num(frame.px(x))
        parts.append(
            f'<g class="x-tick"><line x1="{px}" y1="{_num(frame.top)}" x2="{px}" '
            f'y2="{_num(frame.bottom)}" stroke="#e5e5e5"/><text x="{px}" '
            f'y="{_num(frame.bottom + 16)}" text-anchor="middle">{label}</text></g>'
        )
    for y, label in zip(frame.y_axis.ticks, frame.y_axis.labels, strict=True):
        py = _num(frame.py(y))
        parts.append(
            f'<g class="y-tick"><line x1="{_num(frame.left)}" y1="{py}" x2="{_num(frame.right)}" '
            f'y2="{py}" stroke="#e5e5e5"/><text x="{_num(frame.left - 6)}" y="{py}" '
            f'text-anchor="end" dominant-baseline="middle">{label}</text></g>'
        )
    parts += [
        (
            f'<rect x="{_num(frame.left)}" y="{_num(frame.top)}" width="{_num(_PLOT_W)}" '
            f'height="{_num(_PLOT_H)}" fill="none" stroke="#333333"/>'
        ),
        "</g>",
        (
            f'<text class="x-label" x="{_num(frame.left + _PLOT_W / 2)}" '
            f'y="{_num(frame.bottom + 38)}" text-anchor="middle">{_esc(x_label)}</text>'
        ),
        (
            f'<text class="y-label" transform="translate({_num(frame.left - 46)},'
            f'{_num(frame.top + _PLOT_H / 2)}) rotate(-90)" text-anchor="middle">'
            f"{_esc(y_label)}</text>"
        ),
    ]
    return parts


def _svg_reference_lines(frame: _Frame, lines: list[tuple[str, float]]) -> list[str]:
    parts = []
    for label, y in lines:
        py = _num(frame.py(y))
        parts.append(
            f'<g class="reference-line"><line x1="{_num(frame.left)}" y1="{py}" '
            f'x2="{_num(frame.right)}" y2="{py}" stroke="#777777" stroke-dasharray="6 4"/>'
            f'<text x="{_num(frame.right - 4)}" y="{_num(frame.py(y) - 4)}" text-anchor="end" '
            f'font-size="11" fill="#555555">{_esc(label)}</text></g>'
        )
    return parts


def _style(index: int) -> tuple[str, str]:
    """The colour and marker of the series at ``index``."""
    return _COLOURS[index % len(_COLOURS)], _MARKERS[index % len(_MARKERS)]


def _svg_marker(x: float, y: float, marker: str, *, cls: str, hollow: bool = False) -> str:
    """``marker`` centred at pixel ``(x, y)``, filled with the colour it inherits or hollow."""
    fill = ' fill="white" stroke-width="1.5"' if hollow else ""
    return f'<g class="{cls}" transform="translate({_num(x)},{_num(y)})"{fill}>{marker}</g>'


def _svg_series(frame: _Frame, index: int, name: str, points: list[tuple[float, float]]) -> str:
    """A series' Pareto front (attainment staircase) and its points, in its colour and marker."""
    colour, marker = _style(index)
    parts = [f'<g class="series" data-name="{_esc(name)}" fill="{colour}" stroke="{colour}">']
    front = pareto_front(points)
    if front:
        corners = [(frame.px(front[0][0]), frame.py(front[0][1]))]
        for x, y in front[1:]:
            corners += [(corners[-1][0], frame.py(y)), (frame.px(x), frame.py(y))]
        coords = " ".join(f"{_num(cx)},{_num(cy)}" for cx, cy in corners)
        parts.append(
            f'<polyline class="pareto-front" points="{coords}" fill="none" stroke-width="1.5"/>'
        )
    for x, y in points:
        clipped = math.isinf(y)  # infinite PSNR: hollow, on the top row
        cls = "point clipped" if clipped else "point"
        parts.append(_svg_marker(frame.px(x), frame.py(y), marker, cls=cls, hollow=clipped))
    parts.append("</g>")
    return "".join(parts)


def _svg_legend(left: float, top: float, names: list[str], empty: set[str]) -> list[str]:
    parts = ['<g class="legend">']
    for i, name in enumerate(names):
        colour, marker = _style(i)
        y = top + i * _LEGEND_ROW
        note = " (no points)" if name in empty else ""
        parts.append(
            f'<g class="legend-entry" fill="{colour}" stroke="{colour}">'
            f'<line x1="{_num(left)}" y1="{_num(y)}" x2="{_num(left + 24)}" y2="{_num(y)}" '
            f'stroke-width="1.5"/>{_svg_marker(left + 12, y, marker, cls="legend-marker")}'
            f'<text x="{_num(left + 32)}" y="{_num(y)}" dominant-baseline="middle" '
            f'stroke="none" fill="#222222">{_esc(name)}{note}</text></g>'
        )
    parts.append("</g>")
    return parts


def speedup_psnr_svg(
    series: Mapping[str, Sequence[tuple[float, float]]],
    *,
    title: str,
    x_label: str = "speedup (x)",
    y_label: str = "PSNR to reference (dB)",
    reference_lines: Mapping[str, float] | None = None,
) -> str:
    """A standalone SVG scatter plot of ``(speedup, PSNR)`` points, one series per method.

    Each series gets its own colour and marker, and its Pareto front (larger speedup and
    larger PSNR both better; see :func:`pareto_front`) is drawn as a staircase through the
    non-dominated points. Axes have 1-2-5 ticks. ``reference_lines`` maps a label to a PSNR
    drawn as a dashed horizontal line (e.g. ``{"no-op floor": 12.0}``). An infinite PSNR
    (image identical to the reference) is drawn as a hollow marker clipped to a top row
    labelled infinity, and a note says so. A series with no points still gets a legend entry.
    Text is XML-escaped. Returns the SVG document as a string.
    """
    data = _check_series(series)
    lines = _check_reference_lines(reference_lines)
    title = _check_label("title", title)
    x_label = _check_label("x_label", x_label)
    y_label = _check_label("y_label", y_label)

    points = [p for pts in data.values() for p in pts]
    has_inf = any(math.isinf(y) for _, y in points)
    finite_y = [y for _, y in points if math.isfinite(y)] + [y for _, y in lines]
    frame = _Frame(
        _nice_axis([x for x, _ in points]),
        _nice_axis(finite_y, inf_row=has_inf),
    )
    names = list(data)
    legend_left = frame.right + _GAP
    longest = max((len(n) + 12 for n in names), default=0)  # 12: room for " (no points)"
    width = legend_left + 32 + longest * _CHAR_W + _GAP
    legend_bottom = frame.top + 8 + len(names) * _LEGEND_ROW
    height = max(frame.bottom + _BOTTOM + (18 if has_inf else 0), legend_bottom)

    parts = [
        '<?xml version="1.0" encoding="UTF-8"?>',
        (
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{_num(width)}" '
            f'height="{_num(height)}" viewBox="0 0 {_num(width)} {_num(height)}" '
            'font-family="DejaVu Sans, Arial, sans-serif" font-size="12">'
        ),
        f"<title>{_esc(title)}</title>",
        f'<rect width="{_num(width)}" height="{_num(height)}" fill="white"/>',
        (
            f'<text class="title" x="{_num(frame.left + _PLOT_W / 2)}" y="24" '
            f'text-anchor="middle" font-size="14" font-weight="bold">{_esc(title)}</text>'
        ),
        *_svg_axes(frame, x_label, y_label),
        *_svg_reference_lines(frame, lines),
        *(_svg_series(frame, i, name, pts) for i, (name, pts) in enumerate(data.items())),
        *_svg_legend(legend_left, frame.top + 8, names, {n for n, pts in data.items() if not pts}),
    ]
    if has_inf:
        parts.append(
            f'<text class="note" x="{_num(frame.left)}" y="{_num(height - 8)}" font-size="11" '
            f'fill="#555555">Hollow markers on the {_INF_LABEL} row: PSNR = inf (identical to '
            "the reference), clipped to the top of the axis.</text>"
        )
    parts.append("</svg>")
    return "\n".join(parts) + "\n"
