import pytest
import torch

from flowctl import InvalidArgumentError, SigmaGrid, integrate
from flowctl.cache import CachedGenerator, CacheStore, DiskStore, NIRVANA_POLICY
from flowctl.systems import PromptedMixtureFlow
from flowctl.text import HashingEncoder
from flowctl.transitions import Blend

PROMPT = "a large red circle on a blue background"


@pytest.fixture(scope="module")
def model():
    return PromptedMixtureFlow(HashingEncoder(), components=12, size=8)


def generator(model, store=None, **kwargs):
    store = store if store is not None else CacheStore(device_bytes=1 << 24, host_bytes=1 << 24)
    return CachedGenerator(model, model.encoder, store, SigmaGrid.create(10, 3.0), **kwargs)


def noise(seed=0):
    return torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(seed))


def test_a_miss_generates_from_scratch_and_fills_the_cache(model):
    g = generator(model)
    result = g.generate(PROMPT, noise())
    assert not result.hit and result.entry_id in g.store
    assert result.nfe == {"forward": 10}
    expected = integrate(model, noise(), g.grid, model.condition(PROMPT), keep="final").final
    assert torch.equal(result.final, expected)
    entry = g.store.get(result.entry_id)
    assert entry.cached_steps == g.policy.cached_steps(10) and entry.prompt == PROMPT
    assert torch.equal(entry.noise, noise())


def test_same_prompt_resumes_bit_for_bit(model):
    g = generator(model)
    first = g.generate(PROMPT, noise())
    again = g.generate(PROMPT, noise(1))  # a hit continues the cached run (its noise), not this one
    assert again.hit and again.lookup.decision.similarity == pytest.approx(1.0)
    assert again.lookup.decision.resume_step == g.policy.decide(1.0, 10).resume_step
    assert torch.equal(again.final, first.final)
    assert again.nfe["forward"] == 10 - again.lookup.decision.resume_step
    assert set(again.timings) == {"lookup", "continuation"}


def test_a_similar_prompt_hits_and_runs_the_strategy(model):
    g = generator(model, policy=NIRVANA_POLICY, strategy=Blend("linear"))
    g.generate(PROMPT, noise())
    result = g.generate("a big red circle on a blue background", noise())
    assert result.hit and result.transition.strategy == "linear blend"
    assert result.lookup.match.prompt == PROMPT
    assert g.generate("zebra", noise()).hit is False  # nothing alike: a miss, stored
    assert len(g.store) == 2


def test_entries_never_resume_under_another_model_or_settings(model):
    store = CacheStore(device_bytes=1 << 24, host_bytes=1 << 24)
    generator(model, store).generate(PROMPT, noise())
    other = PromptedMixtureFlow(HashingEncoder(), components=12, size=8, temperature=0.1)
    assert not generator(other, store).generate(PROMPT, noise()).hit
    assert not generator(model, store, guidance=7.0).generate(PROMPT, noise()).hit
    shorter = CachedGenerator(model, model.encoder, store, SigmaGrid.create(8, 3.0))
    assert not shorter.generate(PROMPT, noise()).hit
    assert not generator(model, store).generate(PROMPT, torch.randn(3, 3, 8, 8)).hit  # another batch shape


def test_namespaces_isolate_tenants(model):
    store = CacheStore(device_bytes=1 << 24, host_bytes=1 << 24)
    generator(model, store, namespace="alice").generate(PROMPT, noise())
    assert not generator(model, store, namespace="bob").generate(PROMPT, noise()).hit
    assert generator(model, store, namespace="alice").generate(PROMPT, noise()).hit


def test_the_cache_survives_a_restart(model, tmp_path):
    first = generator(model, CacheStore(device_bytes=1 << 24, host_bytes=0, persistent=DiskStore(tmp_path))).generate(PROMPT, noise())
    restarted = generator(model, CacheStore(device_bytes=1 << 24, host_bytes=0, persistent=DiskStore(tmp_path)))
    result = restarted.generate(PROMPT, noise())
    assert result.hit and torch.equal(result.final, first.final)


def test_bad_prompts_and_noise_are_typed_errors(model):
    g = generator(model)
    for prompt in ("", "   "):
        with pytest.raises(InvalidArgumentError) as err:
            g.generate(prompt, noise())
        assert err.value.argument == "prompts"
    with pytest.raises(InvalidArgumentError):
        g.generate(PROMPT, torch.full((2, 3, 8, 8), float("nan")))
    assert len(g.store) == 0


def test_entries_never_match_under_another_encoder(model):
    store = CacheStore(device_bytes=1 << 24, host_bytes=1 << 24)
    generator(model, store).generate(PROMPT, noise())
    other = CachedGenerator(model, HashingEncoder(), store, SigmaGrid.create(10, 3.0))
    assert other.generate(PROMPT, noise()).hit  # the same encoder: a hit
    renamed = HashingEncoder()
    renamed.name = "another-512-dim-encoder"
    assert not CachedGenerator(model, renamed, store, SigmaGrid.create(10, 3.0)).generate(PROMPT, noise()).hit


class _CountingConditions:
    """The model, counting how often a prompt becomes a condition."""

    def __init__(self, model):
        self.model, self.fingerprint, self.calls = model, model.fingerprint, []

    def velocity(self, x, t, cond=None):
        return self.model.velocity(x, t, cond)

    def condition(self, prompt):
        self.calls.append(prompt)
        return self.model.condition(prompt)


def test_hits_reuse_the_cached_prompts_condition(model):
    counting = _CountingConditions(model)
    g = CachedGenerator(counting, model.encoder, CacheStore(device_bytes=1 << 24, host_bytes=0), SigmaGrid.create(10, 3.0))
    g.generate(PROMPT, noise())
    for _ in range(3):
        assert g.generate(PROMPT, noise()).hit
    assert counting.calls == [PROMPT]  # encoded once, for the miss; every hit reused it


def test_fill_stores_the_steps_asked_with_their_velocities(model):
    g = generator(model)
    result = g.fill(PROMPT, noise(), steps=[2, 5, 7])
    assert result.lookup is None and result.nfe == {"forward": 10}
    entry = g.store.get(result.entry_id)
    assert entry.cached_steps == (2, 5, 7) and list(entry.velocities) == [2, 5, 7]
    expected = integrate(model, noise(), g.grid, model.condition(PROMPT), keep="final").final
    assert torch.equal(result.final, expected)
    with pytest.raises(InvalidArgumentError, match="prompt"):
        g.fill("  ", noise())
