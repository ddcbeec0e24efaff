import errno
import hashlib
import json
import os
import sqlite3
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save, save_file

from flowctl import SigmaGrid
from flowctl.cache import codec
from flowctl.cache.disk import DATABASE, CacheCorruptionWarning, DiskStore
from flowctl.cache.entry import CacheEntry, CacheKey, CacheMissError
from flowctl.cache.store import CacheStore
from flowctl.errors import CacheFullError, CacheStorageError, InvalidArgumentError

GRID = SigmaGrid.create(12, 3.0, mu=0.5, time_shift="linear")
KEY = CacheKey.for_grid("model-a", GRID, shape=(1, 4, 8, 8), dtype="float32", guidance=4.5)
TESTS = str(Path(__file__).parent)


def make_entry(seed, *, key=KEY, steps=(0, 3, 6), namespace="default", entry_id=None):
    """A deterministic entry of ``seed`` (the child processes rebuild them)."""
    gen = torch.Generator().manual_seed(seed)
    generator_state = gen.get_state()
    noise = torch.randn(key.shape, generator=gen)
    # Step 0 is the noise itself: the file must store it twice (safetensors refuses shared memory).
    states = {k: noise if k == 0 else torch.randn(key.shape, generator=gen) for k in steps}
    velocities = {steps[-1]: torch.randn(key.shape, generator=gen)}
    return CacheEntry(
        key, f"prompt {seed}", torch.randn(16, generator=gen), states, noise, generator_state, velocities,
        namespace=namespace, entry_id=entry_id or f"e{seed:04d}", created=1000.0 + seed,
    )


def assert_same(a, b):
    assert (a.entry_id, a.namespace, a.prompt, a.created, a.key) == (b.entry_id, b.namespace, b.prompt, b.created, b.key)
    assert a.grid.key == b.grid.key and torch.equal(a.grid.values, b.grid.values)
    assert a.cached_steps == b.cached_steps and list(a.velocities) == list(b.velocities)
    assert all(torch.equal(a.states[k], b.states[k]) for k in a.states)
    assert all(torch.equal(a.velocities[k], b.velocities[k]) for k in a.velocities)
    for name in ("noise", "embedding", "generator_state"):
        assert torch.equal(getattr(a, name), getattr(b, name))


def entry_files(path):
    return sorted(p.name for p in path.glob("*.safetensors"))


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
        disk.put(entry)
    disk.close()
    return tmp_path, entries


def test_a_restart_sees_every_entry_unchanged(stored, no_corruption_warnings):
    path, entries = stored
    disk = DiskStore(path)
    assert len(disk) == 3 and not disk.quarantined
    for entry in entries:
        assert_same(disk.get(entry.entry_id, entry.namespace), entry)
    records = {r.entry_id: r for r in disk.records()}
    assert records["e0002"].namespace == "ns" and records["e0001"].steps == (0, 3, 6)
    assert torch.equal(records["e0001"].embedding, entries[1].embedding)
    assert [r.entry_id for r in disk.records("ns")] == ["e0002"]
    with pytest.raises(CacheMissError):
        disk.get("e0002", "default")  # never across namespaces


def test_delete_removes_the_file_and_the_row(stored, no_corruption_warnings):
    path, _ = stored
    disk = DiskStore(path)
    disk.delete("e0001", "default")
    assert len(entry_files(path)) == 2 and not any(n.startswith("e0001.") for n in entry_files(path))
    with pytest.raises(CacheMissError):
        disk.get("e0001", "default")
    with pytest.raises(CacheMissError):
        disk.delete("e0002", "default")  # it is ns's
    assert "e0001" not in DiskStore(path) and len(DiskStore(path)) == 2


def test_another_handle_sees_commits_without_reopening(tmp_path, no_corruption_warnings):
    a, b = DiskStore(tmp_path), DiskStore(tmp_path)  # two connections, as two processes have
    entry = make_entry(1)
    assert b.nearest(entry.embedding, KEY, ["default"]) is None
    a.put(entry)
    match = b.nearest(entry.embedding, KEY, ["default"])
    assert match.entry_id == "e0001" and match.similarity == pytest.approx(1.0) and match.steps == (0, 3, 6)
    assert_same(b.get("e0001", "default"), entry)
    a.delete("e0001", "default")
    assert b.nearest(entry.embedding, KEY, ["default"]) is None and len(b) == 0


