import dataclasses
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from flowctl import SigmaGrid
from flowctl.cache.disk import DiskStore
from flowctl.cache.entry import CacheEntry, CacheKey, CacheMissError
from flowctl.cache.store import CacheStore
from flowctl.errors import (
    InvalidArgumentError,
    NonFiniteError,
    ShapeError,
    UnknownNameError,
)

GRID = SigmaGrid.create(12, 3.0)
KEY = CacheKey.for_grid("model-a", GRID, shape=(1, 4), dtype="float32")
OTHER_KEY = CacheKey.for_grid("model-b", GRID, shape=(1, 4), dtype="float32")
DIM = 4


def make_entry(seed, *, key=KEY, steps=(3,), namespace="default", embedding=None, **fields):
    gen = torch.Generator().manual_seed(seed)

    def latent():
        return torch.randn(key.shape, generator=gen)

    if embedding is None:
        embedding = torch.randn(DIM, generator=gen)
    return CacheEntry(
        key,
        f"prompt {seed}",
        embedding,
        {k: latent() for k in steps},
        latent(),
        namespace=namespace,
        **fields,
    )


SIZE = make_entry(0).nbytes  # bytes of a one-step entry; each further step adds a latent


def same_tensors(a, b):
    return (
        a.cached_steps == b.cached_steps
        and all(torch.equal(a.states[k], b.states[k]) for k in a.states)
        and torch.equal(a.noise, b.noise)
        and torch.equal(a.embedding, b.embedding)
    )


class StoreMachine(RuleBasedStateMachine):
    """Random put / get / nearest / remove sequences against a model of what must be stored."""

    eviction = "lru"

    @initialize(device_bytes=st.integers(0, 4 * SIZE), host_bytes=st.integers(0, 4 * SIZE), use_disk=st.booleans())
    def setup(self, device_bytes, host_bytes, use_disk):
        self.tmp = tempfile.TemporaryDirectory() if use_disk else None
        disk = DiskStore(self.tmp.name) if use_disk else None
        self.store = CacheStore(device_bytes=device_bytes, host_bytes=host_bytes, eviction=self.eviction, persistent=disk)
        self.live = {}  # entry id -> the entry last put under it
        self.seed = 0

    def teardown(self):
        if getattr(self, "tmp", None) is not None:
            self.tmp.cleanup()

    def _pick(self, i):
        return list(self.live.values())[i % len(self.live)]

    @rule(steps=st.sampled_from([(3,), (3, 6), (0, 6, 9)]), namespace=st.sampled_from(["a", "b"]), other_key=st.booleans())
    def put(self, steps, namespace, other_key):
        self.seed += 1
        entry = make_entry(self.seed, key=OTHER_KEY if other_key else KEY, steps=steps, namespace=namespace)
        if self.store.persistent is None and entry.nbytes > max(self.store.device_bytes, self.store.host_bytes):
            with pytest.raises(InvalidArgumentError):
                self.store.put(entry)
            return
        assert self.store.put(entry) == entry.entry_id
        self.live[entry.entry_id] = entry

    @precondition(lambda self: self.live)
    @rule(i=st.integers(0, 100))
    def put_again(self, i):
        old = self._pick(i)
        self.seed += 1
        entry = make_entry(self.seed, key=old.key, namespace=old.namespace, entry_id=old.entry_id)
        self.store.put(entry)
        self.live[entry.entry_id] = entry

    @precondition(lambda self: self.live)
    @rule(i=st.integers(0, 100))
    def get(self, i):
        entry = self._pick(i)
        if entry.entry_id not in self.store:  # evicted (there is no disk store)
            assert self.store.persistent is None
            with pytest.raises(CacheMissError):
                self.store.get(entry.entry_id, namespace=entry.namespace)
            return
        got = self.store.get(entry.entry_id, namespace=entry.namespace)
        assert same_tensors(got, entry) and got.noise.device == self.store.device
        other = "b" if entry.namespace == "a" else "a"
        with pytest.raises(CacheMissError):
            self.store.get(entry.entry_id, namespace=other)

    @rule(seed=st.integers(0, 10**6), namespace=st.sampled_from(["a", "b"]), other_key=st.booleans())
    def nearest(self, seed, namespace, other_key):
        key = OTHER_KEY if other_key else KEY
        query = torch.randn(DIM, generator=torch.Generator().manual_seed(seed))
        match = self.store.nearest(query, key, namespace=namespace)
        candidates = [
            e for i, e in self.live.items() if i in self.store and e.key == key and e.namespace == namespace
        ]
        if not candidates:
            assert match is None
            return
        best = max(float(e.embedding @ (query / query.norm())) for e in candidates)
        assert match.namespace == namespace and match.similarity == pytest.approx(best, abs=1e-6)
        assert self.live[match.entry_id].key == key
        assert match.steps == self.live[match.entry_id].cached_steps

    @precondition(lambda self: self.live)
    @rule(i=st.integers(0, 100))
    def remove(self, i):
        entry = self._pick(i)
        if entry.entry_id in self.store:
            self.store.remove(entry.entry_id, namespace=entry.namespace)
        del self.live[entry.entry_id]
        assert entry.entry_id not in self.store

    @invariant()
    def budgets_hold_and_nothing_is_lost(self):
        stats = self.store.stats()
        assert stats.device_bytes_used <= self.store.device_bytes
        assert stats.host_bytes_used <= self.store.host_bytes
        assert stats.device_entries + stats.host_entries + stats.disk_entries == len(self.store)
        # No entry the model does not know; with a disk store, no entry lost.
        assert len(self.store) == sum(i in self.store for i in self.live)
        if self.store.persistent is not None:
            assert len(self.store) == len(self.live) == len(self.store.persistent)


