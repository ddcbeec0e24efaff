import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from flowctl import SigmaGrid
from flowctl.cache.disk import CacheCorruptionWarning, DiskStore, _digest
from flowctl.cache.entry import CacheEntry, CacheKey, CacheMissError
from flowctl.cache.store import CacheStore

GRID = SigmaGrid.create(12, 3.0, mu=0.5, time_shift="linear")
KEY = CacheKey.for_grid("model-a", GRID, shape=(1, 4, 8, 8), dtype="float32", guidance=4.5)


def make_entry(seed, *, key=KEY, steps=(0, 3, 6), namespace="default"):
    """A deterministic entry of ``seed`` (the child process of the crash test rebuilds them)."""
    gen = torch.Generator().manual_seed(seed)
    generator_state = gen.get_state()
    noise = torch.randn(key.shape, generator=gen)
    # Step 0 is the noise itself: the file must store it twice (safetensors refuses shared memory).
    states = {k: noise if k == 0 else torch.randn(key.shape, generator=gen) for k in steps}
    return CacheEntry(
        key,
        f"prompt {seed}",
        torch.randn(16, generator=gen),
        states,
        GRID,
        noise,
        generator_state,
        namespace=namespace,
        entry_id=f"e{seed:04d}",
        created=1000.0 + seed,
    )


def assert_same(a, b):
    assert (a.entry_id, a.namespace, a.prompt, a.created, a.key) == (b.entry_id, b.namespace, b.prompt, b.created, b.key)
    assert a.grid.key == b.grid.key and torch.equal(a.grid.values, b.grid.values)
    assert a.cached_steps == b.cached_steps
    assert all(torch.equal(a.states[k], b.states[k]) for k in a.states)
    for name in ("noise", "embedding", "generator_state"):
        assert torch.equal(getattr(a, name), getattr(b, name))


@pytest.fixture
def no_corruption_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error", CacheCorruptionWarning)
        yield


@pytest.fixture
def stored(tmp_path):
    disk = DiskStore(tmp_path)
    entries = [make_entry(i, namespace="ns" if i == 2 else "default") for i in range(3)]
    for entry in entries:
        disk.write(entry)
    return tmp_path, entries


def test_a_restart_sees_every_entry_unchanged(stored, no_corruption_warnings):
    path, entries = stored
    disk = DiskStore(path)
    assert len(disk) == 3 and not disk.skipped
    for entry in entries:
        assert_same(disk.read(entry.entry_id), entry)
    records = {r.entry_id: r for r in disk.index()}
    assert records["e0002"].namespace == "ns" and records["e0001"].steps == (0, 3, 6)
    assert torch.equal(records["e0001"].embedding, entries[1].embedding)
    assert json.loads((path / "index.json").read_text())["entries"]["e0000"]["file"] == "e0000.safetensors"


def test_delete_removes_the_file_and_the_record(stored, no_corruption_warnings):
    path, _ = stored
    disk = DiskStore(path)
    disk.delete("e0001")
    assert not (path / "e0001.safetensors").exists()
    with pytest.raises(CacheMissError):
        disk.read("e0001")
    assert "e0001" not in DiskStore(path) and len(DiskStore(path)) == 2


CHILD = """
import sys
sys.path.insert(0, {tests!r})
from test_cache_disk import make_entry, BIG_KEY
from flowctl.cache.disk import DiskStore
disk = DiskStore({directory!r})
for seed in range(50):
    disk.write(make_entry(seed, key=BIG_KEY, steps=(0, 4, 8)))
    print(f"e{{seed:04d}}", flush=True)
"""
BIG_KEY = CacheKey.for_grid("model-a", GRID, shape=(1, 16, 128, 128), dtype="float32", guidance=4.5)  # 1 MiB latents


def test_a_writer_killed_mid_write_leaves_only_intact_entries(tmp_path, no_corruption_warnings):
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD.format(tests=str(Path(__file__).parent), directory=str(tmp_path))],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        committed = [child.stdout.readline().strip() for _ in range(2)]
        assert all(committed), child.stderr.read()
        # Kill (SIGKILL) as soon as a write is under way: a temporary file has appeared.
        while child.poll() is None and not any(p.name.startswith(".tmp-") for p in tmp_path.iterdir()):
            pass
    finally:
        child.kill()
        out, _ = child.communicate()
    committed += out.split()
    disk = DiskStore(tmp_path)
    assert not any(p.name.startswith(".tmp-") for p in tmp_path.iterdir())
    assert set(committed) <= {r.entry_id for r in disk.index()}
    for record in disk.index():  # committed or not, whatever is there reads back intact
        assert_same(disk.read(record.entry_id), make_entry(int(record.entry_id[1:]), key=BIG_KEY, steps=(0, 4, 8)))
    assert not disk.skipped


def test_interrupted_writes_are_cleaned_up_or_adopted(stored, no_corruption_warnings):
    path, entries = stored
    (path / ".tmp-abc").write_bytes(b"half an entry")  # killed mid-write
    index = json.loads((path / "index.json").read_text())
    del index["entries"]["e0001"]  # killed after the entry's rename, before the index's
    (path / "index.json").write_text(json.dumps(index))
    disk = DiskStore(path)
    assert not (path / ".tmp-abc").exists()
    assert_same(disk.read("e0001"), entries[1])
    assert "e0001" in json.loads((path / "index.json").read_text())["entries"]