def test_ids_are_unique_across_namespaces(stored, no_corruption_warnings):
    path, entries = stored
    disk = DiskStore(path)
    with pytest.raises(InvalidArgumentError, match="another namespace"):
        disk.put(make_entry(7, namespace="bob", entry_id="e0000"))
    assert_same(disk.get("e0000", "default"), entries[0])  # alice's entry and file untouched
    assert len(entry_files(path)) == 3 and not list(path.glob(".tmp-*"))


def test_replacing_an_entry_leaves_one_file(stored, no_corruption_warnings):
    path, _ = stored
    disk = DiskStore(path)
    replacement = make_entry(9, entry_id="e0000")
    disk.put(replacement)
    assert_same(disk.get("e0000", "default"), replacement)
    assert len(entry_files(path)) == 3


def test_clear_by_namespace_and_all(stored, no_corruption_warnings):
    path, _ = stored
    disk = DiskStore(path)
    assert disk.clear("default") == 2 and [r.entry_id for r in disk.records()] == ["e0002"]
    assert disk.clear() == 1 and len(disk) == 0 and entry_files(path) == []


@pytest.mark.parametrize("policy, survivor", [("lru", "e0001"), ("benefit", "e0000")])
def test_evict_by_policy(tmp_path, policy, survivor, no_corruption_warnings):
    disk = DiskStore(tmp_path)
    for seed, steps in ((0, (0, 3, 6)), (1, (0, 3))):
        disk.put(make_entry(seed, steps=steps))
    disk.get("e0000", "default")
    disk.get("e0000", "default")
    disk.get("e0001", "default")  # the most recent use; e0000 has more hits and a later step
    assert disk.evict(make_entry(0).nbytes, policy) == 1
    assert [r.entry_id for r in disk.records()] == [survivor] and len(entry_files(tmp_path)) == 1


CHILD = """
import sys
sys.path.insert(0, {tests!r})
from test_cache_disk import make_entry, BIG_KEY
from flowctl.cache.disk import DiskStore
disk = DiskStore({directory!r})
for seed in range(50):
    disk.put(make_entry(seed, key=BIG_KEY, steps=(0, 4, 8)))
    print(f"e{{seed:04d}}", flush=True)
"""
BIG_KEY = CacheKey.for_grid("model-a", GRID, shape=(1, 16, 128, 128), dtype="float32", guidance=4.5)  # 1 MiB latents


def test_a_writer_killed_mid_write_leaves_only_intact_entries(tmp_path, no_corruption_warnings):
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD.format(tests=TESTS, directory=str(tmp_path))],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
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
    assert not any(p.name.startswith(".tmp-") for p in tmp_path.iterdir())  # its owner is dead
    ids = {r.entry_id for r in disk.records()}
    assert set(committed) <= ids and len(entry_files(tmp_path)) == len(ids)
    for entry_id in ids:  # committed or not, whatever is there reads back intact
        assert_same(disk.get(entry_id, "default"), make_entry(int(entry_id[1:]), key=BIG_KEY, steps=(0, 4, 8)))
    assert not disk.quarantined


def test_opening_removes_dead_writers_leftovers_only(stored, no_corruption_warnings):
    path, _ = stored
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout.strip()
        (path / f".tmp-{dead}-abc").write_bytes(b"half an entry")  # its writer was killed
        (path / f".tmp-{sleeper.pid}-abc").write_bytes(b"being written")  # its writer is alive
        (path / "e0009.0123456789ab.safetensors").write_bytes(codec.encode(make_entry(9), None).data)  # renamed, never committed
        DiskStore(path)
        assert not (path / f".tmp-{dead}-abc").exists() and (path / f".tmp-{sleeper.pid}-abc").exists()
        assert not (path / "e0009.0123456789ab.safetensors").exists() and len(entry_files(path)) == 3
    finally:
        sleeper.kill()
        sleeper.wait()


