"""The shipped prompt pairs (A, B) of the cross-prompt caching benchmark, in similarity buckets.

A pair's bucket is the cosine similarity of its two prompts under all-MiniLM-L6-v2
(:class:`flowctl.text.MiniLMEncoder`); every pair sits at least 0.005 inside its bucket's edges
(tests/test_pairs.py measures it). Another encoder gives other similarities, and may put a pair
in another bucket: a table states which encoder it used. The prompts use the vocabulary of the
shape captions (:mod:`flowctl.systems.shapes`), so the prompted mixture's image responds to B:

- "> 0.95": paraphrases and word-order changes;
- "0.90-0.95": one modifier changed: size, position or background colour;
- "0.85-0.90": the shape's colour changed;
- "< 0.85": the shape changed, or a different prompt altogether.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .._checks import check_real
from ..errors import InvalidArgumentError

ENCODER_NAME = "all-MiniLM-L6-v2"

# (name, low, high): a similarity s is in the bucket when low <= s < high.
BUCKETS: tuple[tuple[str, float, float], ...] = (
    (">0.95", 0.95, math.inf),
    ("0.90-0.95", 0.90, 0.95),
    ("0.85-0.90", 0.85, 0.90),
    ("<0.85", -math.inf, 0.85),
)
BUCKET_NAMES = tuple(name for name, _, _ in BUCKETS)


def bucket_of(similarity: float) -> str:
    """The name of the bucket that holds a cosine similarity in [-1, 1]."""
    s = check_real("similarity", similarity, low=-1.0 - 1e-6, high=1.0 + 1e-6)
    return next(name for name, low, high in BUCKETS if low <= s < high)


@dataclass(frozen=True)
class PromptPair:
    """Prompt A (generated first, filling the cache), prompt B (served from it), and the
    similarity bucket the pair belongs to under :data:`ENCODER_NAME`."""

    a: str
    b: str
    bucket: str

    def __post_init__(self) -> None:
        for name in ("a", "b"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip():
                raise InvalidArgumentError(name, f"expected a non-empty prompt, got {value!r}")
        if self.bucket not in BUCKET_NAMES:
            raise InvalidArgumentError("bucket", f"expected one of {', '.join(BUCKET_NAMES)}, got {self.bucket!r}")


_PAIRS = {
    ">0.95": (
        ("a large red circle on a blue background", "a big red circle on a blue background"),
        ("a large red circle on a blue background", "a blue background with a large red circle"),
        ("a small green triangle at the top left on a white background",
         "a small green triangle in the top left on a white background"),
        ("a large yellow star on a black background", "a big yellow star on a black background"),
        ("a large pink cross on a black background", "a black background with a large pink cross"),
        ("a small white diamond on the right on a red background",
         "on a red background, a small white diamond on the right"),
        ("a large purple ring on a white background", "a large purple ring against a white background"),
        ("a small orange hexagon at the bottom on a green background",
         "a little orange hexagon at the bottom on a green background"),
        ("a small black star at the top right on a purple background",
         "a small black star in the upper right corner on a purple background"),
    ),
    "0.90-0.95": (
        ("a large red circle on a blue background", "a small red circle on a blue background"),
        ("a large red circle on a blue background", "a large red circle at the bottom right on a blue background"),
        ("a large red circle on a blue background", "a large red circle on a green background"),
        ("a large yellow star on a black background", "a large yellow star on a white background"),
        ("a small green triangle at the top left on a white background",
         "a small green triangle at the top left on a black background"),
        ("a large purple ring on a white background", "a large purple ring on a red background"),
        ("a small orange hexagon at the bottom on a green background",
         "a large orange hexagon at the top on a green background"),
        ("a large brown square on a yellow background", "a large brown square on a white background"),
    ),
    "0.85-0.90": (
        ("a large red circle on a blue background", "a large green circle on a blue background"),
        ("a large red circle on a blue background", "a large orange circle on a blue background"),
        ("a large yellow star on a black background", "a large orange star on a black background"),
        ("a small blue square on the left on a gray background",
         "a small green square on the left on a gray background"),
        ("a large pink cross on a black background", "a large purple cross on a black background"),
        ("a small green triangle at the top left on a white background",
         "a small purple triangle at the top left on a white background"),
        ("a small black star at the top right on a purple background",
         "a small yellow star at the top right on a purple background"),
        ("a large brown square on a yellow background", "a large blue square on a yellow background"),
    ),
    "<0.85": (
        ("a large red circle on a blue background", "a large red ring on a blue background"),
        ("a large blue square on a white background", "a large blue diamond on a white background"),
        ("a small pink star on a gray background", "a small pink cross on a gray background"),
        ("a large red circle on a blue background", "a large blue square on a red background"),
        ("a large red circle on a blue background", "a large red circle and a small yellow star on a blue background"),
        ("a large red circle on a blue background", "a small green triangle at the top left on a white background"),
        ("a large yellow star on a black background", "a small blue square on the left on a gray background"),
        ("a large purple ring on a white background", "a small orange hexagon at the bottom on a green background"),
    ),
}

PROMPT_PAIRS: tuple[PromptPair, ...] = tuple(
    PromptPair(a, b, bucket) for bucket, pairs in _PAIRS.items() for a, b in pairs
)
