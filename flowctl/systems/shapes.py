"""Procedural captioned images: one or two coloured shapes on a plain background.

Each image is RGB in [-1, 1], shape ``(3, size, size)``, rendered by supersampling (4 x 4
samples per pixel) so edges are anti-aliased. Its caption is English generated from the same
attributes: "a large red circle on a blue background", "a small green triangle at the top left
on a white background", "a small yellow star on the left and a large purple ring on the right on
a black background". Everything is deterministic in ``seed``.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import torch

from .._checks import check_int
from ..errors import InvalidArgumentError, UnknownNameError

COLOURS = {
    "red": (0.9, 0.1, 0.1),
    "green": (0.1, 0.7, 0.2),
    "blue": (0.1, 0.25, 0.9),
    "yellow": (0.95, 0.85, 0.1),
    "orange": (1.0, 0.55, 0.0),
    "purple": (0.55, 0.15, 0.7),
    "pink": (1.0, 0.55, 0.75),
    "brown": (0.5, 0.3, 0.1),
    "white": (1.0, 1.0, 1.0),
    "black": (0.0, 0.0, 0.0),
    "gray": (0.5, 0.5, 0.5),
}
BACKGROUNDS = ("white", "black", "gray", "blue", "green", "yellow", "red", "purple")
SHAPES = ("circle", "ring", "square", "diamond", "triangle", "hexagon", "star", "cross")
RADII = {"small": 0.32, "large": 0.6}  # circumradius, in half-widths of the image
# Position -> unit direction (x right, y down); the offset keeps the shape inside the frame.
POSITIONS = {
    "": (0, 0),
    "on the left": (-1, 0),
    "on the right": (1, 0),
    "at the top": (0, -1),
    "at the bottom": (0, 1),
    "at the top left": (-1, -1),
    "at the top right": (1, -1),
    "at the bottom left": (-1, 1),
    "at the bottom right": (1, 1),
}
OPPOSITE_PAIRS = (
    ("on the left", "on the right"),
    ("at the top", "at the bottom"),
    ("at the top left", "at the bottom right"),
    ("at the top right", "at the bottom left"),
)
SUPERSAMPLE = 4
MAX_COUNT = 100_000  # of some 500 000 distinct captions: redrawing repeats stays cheap
MAX_SIZE = 1024  # pixels a side: supersampled, a larger image would take gigabytes


@dataclass(frozen=True)
class Shape:
    """One shape of an image: kind in SHAPES, colour in COLOURS, size in RADII, position in
    POSITIONS ("" is the centre)."""

    kind: str
    colour: str
    size: str
    position: str

    def __post_init__(self) -> None:
        for name, known in (("kind", SHAPES), ("colour", COLOURS), ("size", RADII), ("position", POSITIONS)):
            if not isinstance(getattr(self, name), str) or getattr(self, name) not in known:
                raise UnknownNameError(name, getattr(self, name), list(known))

    def phrase(self) -> str:
        """The caption's words for this shape: "a small red circle on the left"."""
        return " ".join(w for w in ("a", self.size, self.colour, self.kind, self.position) if w)


def _star(px: torch.Tensor, py: torch.Tensor, points: int, inner: float, turn: float) -> torch.Tensor:
    """Inside a star polygon of circumradius 1 with ``points`` outer vertices (the first at angle
    ``turn``) and inner vertices at radius ``inner``; ``inner = cos(pi / points)`` gives a regular
    polygon."""
    sector = 2 * math.pi / points
    phi = torch.remainder(torch.atan2(py, px) - turn, sector)
    psi = torch.minimum(phi, sector - phi)  # fold onto [0, sector / 2]: outer vertex at psi = 0
    r = torch.hypot(px, py)
    qx, qy = r * torch.cos(psi), r * torch.sin(psi)
    half = sector / 2
    nx, ny = inner * math.sin(half), 1.0 - inner * math.cos(half)
    return nx * (qx - 1.0) + ny * qy <= 0