WORKER = """
import sys
sys.path.insert(0, {tests!r})
from test_cache_disk import make_entry, KEY
from flowctl.cache.disk import DiskStore
disk = DiskStore({directory!r})
worker = {worker}
for i in range(25):
    entry = make_entry(1000 * worker + i)
    disk.put(entry)
    assert disk.nearest(entry.embedding, KEY, ["default"]).entry_id == entry.entry_id
print(len(disk.records()), flush=True)
"""


def test_four_processes_share_one_directory(tmp_path, no_corruption_warnings):
    workers = [
        subprocess.Popen([sys.executable, "-c", WORKER.format(tests=TESTS, directory=str(tmp_path), worker=w)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for w in range(4)
    ]
    for w in workers:
        out, err = w.communicate(timeout=300)
        assert w.returncode == 0, err
    disk = DiskStore(tmp_path)
    expected = {f"e{1000 * w + i:04d}" for w in range(4) for i in range(25)}
    assert {r.entry_id for r in disk.records()} == expected and len(entry_files(tmp_path)) == 100
    for w in range(4):  # every process's entries are found by look-up, and read back intact
        entry = make_entry(1000 * w + 24)
        assert disk.nearest(entry.embedding, KEY, ["default"]).entry_id == entry.entry_id
        assert_same(disk.get(entry.entry_id, "default"), entry)


CLEAR_WRITER = """
import sys
sys.path.insert(0, {tests!r})
from test_cache_disk import make_entry
from flowctl.cache.disk import DiskStore
disk = DiskStore({directory!r})
for i in range(60):
    disk.put(make_entry(i))
"""


def test_clearing_during_writes_stays_consistent(tmp_path, no_corruption_warnings):
    writer = subprocess.Popen([sys.executable, "-c", CLEAR_WRITER.format(tests=TESTS, directory=str(tmp_path))], stderr=subprocess.PIPE, text=True)
    disk = DiskStore(tmp_path)
    while writer.poll() is None:
        disk.clear()
    assert writer.returncode == 0, writer.stderr.read()
    # Every row has its file and every file its row; every entry left reads back intact.
    reopened = DiskStore(tmp_path)
    rows = sqlite3.connect(tmp_path / DATABASE).execute("SELECT file FROM entries").fetchall()
    assert sorted(r[0] for r in rows) == entry_files(tmp_path)
    for record in reopened.records():
        assert_same(reopened.get(record.entry_id, "default"), make_entry(int(record.entry_id[1:])))


def _edit_row(path, sql, *args):
    with sqlite3.connect(path / DATABASE) as db:
        db.execute(sql, args)


def _rewrite(path, edit_meta=None, edit_tensors=None, mac=None):
    """Rewrite the entry file in ``path`` with edited metadata or tensors, keeping (or setting) its mac."""
    (file,) = [p for p in path.glob("e0001.*.safetensors")]
    with safe_open(file, framework="pt") as f:
        metadata = f.metadata()
        tensors = {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118 (safe_open is not iterable)
    if edit_meta:
        meta = json.loads(metadata["entry"])
        edit_meta(meta)
        metadata["entry"] = json.dumps(meta, sort_keys=True, separators=(",", ":"))
    if edit_tensors:
        edit_tensors(tensors)
    if mac:
        metadata["mac"] = mac(metadata["entry"], tensors)
    save_file(tensors, file, metadata=metadata)
    return file


def _sha256_mac(meta_json, tensors):
    return codec._mac(meta_json, tensors, None)


TAMPERING = {
    "file namespace": lambda p: _rewrite(p, edit_meta=lambda m: m.update(namespace="bob")),
    "file prompt": lambda p: _rewrite(p, edit_meta=lambda m: m.update(prompt="something else")),
    "file latent": lambda p: _rewrite(p, edit_tensors=lambda t: t["state.3"].view(-1).__setitem__(0, 9.0)),
    "truncated": lambda p: (f := next(p.glob("e0001.*"))).write_bytes(f.read_bytes()[: f.stat().st_size // 2]),
    "header": lambda p: (f := next(p.glob("e0001.*"))).write_bytes(b"\xff" * 64 + f.read_bytes()[64:]),
    "nan, re-checksummed": lambda p: _rewrite(p, edit_tensors=lambda t: t["state.3"].view(-1).__setitem__(0, float("nan")), mac=_sha256_mac),
    "shape, re-checksummed": lambda p: _rewrite(p, edit_tensors=lambda t: t.update({"state.3": t["state.3"][..., :4].contiguous()}), mac=_sha256_mac),
    "index prompt": lambda p: _edit_row(p, "UPDATE entries SET prompt = 'x' WHERE entry_id = 'e0001'"),
    "index embedding": lambda p: _edit_row(p, "UPDATE entries SET embedding = ? WHERE entry_id = 'e0001'", torch.ones(16).div(4).numpy().tobytes()),
    "file missing": lambda p: next(p.glob("e0001.*")).unlink(),
}


@pytest.mark.parametrize("tamper", list(TAMPERING.values()), ids=list(TAMPERING))
def test_a_tampered_entry_is_quarantined_not_served(stored, tamper):
    path, entries = stored
    tamper(path)
    disk = DiskStore(path)
    with pytest.warns(CacheCorruptionWarning, match="e0001"), pytest.raises(CacheMissError):
        disk.get("e0001", "default")
    assert "e0001" in disk.quarantined and "e0001" not in disk and len(DiskStore(path)) == 2
    assert disk.nearest(entries[1].embedding, KEY, ["default"]).entry_id != "e0001"
    moved = list((path / "quarantine").glob("e0001.*.safetensors"))
    assert len(moved) == (0 if "missing" in str(disk.quarantined["e0001"]) else 1)  # kept aside, not deleted
    assert_same(disk.get("e0000", "default"), entries[0])


def test_an_edited_namespace_in_the_index_does_not_move_an_entry(stored):
    path, entries = stored
    _edit_row(path, "UPDATE entries SET namespace = 'bob' WHERE entry_id = 'e0001'")
    disk = DiskStore(path)
    assert disk.nearest(entries[1].embedding, KEY, ["bob"]).entry_id == "e0001"  # the index says so...
    with pytest.warns(CacheCorruptionWarning, match="namespace"), pytest.raises(CacheMissError):
        disk.get("e0001", "bob")  # ...but bob is never served alice's entry


def test_a_secret_signs_entries_and_must_match(tmp_path, no_corruption_warnings):
    disk = DiskStore(tmp_path, secret="s3cret")
    entry = make_entry(1)
    disk.put(entry)
    assert next(tmp_path.glob("e0001.*")).read_bytes().count(b"hmac-sha256:") == 1
    assert_same(DiskStore(tmp_path, secret=b"s3cret").get("e0001", "default"), entry)
    with pytest.raises(InvalidArgumentError, match="secret"):
        DiskStore(tmp_path, secret="wrong")
    with pytest.raises(InvalidArgumentError, match="secret"):
        DiskStore(tmp_path)
    unkeyed = tmp_path / "unkeyed"
    DiskStore(unkeyed).put(entry)
    with pytest.raises(InvalidArgumentError, match="without a secret"):
        DiskStore(unkeyed, secret="s3cret")


def test_with_a_secret_a_forged_checksum_is_quarantined(tmp_path):
    disk = DiskStore(tmp_path, secret="s3cret")
    disk.put(make_entry(1))
    _rewrite(tmp_path, edit_meta=lambda m: m.update(prompt="forged"), mac=_sha256_mac)  # no key: only a plain checksum
    with pytest.warns(CacheCorruptionWarning, match="HMAC"), pytest.raises(CacheMissError):
        disk.get("e0001", "default")


def test_a_transient_read_error_never_deletes(stored, monkeypatch, no_corruption_warnings):
    path, entries = stored
    disk = DiskStore(path)

    def fail(self):
        raise OSError(errno.EMFILE, "Too many open files")

    with monkeypatch.context() as m:
        m.setattr(Path, "read_bytes", fail)
        with pytest.raises(CacheStorageError, match="Too many open files"):
            disk.get("e0001", "default")
    assert "e0001" in disk and len(entry_files(path)) == 3 and not disk.quarantined
    assert_same(disk.get("e0001", "default"), entries[1])


def test_a_full_disk_fails_the_put_typed_and_the_store_still_works(stored, monkeypatch, no_corruption_warnings):
    path, entries = stored
    store = CacheStore(persistent=DiskStore(path))

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as m:
        m.setattr(os, "fsync", full)
        with pytest.raises(CacheFullError):
            store.put(make_entry(5))
        # Opening, listing, reading and clearing write no new file.
        disk = DiskStore(path)
        assert len(disk.records()) == 3
        assert_same(disk.get("e0001", "default"), entries[1])
        assert disk.clear("ns") == 1
    assert "e0005" not in store and len(entry_files(path)) == 2 and not list(path.glob(".tmp-*"))


def _write_legacy(path, entry):
    """``entry`` as the previous release wrote it: <id>.safetensors (sha256 over the tensors)
    and its record in index.json."""
    tensors = {**codec._cpu_tensors(entry), "grid": entry.grid.values}
    h = hashlib.sha256()
    codec._update(h, tensors)
    grid = entry.grid
    meta = {"entry_id": entry.entry_id, "namespace": entry.namespace, "prompt": entry.prompt, "created": entry.created,
            "nbytes": entry.nbytes, "key": entry.key.to_json(),
            "grid": {"shift": grid.shift, "mu": grid.mu, "time_shift": grid.time_shift, "num_train_timesteps": grid.num_train_timesteps}}
    (path / f"{entry.entry_id}.safetensors").write_bytes(save(tensors, metadata={"format": "flowctl.cache/1", "entry": json.dumps(meta), "sha256": h.hexdigest()}))
    index_path = path / "index.json"
    index = json.loads(index_path.read_text()) if index_path.exists() else {"format": "flowctl.cache/1", "entries": {}}
    index["entries"][entry.entry_id] = {"namespace": entry.namespace, "prompt": entry.prompt, "file": f"{entry.entry_id}.safetensors", "sha256": h.hexdigest()}
    index_path.write_text(json.dumps(index))


def test_a_previous_release_directory_converts_without_loss(tmp_path, no_corruption_warnings):
    entries = [make_entry(i, namespace="ns" if i == 2 else "default") for i in range(3)]
    for entry in entries:
        _write_legacy(tmp_path, entry)
    disk = DiskStore(tmp_path)
    assert not (tmp_path / "index.json").exists() and not list(tmp_path.glob("e000?.safetensors"))
    for entry in entries:
        assert_same(disk.get(entry.entry_id, entry.namespace), entry)
    assert disk.nearest(entries[2].embedding, KEY, ["ns"]).entry_id == "e0002"


def test_a_foreign_file_is_left_alone(stored):
    path, _ = stored
    save_file({"weight": torch.ones(3)}, path / "model.safetensors")
    with pytest.warns(CacheCorruptionWarning, match="model"):
        disk = DiskStore(path)
    assert len(disk) == 3 and (path / "model.safetensors").exists()


def test_an_entry_evicted_from_memory_is_read_back_from_disk(tmp_path, no_corruption_warnings):
    size = make_entry(0).nbytes
    store = CacheStore(device_bytes=size, host_bytes=0, persistent=DiskStore(tmp_path))
    a, b = make_entry(1), make_entry(2)
    store.put(a)
    store.put(b)
    stats = store.stats()
    assert (stats.device_entries, stats.disk_entries, stats.evictions) == (1, 1, 1)
    assert_same(store.get(a.entry_id), a)
    restarted = CacheStore(device_bytes=size, host_bytes=0, persistent=DiskStore(tmp_path))
    assert restarted.stats().disk_entries == 2
    assert restarted.nearest(b.embedding, KEY).entry_id == b.entry_id
    assert_same(restarted.get(b.entry_id), b)
    restarted.remove(b.entry_id)
    assert len(DiskStore(tmp_path)) == 1


def test_bad_arguments_are_typed(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(CacheStorageError):
        DiskStore(tmp_path / "file")
    with pytest.raises(InvalidArgumentError):
        DiskStore(tmp_path / "d", secret=b"")
    with pytest.raises(InvalidArgumentError):
        DiskStore(tmp_path / "d", ann="sometimes")
    disk = DiskStore(tmp_path / "d")
    with pytest.raises(InvalidArgumentError):
        disk.evict(-1)
    with pytest.raises(InvalidArgumentError):
        disk.put("not an entry")
