"""The policy: prompt similarity -> resume step and transition length, or a miss.

Similarity is the cosine of two prompts' text embeddings under the cache's encoder (a policy's
thresholds hold for the encoder they were set with: state which one a table used). A bucket
``(min_similarity, resume_fraction, transition_steps)`` applies above its threshold; the resume
step is ``round(resume_fraction * steps)`` grid steps from the noise (sigma = 1) end.
"""

from __future__ import annotations

from dataclasses import dataclass

from .._checks import check_int, check_real
from ..errors import InvalidArgumentError, UnknownNameError


@dataclass(frozen=True)
class Bucket:
    """One row of a policy.

    Attributes:
        min_similarity: the bucket applies to similarities strictly above this.
        resume_fraction: fraction of the grid's steps skipped, in (0, 1).
        transition_steps: transition length H in grid steps (>= 1).
    """

    min_similarity: float
    resume_fraction: float
    transition_steps: int

    def __post_init__(self) -> None:
        check_real("min_similarity", self.min_similarity, low=-1.0, high=1.0)
        check_real("resume_fraction", self.resume_fraction, low=0.0, high=1.0)
        if not 0.0 < self.resume_fraction < 1.0:
            raise InvalidArgumentError("resume_fraction", f"must be in (0, 1), got {self.resume_fraction}")
        check_int("transition_steps", self.transition_steps, minimum=1)


@dataclass(frozen=True)
class Decision:
    """What the policy decided for one look-up.

    Attributes:
        hit: False for a miss (generate from scratch).
        similarity: the similarity it decided on.
        resume_step: grid step to resume from (None on a miss).
        transition_steps: transition length H (None on a miss).
    """

    hit: bool
    similarity: float
    resume_step: int | None = None
    transition_steps: int | None = None


@dataclass(frozen=True)
class CachePolicy:
    """Buckets by decreasing threshold; below the last threshold is a miss.

    Attributes:
        name: what the figures call it.
        buckets: the rows, thresholds strictly decreasing.
    """

    name: str
    buckets: tuple[Bucket, ...]

    def __post_init__(self) -> None:
        if not self.buckets:
            raise InvalidArgumentError("buckets", "a policy needs at least one bucket")
        thresholds = [b.min_similarity for b in self.buckets]
        if any(a <= b for a, b in zip(thresholds, thresholds[1:])):
            raise InvalidArgumentError("buckets", f"thresholds must strictly decrease, got {thresholds}")

    @property
    def miss_below(self) -> float:
        """Similarities at or below this are misses."""
        return self.buckets[-1].min_similarity

    def cached_steps(self, steps: int) -> tuple[int, ...]:
        """The grid steps a generation of ``steps`` steps must keep so that every bucket can resume."""
        return tuple(sorted({self.resume_step(b, steps) for b in self.buckets}))

    @staticmethod
    def resume_step(bucket: Bucket, steps: int) -> int:
        steps = check_int("steps", steps, minimum=2)
        return min(max(round(bucket.resume_fraction * steps), 1), steps - 1)

    def decide(self, similarity: float, steps: int) -> Decision:
        """The bucket that ``similarity`` falls in, for a grid of ``steps`` steps."""
        similarity = check_real("similarity", similarity, low=-1.0 - 1e-6, high=1.0 + 1e-6)
        for bucket in self.buckets:
            if similarity > bucket.min_similarity:
                return Decision(True, similarity, self.resume_step(bucket, steps), bucket.transition_steps)
        return Decision(False, similarity)


# The seed's table (CLIP text cosine): >0.95, 0.90-0.95, 0.85-0.90 and <0.85 with transition
# lengths 3 / 5 / 8 (its adaptive sigmoid). It states speedups (2.25x, 1.75x, 1.45x, 1.10x), not
# resume steps; the fraction skipped is read off them as 1 - 1/speedup. Its "< 0.85" row has no
# lower bound; NIRVANA's last threshold (0.65) is used.
SEED_POLICY = CachePolicy(
    "seed",
    (
        Bucket(0.95, 1 - 1 / 2.25, 3),
        Bucket(0.90, 1 - 1 / 1.75, 5),
        Bucket(0.85, 1 - 1 / 1.45, 8),
        Bucket(0.65, 1 - 1 / 1.10, 8),
    ),
)

# NIRVANA (NSDI 2024), skipped steps K of 50: >0.95 -> 25, >0.90 -> 20, >0.85 -> 15,
# >0.75 -> 10, >0.65 -> 5, otherwise a miss. NIRVANA switches directly; the transition lengths
# here are the seed's 3 / 5 / 8, for strategies that blend or plan.
NIRVANA_POLICY = CachePolicy(
    "nirvana",
    (
        Bucket(0.95, 25 / 50, 3),
        Bucket(0.90, 20 / 50, 5),
        Bucket(0.85, 15 / 50, 8),
        Bucket(0.75, 10 / 50, 8),
        Bucket(0.65, 5 / 50, 8),
    ),
)

POLICIES = {"seed": SEED_POLICY, "nirvana": NIRVANA_POLICY}


def get_policy(name: str) -> CachePolicy:
    try:
        return POLICIES[name]
    except (KeyError, TypeError):
        raise UnknownNameError("policy", name, list(POLICIES)) from None