class BenefitMachine(StoreMachine):
    eviction = "benefit"


TestLRUStore = StoreMachine.TestCase
TestLRUStore.settings = settings(stateful_step_count=25)
TestBenefitStore = BenefitMachine.TestCase
TestBenefitStore.settings = settings(stateful_step_count=25)


def test_demoted_entries_stay_retrievable():
    store = CacheStore(device_bytes=SIZE, host_bytes=2 * SIZE)
    a, b = make_entry(1), make_entry(2)
    store.put(a)
    store.put(b)
    stats = store.stats()
    assert (stats.device_entries, stats.host_entries, stats.demotions, stats.evictions) == (1, 1, 1, 0)
    assert same_tensors(store.get(a.entry_id), a)  # promoted back; b demoted in its place
    stats = store.stats()
    assert (stats.device_entries, stats.host_entries, stats.demotions, stats.hits) == (1, 1, 2, 1)
    assert same_tensors(store.get(b.entry_id), b)


@pytest.mark.parametrize(
    "change",
    [{"model": "model-b"}, {"steps": 10}, {"shift": 2.0}, {"guidance": 7.5}, {"mu": 0.5}, {"method": "heun"},
     {"shape": (2, 4)}, {"dtype": "bfloat16"}],
)
def test_entries_never_match_under_another_key(change):
    store = CacheStore()
    entry = make_entry(1)
    store.put(entry)
    assert store.nearest(entry.embedding, KEY).entry_id == entry.entry_id
    assert store.nearest(entry.embedding, dataclasses.replace(KEY, sigmas=None, **change)) is None


def test_namespaces_isolate_unless_crossed_explicitly():
    store = CacheStore()
    alice = make_entry(1, namespace="alice")
    store.put(alice)
    assert store.nearest(alice.embedding, KEY) is None
    assert store.nearest(alice.embedding, KEY, namespace="bob") is None
    with pytest.raises(CacheMissError):
        store.get(alice.entry_id, namespace="bob")
    with pytest.raises(CacheMissError):
        store.remove(alice.entry_id, namespace="bob")
    match = store.nearest(alice.embedding, KEY, namespaces=["bob", "alice"])
    assert (match.entry_id, match.namespace) == (alice.entry_id, "alice")
    assert match.similarity == pytest.approx(1.0)
    assert same_tensors(store.get(alice.entry_id, namespace="alice"), alice)
    with pytest.raises(InvalidArgumentError):
        store.put(make_entry(2, namespace="bob", entry_id=alice.entry_id))  # no overwrite across tenants
    with pytest.raises(InvalidArgumentError):
        store.nearest(alice.embedding, KEY, namespaces="alice")


