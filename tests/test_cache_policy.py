import pytest

from flowctl import InvalidArgumentError, UnknownNameError
from flowctl.cache import NIRVANA_POLICY, SEED_POLICY, Bucket, CachePolicy, get_policy


def test_nirvana_preset_skips_its_published_steps_of_50():
    expected = {0.96: 25, 0.93: 20, 0.88: 15, 0.8: 10, 0.7: 5}
    for similarity, skipped in expected.items():
        d = NIRVANA_POLICY.decide(similarity, 50)
        assert d.hit and d.resume_step == skipped
    assert not NIRVANA_POLICY.decide(0.65, 50).hit  # thresholds are strict
    assert NIRVANA_POLICY.cached_steps(50) == (5, 10, 15, 20, 25)


def test_seed_preset_reads_resume_steps_off_its_speedups():
    d = SEED_POLICY.decide(0.97, 28)
    assert d.hit and d.transition_steps == 3
    assert d.resume_step == round((1 - 1 / 2.25) * 28)  # 2.25x: 56% of the steps skipped
    assert SEED_POLICY.decide(0.92, 28).transition_steps == 5
    assert SEED_POLICY.decide(0.86, 28).transition_steps == 8
    assert not SEED_POLICY.decide(0.2, 28).hit
    assert get_policy("seed") is SEED_POLICY


def test_resume_steps_stay_inside_the_grid():
    p = CachePolicy("tiny", (Bucket(0.5, 0.99, 1), Bucket(0.1, 0.01, 1)))
    assert p.decide(0.9, 4).resume_step == 3 and p.decide(0.2, 4).resume_step == 1


def test_bad_policies_are_refused():
    with pytest.raises(InvalidArgumentError) as err:
        CachePolicy("unordered", (Bucket(0.8, 0.5, 3), Bucket(0.9, 0.4, 3)))
    assert err.value.argument == "buckets"
    with pytest.raises(InvalidArgumentError):
        CachePolicy("empty", ())
    with pytest.raises(InvalidArgumentError):
        Bucket(0.9, 1.0, 3)
    with pytest.raises(InvalidArgumentError):
        Bucket(0.9, 0.5, 0)
    with pytest.raises(UnknownNameError):
        get_policy("fastest")
    with pytest.raises(InvalidArgumentError):
        SEED_POLICY.decide(float("nan"), 28)
