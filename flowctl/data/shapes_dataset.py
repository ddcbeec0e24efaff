"""A procedural dataset of captioned images: one shape on a plain background, under a global
modifier.

Images are RGB ``(3, size, size)`` float32 in [-1, 1], drawn with the anti-aliased renderer of
:mod:`flowctl.systems.shapes`. An image is fixed by its :class:`Attributes` (shape kind, colour,
size, position, background colour, modifier); its caption is one of many paraphrases of them
("a big red circle on a blue background", "a blue background with a large red circle at
sunset", ...). Modifiers change the whole image: "at sunset" is a warm tint with a vertical
gradient, "at night" darkens it and tints it blue, "in fog" washes it out towards light gray.
Everything is deterministic in ``seed``.

Rendering composes cached coverage masks: the shape's anti-aliased coverage depends only on
(kind, size, position, image size), and the image is ``background * (1 - m) + colour * m``
(exactly what :func:`~flowctl.systems.shapes.render` paints), so any batch renders in one
vectorised step.
"""

from __future__ import annotations

import functools
import itertools
import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .._checks import check_int
from ..errors import InvalidArgumentError, UnknownNameError
from ..systems.shapes import (
    BACKGROUNDS,
    COLOURS,
    POSITIONS,
    RADII,
    SHAPES,
    Shape,
    render,
)

MODIFIERS = ("", "at sunset", "at night", "in fog")  # "" is no modifier
MODIFIER_WEIGHTS = (0.4, 0.2, 0.2, 0.2)  # how often the dataset draws each
# Attribute name -> its vocabulary; a label is an index into it. Position "" is the centre.
VOCABULARIES: dict[str, tuple[str, ...]] = {
    "shape": SHAPES,
    "colour": tuple(COLOURS),
    "size": tuple(RADII),
    "position": tuple(POSITIONS),
    "background": BACKGROUNDS,
    "modifier": MODIFIERS,
}
MAX_COUNT = 1_000_000

# Paraphrases, canonical wording first (the canonical caption is that of shapes.caption).
SIZE_WORDS = {"small": ("small", "little", "tiny"), "large": ("large", "big")}
POSITION_WORDS = {
    "": ("", "in the middle", "in the center"),
    "on the left": ("on the left", "on the left side"),
    "on the right": ("on the right", "on the right side"),
    "at the top": ("at the top", "near the top"),
    "at the bottom": ("at the bottom", "near the bottom"),
    **{
        f"at the {v} {h}": (f"at the {v} {h}", f"in the {v} {h}", f"in the {w} {h} corner")
        for v, w in (("top", "upper"), ("bottom", "lower"))
        for h in ("left", "right")
    },
}
MODIFIER_WORDS = {"": ("",), "at sunset": ("at sunset", "at dusk"), "at night": ("at night",),
                  "in fog": ("in fog", "in the fog")}
TEMPLATES = (
    "{thing} on a {background} background{modifier}",
    "{thing} against a {background} background{modifier}",
    "a {background} background with {thing}{modifier}",
    "on a {background} background, {thing}{modifier}",
)


@dataclass(frozen=True)
class Attributes:
    """What an image shows: a ``size`` ``colour`` ``shape`` at ``position`` on a ``background``
    colour, under ``modifier``; each value is in its :data:`VOCABULARIES` entry, and the shape's
    colour differs from the background's."""

    shape: str
    colour: str
    size: str
    position: str
    background: str
    modifier: str = ""

    def __post_init__(self) -> None:
        for name, known in VOCABULARIES.items():
            if getattr(self, name) not in known:
                raise UnknownNameError(name, getattr(self, name), list(known))
        if self.colour == self.background:
            raise InvalidArgumentError("colour", f"must differ from the background, both are {self.colour!r}")

    def labels(self) -> dict[str, int]:
        """The index of each attribute in its vocabulary."""
        return {name: known.index(getattr(self, name)) for name, known in VOCABULARIES.items()}

    def caption(self) -> str:
        """The canonical caption: "a large red circle at the top on a blue background at night"."""
        return describe(self, choices=None)


def _slots(a: Attributes) -> tuple[tuple[str, ...], ...]:
    """The caption's interchangeable parts: template, size word, position, modifier words."""
    return TEMPLATES, SIZE_WORDS[a.size], POSITION_WORDS[a.position], MODIFIER_WORDS[a.modifier]


def _fill(a: Attributes, template: str, size: str, position: str, modifier: str) -> str:
    thing = " ".join(w for w in ("a", size, a.colour, a.shape, position) if w)
    return template.format(thing=thing, background=a.background, modifier=f" {modifier}" if modifier else "")


def describe(a: Attributes, choices: random.Random | None) -> str:
    """A caption of ``a``: each part's paraphrase drawn uniformly by ``choices``, or the
    canonical wording when ``choices`` is None."""
    return _fill(a, *(choices.choice(s) if choices else s[0] for s in _slots(a)))


def all_captions(a: Attributes) -> tuple[str, ...]:
    """Every caption :func:`describe` can give ``a``, canonical first."""
    return tuple(_fill(a, *parts) for parts in itertools.product(*_slots(a)))


