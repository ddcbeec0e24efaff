"""Parse a prompt in the shape world's vocabulary back into :class:`Attributes`.

The parser reads every caption :func:`~flowctl.data.shapes_dataset.describe` writes, and the
usual paraphrases: "big" is "large", "little" and "tiny" are "small", "upper"/"lower" are
"top"/"bottom", "grey" is "gray", "against a ... background" is "on a ... background". A prompt
that does not describe exactly one shape of this world (two shapes, a missing size or colour, a
word the world does not know) parses to None.
"""

from __future__ import annotations

import re

from ..errors import InvalidArgumentError
from ..systems.shapes import BACKGROUNDS, COLOURS, SHAPES
from .shapes_dataset import Attributes

_SIZES = {"small": "small", "little": "small", "tiny": "small", "large": "large", "big": "large"}
_COLOURS = {**{c: c for c in COLOURS}, "grey": "gray"}
_MODIFIERS = (
    (r"\bat (?:sunset|dusk)\b", "at sunset"),
    (r"\bat (?:night|nighttime)\b", "at night"),
    (r"\bin (?:the )?fog\b", "in fog"),
)
_VERTICAL = {"top": -1, "upper": -1, "bottom": 1, "lower": 1}
_HORIZONTAL = {"left": -1, "right": 1}
_CENTRE = {"middle", "centre", "center"}
_FILLER = {"a", "an", "the", "on", "in", "at", "near", "with", "against", "corner", "side", "of"}
_KNOWN = set(SHAPES) | set(_COLOURS) | set(_SIZES) | set(_VERTICAL) | set(_HORIZONTAL) | _CENTRE | _FILLER
_POSITION_NAMES = {
    (0, 0): "", (-1, 0): "on the left", (1, 0): "on the right", (0, -1): "at the top",
    (0, 1): "at the bottom", (-1, -1): "at the top left", (1, -1): "at the top right",
    (-1, 1): "at the bottom left", (1, 1): "at the bottom right",
}


def _one(found: list[str]) -> str | None:
    return found[0] if len(set(found)) == 1 else None


def parse_prompt(text: str) -> Attributes | None:
    """The attributes ``text`` describes, or None when it describes no single shape of this
    world. Case and punctuation are ignored; no position means the centre, no modifier none."""
    if not isinstance(text, str):
        raise InvalidArgumentError("text", f"expected a string, got {type(text).__name__}")
    if not text.strip():
        raise InvalidArgumentError("text", "expected a non-empty prompt")
    rest = re.sub(r"[^a-z ]", " ", text.lower())
    modifiers = []
    for pattern, name in _MODIFIERS:
        rest, hits = re.subn(pattern, " ", rest)
        modifiers += [name] * hits
    backgrounds = re.findall(r"\b([a-z]+) background\b", rest)
    rest = re.sub(r"\b[a-z]+ background\b", " ", rest)
    words = rest.split()
    shape = _one([w for w in words if w in SHAPES])
    colour = _one([_COLOURS[w] for w in words if w in _COLOURS])
    size = _one([_SIZES[w] for w in words if w in _SIZES])
    background = _one([_COLOURS.get(b, b) for b in backgrounds])
    vertical = [_VERTICAL[w] for w in words if w in _VERTICAL]
    horizontal = [_HORIZONTAL[w] for w in words if w in _HORIZONTAL]
    centre = [w for w in words if w in _CENTRE]
    if (
        None in (shape, colour, size, background)
        or any(w not in _KNOWN for w in words)
        or len(modifiers) > 1 or len(vertical) > 1 or len(horizontal) > 1
        or (centre and (vertical or horizontal))
        or background not in BACKGROUNDS
        or colour == background
    ):
        return None
    position = _POSITION_NAMES[(horizontal[0] if horizontal else 0, vertical[0] if vertical else 0)]
    return Attributes(shape, colour, size, position, background, modifiers[0] if modifiers else "")