def _corrupt_truncated(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _corrupt_header(path):
    data = path.read_bytes()
    path.write_bytes(b"\xff" * 64 + data[64:])


@pytest.mark.parametrize("corrupt", [_corrupt_truncated, _corrupt_header, Path.unlink])
def test_a_damaged_file_is_reported_and_skipped_on_open(stored, corrupt):
    path, entries = stored
    corrupt(path / "e0001.safetensors")
    with pytest.warns(CacheCorruptionWarning, match="e0001"):
        disk = DiskStore(path)
    assert "e0001" in disk.skipped and "e0001" not in disk and len(disk) == 2
    with pytest.raises(CacheMissError):
        disk.read("e0001")
    assert_same(disk.read("e0000"), entries[0])


def test_a_foreign_file_is_skipped_and_left_alone(stored):
    path, _ = stored
    save_file({"weight": torch.ones(3)}, path / "model.safetensors")
    with pytest.warns(CacheCorruptionWarning, match="model"):
        disk = DiskStore(path)
    assert "model" in disk.skipped and len(disk) == 3
    assert (path / "model.safetensors").exists()


def _rewrite(path, edit):
    """Rewrite an entry file with edited tensors and a matching digest."""
    with safe_open(path, framework="pt") as f:
        metadata = f.metadata()
        tensors = {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118 (safe_open is not iterable)
    edit(tensors)
    save_file(tensors, path, metadata={**metadata, "sha256": _digest(tensors)})


@pytest.mark.parametrize(
    "damage",
    [
        lambda p: _rewrite(p, lambda t: t["state.3"].view(-1).__setitem__(0, float("nan"))),
        lambda p: _rewrite(p, lambda t: t.update({"state.3": t["state.3"][..., :4].contiguous()})),
        lambda p: _rewrite(p, lambda t: t.update({"state.3": t["state.3"].double()})),
        lambda p: p.write_bytes(p.read_bytes()[:-8] + b"garbage!"),  # fails the checksum
    ],
    ids=["nan", "shape", "dtype", "bytes"],
)
def test_an_entry_failing_validation_is_skipped_on_read(stored, damage):
    path, _ = stored
    damage(path / "e0001.safetensors")
    disk = DiskStore(path)  # only headers are checked on open
    with pytest.warns(CacheCorruptionWarning, match="e0001"), pytest.raises(CacheMissError):
        disk.read("e0001")
    assert "e0001" in disk.skipped and "e0001" not in disk
    assert not (path / "e0001.safetensors").exists() and len(DiskStore(path)) == 2


@pytest.mark.parametrize("garbage", [b"{not json", b'{"entries": []}', b""])
def test_a_corrupt_index_is_rebuilt_from_the_files(stored, garbage):
    path, entries = stored
    (path / "index.json").write_bytes(garbage)
    with pytest.warns(CacheCorruptionWarning, match="index"):
        disk = DiskStore(path)
    assert len(disk) == 3 and not disk.skipped
    assert {r.entry_id: r.namespace for r in disk.index()} == {"e0000": "default", "e0001": "default", "e0002": "ns"}
    assert_same(disk.read("e0002"), entries[2])
    with warnings.catch_warnings():
        warnings.simplefilter("error", CacheCorruptionWarning)
        assert len(DiskStore(path)) == 3  # the rebuilt index is on disk


def test_an_entry_evicted_from_memory_is_read_back_from_disk(tmp_path, no_corruption_warnings):
    size = make_entry(0).nbytes
    store = CacheStore(device_bytes=size, host_bytes=0, disk=DiskStore(tmp_path))
    a, b = make_entry(1), make_entry(2)
    store.put(a)
    store.put(b)
    stats = store.stats()
    assert (stats.device_entries, stats.disk_entries, stats.evictions) == (1, 1, 1)
    assert_same(store.get(a.entry_id), a)
    # A new process: the index answers nearest() without loading tensors, get() loads them.
    restarted = CacheStore(device_bytes=size, host_bytes=0, disk=DiskStore(tmp_path))
    assert restarted.stats().disk_entries == 2
    assert restarted.nearest(b.embedding, KEY).entry_id == b.entry_id
    assert_same(restarted.get(b.entry_id), b)
    restarted.remove(b.entry_id)
    assert len(DiskStore(tmp_path)) == 1


def test_a_failed_disk_write_leaves_the_store_unchanged(tmp_path, monkeypatch):
    store = CacheStore(disk=DiskStore(tmp_path))
    store.put(make_entry(1))

    def fail(fd):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", fail)
    with pytest.raises(OSError, match="disk full"):
        store.put(make_entry(2))
    assert len(store) == 1 and "e0002" not in store and store.stats().device_entries == 1
    assert sorted(os.listdir(tmp_path)) == ["e0001.safetensors", "index.json"]  # no temporary file left