def draw_attributes(rng: random.Random) -> Attributes:
    """Random attributes: uniform shape, size, position and background, a colour other than the
    background's, and a modifier drawn with :data:`MODIFIER_WEIGHTS`."""
    background = rng.choice(BACKGROUNDS)
    return Attributes(
        shape=rng.choice(SHAPES),
        colour=rng.choice([c for c in COLOURS if c != background]),
        size=rng.choice(tuple(RADII)),
        position=rng.choice(tuple(POSITIONS)),
        background=background,
        modifier=rng.choices(MODIFIERS, MODIFIER_WEIGHTS)[0],
    )


@functools.lru_cache(maxsize=8)
def _masks(size: int) -> torch.Tensor:
    """Coverage in [0, 1] of every (kind, size, position): (kinds, sizes, positions, size, size)."""
    cover = [
        (render("black", (Shape(k, "white", s, p),), size)[0] + 1) / 2
        for k in SHAPES for s in RADII for p in POSITIONS
    ]
    return torch.stack(cover).reshape(len(SHAPES), len(RADII), len(POSITIONS), size, size)


_PALETTE = torch.tensor(list(COLOURS.values()))  # (colours, 3), in [0, 1]


_SKY_TOP, _SKY_BOTTOM = torch.tensor([1.0, 0.62, 0.2]), torch.tensor([0.62, 0.16, 0.3])
_NIGHT = torch.tensor([0.02, 0.05, 0.2])
_FOG = torch.tensor([0.85, 0.86, 0.88])


def _apply_modifiers(img: torch.Tensor, modifier: torch.Tensor) -> torch.Tensor:
    """Apply each image's modifier (an index into MODIFIERS) to ``img`` (N, 3, H, W) in [0, 1],
    in place; returns ``img``."""
    h = img.shape[2]
    t = torch.linspace(0, 1, h)[None, :, None]  # 0 at the top row, 1 at the bottom
    sky = _SKY_TOP[:, None, None] * (1 - t) + _SKY_BOTTOM[:, None, None] * t  # (3, H, 1)
    changes = ((1, 0.6, 0.4 * sky), (2, 0.4, _NIGHT[:, None, None]), (3, 0.45, 0.55 * _FOG[:, None, None]))
    for index, scale, shift in changes:
        chosen = (modifier == index).nonzero()[:, 0]
        if len(chosen):
            img[chosen] = (scale * img[chosen] + shift).clamp(0, 1)
    return img


def render_attributes(attributes: Sequence[Attributes], size: int = 32) -> torch.Tensor:
    """The images of ``attributes``: (N, 3, size, size) float32 in [-1, 1]."""
    size = check_int("size", size, minimum=8)
    if len(attributes) == 0:
        raise InvalidArgumentError("attributes", "expected at least one")
    rows = [a.labels() for a in attributes]
    return render_labels({name: torch.tensor([r[name] for r in rows]) for name in VOCABULARIES}, size)


def render_labels(labels: dict[str, torch.Tensor], size: int = 32) -> torch.Tensor:
    """:func:`render_attributes` from label indices: ``labels[name]`` is an (N,) integer tensor
    for every name in :data:`VOCABULARIES` (a colour equal to the background is not checked)."""
    size = check_int("size", size, minimum=8)
    missing = set(VOCABULARIES) - set(labels)
    if missing:
        raise InvalidArgumentError("labels", f"missing {', '.join(sorted(missing))}")
    cover = _masks(size)[labels["shape"], labels["size"], labels["position"]][:, None]  # (N, 1, H, W)
    colour = _PALETTE[labels["colour"]][:, :, None, None]
    background = _PALETTE[torch.tensor([list(COLOURS).index(b) for b in BACKGROUNDS])][labels["background"]]
    img = torch.lerp(background[:, :, None, None], colour, cover)
    return _apply_modifiers(img, labels["modifier"]).mul_(2).sub_(1)


class ShapesDataset:
    """``count`` random captioned images, deterministic in ``seed``; item ``i`` is
    ``(image (3, size, size) in [-1, 1], caption, attributes)``. Attributes repeat across items
    (some 46 000 combinations exist); captions are paraphrases drawn by :func:`describe`.

    Attributes and captions are drawn at construction; images are rendered on access
    (:meth:`images` renders a batch at once).
    """

    def __init__(self, count: int, seed: int = 0, size: int = 32):
        count = check_int("count", count, minimum=1)
        if count > MAX_COUNT:
            raise InvalidArgumentError("count", f"must be <= {MAX_COUNT}, got {count}")
        self.size = check_int("size", size, minimum=8)
        rng = random.Random(check_int("seed", seed, minimum=0))
        self.attributes = tuple(draw_attributes(rng) for _ in range(count))
        self.captions = tuple(describe(a, rng) for a in self.attributes)

    def __len__(self) -> int:
        return len(self.attributes)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, str, Attributes]:
        a = self.attributes[index]
        return render_attributes((a,), self.size)[0], self.captions[index], a

    def images(self, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """The images of items ``start`` to ``stop`` (exclusive; None is the end)."""
        chosen = self.attributes[start:stop]
        if not chosen:
            raise InvalidArgumentError("start", f"selects no items of {len(self)} (start={start}, stop={stop})")
        return render_attributes(chosen, self.size)