def test_nearest_prefers_the_most_recent_of_equals_and_checks_the_query():
    store = CacheStore()
    e = torch.tensor([1.0, 0.0, 0.0, 0.0])
    old, new = make_entry(1, embedding=e, created=100.0), make_entry(2, embedding=2 * e, created=200.0)
    store.put(new)
    store.put(old)
    far = make_entry(3, embedding=torch.tensor([0.0, 1.0, 0.0, 0.0]))
    store.put(far)
    assert store.nearest(e, KEY).entry_id == new.entry_id
    newest = make_entry(4, embedding=e, created=300.0)
    store.put(newest)
    assert store.nearest(e, KEY).entry_id == newest.entry_id
    assert store.nearest(torch.tensor([0.1, 1.0, 0.0, 0.0]), KEY).entry_id == far.entry_id
    with pytest.raises(ShapeError):
        store.nearest(torch.ones(DIM + 1), KEY)
    with pytest.raises(NonFiniteError):
        store.nearest(torch.tensor([1.0, float("nan"), 0.0, 0.0]), KEY)


def test_benefit_eviction_evicts_the_low_score_entry():
    def run(eviction):
        store = CacheStore(device_bytes=2 * make_entry(0, steps=(3, 9)).nbytes, host_bytes=0, eviction=eviction)
        a, b = make_entry(1, steps=(3, 9)), make_entry(2, steps=(1, 3))
        store.put(a)
        store.put(b)
        for _ in range(3):
            store.get(a.entry_id)  # score 3 x 9/12
        store.get(b.entry_id)  # score 1 x 3/12, but the most recently used
        store.put(make_entry(3, steps=(3, 9)))
        assert store.stats().evictions == 1
        return a.entry_id in store, b.entry_id in store

    assert run("benefit") == (True, False)
    assert run("lru") == (False, True)


def test_re_putting_an_id_replaces_the_entry():
    store = CacheStore()
    first = make_entry(1)
    second = make_entry(2, entry_id=first.entry_id)
    store.put(first)
    store.put(second)
    assert len(store) == 1 and store.stats().device_bytes_used == second.nbytes
    assert same_tensors(store.get(first.entry_id), second)


def test_eight_threads_inserting_and_reading_lose_nothing():
    # Room for 10 entries on the device: concurrent puts and gets demote and promote all along.
    store = CacheStore(device_bytes=10 * SIZE, host_bytes=1000 * SIZE)
    entries = [[make_entry(100 * t + i) for i in range(25)] for t in range(8)]

    def work(mine):
        for i, entry in enumerate(mine):
            store.put(entry)
            assert same_tensors(store.get(mine[i // 2].entry_id), mine[i // 2])
            assert store.nearest(entry.embedding, KEY) is not None

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads often: races show up within a few operations
    try:
        with ThreadPoolExecutor(max_workers=8) as pool:
            for done in [pool.submit(work, mine) for mine in entries]:
                done.result()  # re-raises a thread's failure
    finally:
        sys.setswitchinterval(interval)
    assert len(store) == 200
    for entry in (e for mine in entries for e in mine):
        assert same_tensors(store.get(entry.entry_id), entry)
    stats = store.stats()
    assert stats.device_bytes_used <= 10 * SIZE and stats.device_entries + stats.host_entries == 200


def test_what_no_tier_can_hold_is_rejected_without_a_disk_store():
    store = CacheStore(device_bytes=SIZE - 1, host_bytes=SIZE - 1)
    with pytest.raises(InvalidArgumentError, match="entry"):
        store.put(make_entry(1))
    assert len(store) == 0


@pytest.mark.parametrize(
    "kwargs, error",
    [({"eviction": "lfu"}, UnknownNameError), ({"device_bytes": -1}, InvalidArgumentError),
     ({"device": "nonsense"}, InvalidArgumentError), ({"persistent": "/tmp"}, InvalidArgumentError)],
)
def test_bad_store_arguments_raise_typed_errors(kwargs, error):
    with pytest.raises(error):
        CacheStore(**kwargs)


def test_a_caller_writing_into_a_fetched_entry_does_not_change_the_cache():
    store = CacheStore(device_bytes=1 << 20, host_bytes=1 << 20)
    entry_id = store.put(make_entry(0))
    fetched = store.get(entry_id)
    before = {k: x.clone() for k, x in fetched.states.items()}
    for x in fetched.states.values():
        x.add_(1.0)
    again = store.get(entry_id)
    assert all(torch.equal(again.states[k], before[k]) for k in before)