def _inside(kind: str, px: torch.Tensor, py: torch.Tensor) -> torch.Tensor:
    """Mask of a shape of circumradius 1 centred at the origin (y points up here)."""
    r = torch.hypot(px, py)
    up = math.pi / 2
    if kind == "circle":
        return r <= 0.9
    if kind == "ring":
        return (r <= 0.95) & (r >= 0.6)
    if kind == "square":
        return _star(px, py, 4, math.cos(math.pi / 4), math.pi / 4)
    if kind == "diamond":
        return _star(px, py, 4, math.cos(math.pi / 4), 0.0)
    if kind == "triangle":
        return _star(px, py, 3, 0.5, up)
    if kind == "hexagon":
        return _star(px, py, 6, math.cos(math.pi / 6), 0.0)
    if kind == "star":
        return _star(px, py, 5, 0.42, up)
    return ((px.abs() <= 0.28) & (py.abs() <= 0.95)) | ((py.abs() <= 0.28) & (px.abs() <= 0.95))


def render(background: str, shapes: tuple[Shape, ...], size: int = 32) -> torch.Tensor:
    """The image of ``shapes`` (painted in order) on ``background``: (3, size, size) in [-1, 1],
    size 8 to :data:`MAX_SIZE` pixels."""
    if not isinstance(background, str) or background not in COLOURS:
        raise UnknownNameError("background", background, list(COLOURS))
    if not (isinstance(shapes, (tuple, list)) and all(isinstance(s, Shape) for s in shapes)):
        raise InvalidArgumentError("shapes", f"expected a tuple of Shape, got {shapes!r}")
    size = check_int("size", size, minimum=8, maximum=MAX_SIZE)
    n = size * SUPERSAMPLE
    c = (torch.arange(n, dtype=torch.float64) + 0.5) / n * 2 - 1  # sample centres in (-1, 1)
    y, x = torch.meshgrid(c, c, indexing="ij")  # y grows downwards
    img = torch.tensor(COLOURS[background], dtype=torch.float64)[:, None, None].expand(3, n, n).clone()
    for s in shapes:
        radius = RADII[s.size]
        offset = 0.95 - radius
        dx, dy = POSITIONS[s.position]
        mask = _inside(s.kind, (x - offset * dx) / radius, -(y - offset * dy) / radius)
        img[:, mask] = torch.tensor(COLOURS[s.colour], dtype=torch.float64)[:, None]
    img = torch.nn.functional.avg_pool2d(img[None], SUPERSAMPLE)[0]
    return (2 * img - 1).float()


def caption(background: str, shapes: tuple[Shape, ...]) -> str:
    """The English caption of an image, e.g. "a large red circle on a blue background"."""
    return f"{' and '.join(s.phrase() for s in shapes)} on a {background} background"


def _draw(rng: random.Random) -> tuple[str, tuple[Shape, ...]]:
    background = rng.choice(BACKGROUNDS)
    colours = [c for c in COLOURS if c != background]
    if rng.random() < 0.6:
        size = rng.choice(tuple(RADII))
        positions = tuple(POSITIONS) if size == "small" else tuple(POSITIONS)[:5]
        return background, (Shape(rng.choice(SHAPES), rng.choice(colours), size, rng.choice(positions)),)
    places = rng.choice(OPPOSITE_PAIRS)
    sizes = rng.choice((("small", "small"), ("small", "large"), ("large", "small")))
    kinds = rng.sample(SHAPES, 2)
    return background, tuple(
        Shape(k, rng.choice(colours), s, p) for k, s, p in zip(kinds, sizes, places)
    )


def captioned_shapes(count: int, size: int = 32, seed: int = 0) -> tuple[torch.Tensor, tuple[str, ...]]:
    """``count`` random captioned images: ``(images (count, 3, size, size) float32, captions)``.

    About 60% hold one shape, the rest two. Captions are distinct: a draw that repeats one is
    redrawn.
    """
    count = check_int("count", count, minimum=1)
    if count > MAX_COUNT:
        raise InvalidArgumentError("count", f"must be <= {MAX_COUNT}, got {count}")
    size = check_int("size", size, minimum=8, maximum=MAX_SIZE)
    rng = random.Random(check_int("seed", seed, minimum=0))
    scenes: dict[str, tuple[str, tuple[Shape, ...]]] = {}
    while len(scenes) < count:
        background, shapes = _draw(rng)
        scenes.setdefault(caption(background, shapes), (background, shapes))
    images = torch.stack([render(bg, shapes, size) for bg, shapes in scenes.values()])
    return images, tuple(scenes)
