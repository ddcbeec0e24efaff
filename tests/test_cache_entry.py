import json

import pytest
import torch

from flowctl import GaussianMixtureFlow, SigmaGrid, integrate, resume
from flowctl.cache.entry import CacheEntry, CacheKey
from flowctl.errors import (
    InvalidArgumentError,
    NonFiniteError,
    ShapeError,
    UnknownNameError,
)

GRID = SigmaGrid.create(12, 3.0)
SHAPE = (2, 3, 8, 8)
KEY = CacheKey.for_grid("gmm", GRID, shape=SHAPE, dtype="float32")


@pytest.fixture(scope="module")
def run():
    """An uninterrupted run on the 12-step SD3 grid, every state kept, and its cache entry."""
    gen = torch.Generator().manual_seed(0)
    flow = GaussianMixtureFlow(torch.randn(8, 3, 8, 8, generator=gen), 0.5)
    cond = torch.softmax(torch.randn(8, generator=gen), 0)
    generator_state = gen.get_state()
    noise = torch.randn(SHAPE, generator=gen)
    full = integrate(flow, noise, GRID, cond, keep="all", generator_state=generator_state)
    entry = CacheEntry.from_trajectory(
        full, key=KEY, prompt="a red cube", embedding=torch.randn(16, generator=gen), steps=[0, 3, 6, 9]
    )
    return flow, cond, full, entry


@pytest.mark.parametrize("step", [0, 3, 6, 9])
def test_resuming_a_cached_step_reproduces_the_uninterrupted_run_bit_for_bit(run, step):
    flow, cond, full, entry = run
    point = entry.resume_point(step)
    assert torch.equal(point.sigma, entry.sigma(step)) and torch.equal(point.dt, entry.dt(step))
    assert torch.equal(point.timestep, entry.timestep(step))
    resumed = resume(flow, point, cond)
    for k in range(step, GRID.steps + 1):
        assert torch.equal(resumed.states[k], full.states[k])
    # The same through a copy made by to().
    assert torch.equal(resume(flow, entry.to("cpu").resume_point(step), cond).final, full.final)


def test_the_generator_state_redraws_the_noise(run):
    _, _, _, entry = run
    gen = torch.Generator()
    gen.set_state(entry.to("cpu").generator_state)
    assert torch.equal(torch.randn(SHAPE, generator=gen), entry.noise)


def test_an_entry_describes_itself(run):
    _, _, full, entry = run
    assert entry.cached_steps == (0, 3, 6, 9)
    assert entry.embedding.dtype == torch.float32
    assert float(entry.embedding.norm()) == pytest.approx(1.0, abs=1e-6)
    assert len(entry.entry_id) == 32 and entry.namespace == "default"
    assert tuple(entry.velocities) == entry.cached_steps  # the run's velocities, kept with its states
    assert torch.equal(entry.resume_point(3).velocity, full.velocities[3])
    tensors = [*entry.states.values(), *entry.velocities.values(), entry.noise, entry.embedding, entry.generator_state]
    assert torch.equal(entry.grid.values, GRID.values) and entry.grid.key == GRID.key  # from the key: stored nowhere
    assert entry.nbytes == sum(t.numel() * t.element_size() for t in tensors)
    # Re-validating a stored entry (as loading one does) keeps the embedding's bits.
    again = CacheEntry(entry.key, entry.prompt, entry.embedding, entry.states, entry.noise)
    assert torch.equal(again.embedding, entry.embedding)
    assert torch.equal(entry.states[9], full.states[9])


def test_an_unknown_step_names_the_cached_ones(run):
    _, _, _, entry = run
    with pytest.raises(InvalidArgumentError, match=r"cached: \[0, 3, 6, 9\]") as info:
        entry.resume_point(4)
    assert info.value.argument == "step"
    with pytest.raises(InvalidArgumentError, match="step"):
        entry.dt(12)


def test_from_trajectory_keeps_only_kept_steps(run):
    flow, cond, full, _ = run
    sparse = integrate(flow, full.states[0], GRID, cond, keep=[4])
    with pytest.raises(InvalidArgumentError, match="not kept") as info:
        CacheEntry.from_trajectory(sparse, key=KEY, prompt="p", embedding=torch.ones(4), steps=[3])
    assert info.value.argument == "steps"
    heun = CacheKey.for_grid("gmm", GRID, shape=SHAPE, dtype="float32", method="heun")
    with pytest.raises(InvalidArgumentError, match="method"):
        CacheEntry.from_trajectory(sparse, key=heun, prompt="p", embedding=torch.ones(4), steps=[4])


def test_key_round_trips_through_json():
    key = CacheKey.for_grid("sd3", SigmaGrid.create(28, mu=0.7), shape=[1, 16, 4, 4], dtype=torch.bfloat16, guidance=7)
    assert (key.steps, key.shift, key.mu, key.shape, key.dtype, key.guidance) == (28, 3.0, 0.7, (1, 16, 4, 4), "bfloat16", 7.0)
    assert CacheKey.from_json(json.loads(json.dumps(key.to_json()))) == key
    assert hash(CacheKey.from_json(key.to_json())) == hash(key)
    with pytest.raises(InvalidArgumentError):
        CacheKey.from_json({**key.to_json(), "extra": 1})


@pytest.mark.parametrize(
    "change, error",
    [
        ({"model": " "}, InvalidArgumentError),
        ({"steps": 0}, InvalidArgumentError),
        ({"shift": 0.0}, InvalidArgumentError),
        ({"mu": float("nan")}, NonFiniteError),
        ({"guidance": float("inf")}, NonFiniteError),
        ({"method": "ddim"}, UnknownNameError),
        ({"shape": (2, 0, 8)}, InvalidArgumentError),
        ({"shape": "2x3"}, ShapeError),
        ({"dtype": "int64"}, InvalidArgumentError),
        ({"dtype": "float33"}, InvalidArgumentError),
    ],
)
def test_bad_keys_raise_typed_errors(change, error):
    with pytest.raises(error):
        CacheKey(**{**KEY.to_json(), **change})


def _fields(run):
    full = run[2]
    return {
        "key": KEY,
        "prompt": "a red cube",
        "embedding": torch.ones(4),
        "states": {3: full.states[3]},
        "noise": full.noise,
    }


@pytest.mark.parametrize(
    "change, error, argument",
    [
        ({"states": {3: torch.full(SHAPE, float("nan"))}}, NonFiniteError, "states[3]"),
        ({"states": {3: torch.zeros(1, 3, 8, 8)}}, ShapeError, "states[3]"),
        ({"states": {3: torch.zeros(SHAPE, dtype=torch.float64)}}, InvalidArgumentError, "states[3]"),
        ({"states": {12: torch.zeros(SHAPE)}}, InvalidArgumentError, "states"),
        ({"states": {-1: torch.zeros(SHAPE)}}, InvalidArgumentError, "states"),
        ({"states": {}}, InvalidArgumentError, "states"),
        ({"noise": torch.zeros(2, 3, 8)}, ShapeError, "noise"),
        ({"prompt": "   "}, InvalidArgumentError, "prompt"),
        ({"embedding": torch.ones(2, 2)}, ShapeError, "embedding"),
        ({"embedding": torch.zeros(4)}, InvalidArgumentError, "embedding"),
        ({"embedding": torch.tensor([1.0, float("nan")])}, NonFiniteError, "embedding"),
        ({"namespace": ""}, InvalidArgumentError, "namespace"),
        ({"entry_id": "../etc/passwd"}, InvalidArgumentError, "entry_id"),
        ({"generator_state": torch.zeros(8)}, InvalidArgumentError, "generator_state"),
    ],
)
def test_bad_entries_raise_typed_errors(run, change, error, argument):
    with pytest.raises(error) as info:
        CacheEntry(**{**_fields(run), **change})
    assert info.value.argument == argument


def test_the_key_covers_every_grid_setting():
    grid = SigmaGrid.create(12, 3.0, mu=0.8)
    key = CacheKey.for_grid("m", grid, shape=(2, 3, 8, 8), dtype="float32")
    assert key.time_shift == "exponential" and key.num_train_timesteps == 1000
    linear = CacheKey.for_grid("m", SigmaGrid.create(12, 3.0, mu=0.8, time_shift="linear"), shape=(2, 3, 8, 8), dtype="float32")
    assert linear != key
    assert CacheKey.from_json(key.to_json()) == key


def test_moving_an_entry_copies_without_checking_again(run, monkeypatch):
    _, _, _, entry = run
    import flowctl._checks

    def refuse(*args, **kwargs):
        raise AssertionError("validated again")

    monkeypatch.setattr(flowctl._checks, "check_tensor", refuse)
    monkeypatch.setattr("flowctl.cache.entry.check_tensor", refuse)
    monkeypatch.setattr("flowctl.sampling.grid.check_tensor", refuse)
    moved = entry.to("cpu", copy=True)
    assert moved.states[3].data_ptr() != entry.states[3].data_ptr() and torch.equal(moved.states[3], entry.states[3])
    assert (moved.entry_id, moved.key, moved.created) == (entry.entry_id, entry.key, entry.created)


def test_an_entry_of_another_grid_is_refused(run):
    _, _, full, _ = run
    other = CacheKey.for_grid("gmm", SigmaGrid.create(12, 2.0), shape=SHAPE, dtype="float32")
    with pytest.raises(InvalidArgumentError) as info:
        CacheEntry.from_trajectory(full, key=other, prompt="a red cube", embedding=torch.ones(4), steps=[3])
    assert info.value.argument == "key"


def test_the_key_keeps_the_grids_own_sigmas():
    flux_like = SigmaGrid(torch.tensor([1.0, 0.75, 0.5, 0.0]), shift=1.0, mu=0.9)  # not what create() makes
    key = CacheKey.for_grid("flux", flux_like, shape=SHAPE, dtype="float32")
    assert key.sigmas == (1.0, 0.75, 0.5, 0.0) and key != CacheKey("flux", 3, 1.0, 0.9, 0.0, "euler", SHAPE, "float32")
    assert CacheKey.from_json(key.to_json()) == key
    older = {k: v for k, v in KEY.to_json().items() if k != "sigmas"}  # keys written before sigmas were kept
    assert CacheKey.from_json(older) == KEY
    with pytest.raises(InvalidArgumentError, match="sigmas"):
        CacheKey("m", 3, 1.0, None, 0.0, "euler", SHAPE, "float32", sigmas=(1.0, 0.5, 0.6, 0.0))
