"""The persistent tier: one safetensors file per cache entry, plus an index for look-ups.

A cache directory holds

- ``<entry_id>.safetensors``: tensors ``state.<step>``, ``velocity.<step>`` (where kept; files
  written before velocities were kept have none and load with none), ``noise``, ``embedding``,
  ``grid`` (the sigmas) and, if kept, ``generator_state``; its metadata holds ``format``, ``entry`` (JSON:
  id, namespace, prompt, created, nbytes, key and grid parameters) and ``sha256`` (digest of the
  tensors), so every file describes itself;
- ``index.json``: entry_id -> {namespace, prompt, key, embedding, steps, nbytes, created, file,
  sha256}, what :meth:`CacheStore.nearest` needs without opening a tensor. It is derivable from
  the files and rebuilt from them when unreadable.

Every file is written to a temporary file in the directory, flushed, fsynced and renamed over
its target, so a crash leaves the old file or the new one, never a torn one. Entries that are
missing, unreadable or fail validation are skipped with a :class:`CacheCorruptionWarning` and
listed in :attr:`DiskStore.skipped`; their files are deleted, except unindexed files that do not
read as cache entries (they may belong to someone else). Give the cache a directory of its own,
with one writing process.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import threading
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save

from ..errors import FlowctlError, InvalidArgumentError
from ..sampling import SigmaGrid
from .entry import ENTRY_ID, CacheEntry, CacheKey, CacheMissError, IndexRecord

FORMAT = "flowctl.cache/1"
INDEX = "index.json"
SUFFIX = ".safetensors"
TMP_PREFIX = ".tmp-"

_CORRUPT = (OSError, ValueError, KeyError, TypeError, AttributeError, SafetensorError, FlowctlError)
"""What reading a damaged file or index raises (JSON errors are ValueErrors)."""


class CacheCorruptionWarning(UserWarning):
    """A cache file or the index was missing, unreadable or invalid and was skipped or rebuilt."""


class DiskStore:
    """Cache entries persisted in ``directory`` (created if missing); thread-safe.

    Opening cleans up temporary files of interrupted writes, adopts entry files the index
    lacks (a crash between an entry's write and the index's) and checks every entry file's
    header; full validation (checksum, finiteness, shapes) happens in :meth:`read`.
    """

    def __init__(self, directory: str | os.PathLike[str]):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._records: dict[str, IndexRecord] = {}
        self._digests: dict[str, str] = {}
        self._skipped: dict[str, str] = {}
        self._open()

    @property
    def skipped(self) -> dict[str, str]:
        """Entry id -> why it was skipped, for every entry dropped since this store was opened."""
        with self._lock:
            return dict(self._skipped)

    def __len__(self) -> int:
        with self._lock:
            return len(self._records)

    def __contains__(self, entry_id: object) -> bool:
        with self._lock:
            return entry_id in self._records

    def index(self) -> list[IndexRecord]:
        """The records of all stored entries (no tensor is read)."""
        with self._lock:
            return list(self._records.values())

    def write(self, entry: CacheEntry) -> None:
        """Persist ``entry`` (replacing a stored entry of the same id); durable on return."""
        if not isinstance(entry, CacheEntry):
            raise InvalidArgumentError("entry", f"expected a CacheEntry, got {type(entry).__name__}")
        tensors = _cpu_tensors(entry)
        digest = _digest(tensors)
        grid = entry.grid
        meta = {
            "entry_id": entry.entry_id,
            "namespace": entry.namespace,
            "prompt": entry.prompt,
            "created": entry.created,
            "nbytes": entry.nbytes,
            "key": entry.key.to_json(),
            "grid": {
                "shift": grid.shift,
                "mu": grid.mu,
                "time_shift": grid.time_shift,
                "num_train_timesteps": grid.num_train_timesteps,
            },
        }
        data = save(tensors, metadata={"format": FORMAT, "entry": json.dumps(meta), "sha256": digest})
        with self._lock:
            self._atomic_write(self._path(entry.entry_id), data)
            self._records[entry.entry_id] = IndexRecord.from_entry(entry)
            self._digests[entry.entry_id] = digest
            self._write_index()

    def read(self, entry_id: str) -> CacheEntry:
        """The stored entry, fully validated, its tensors on the CPU.

        Raises:
            CacheMissError: no such entry, or its file was corrupt (then it is skipped with a
                :class:`CacheCorruptionWarning` and deleted).
        """
        with self._lock:
            if entry_id not in self._records:
                raise CacheMissError(entry_id)
            try:
                return self._load(entry_id)
            except _CORRUPT as error:
                self._skip(entry_id, f"{type(error).__name__}: {error}", delete=True)
                self._write_index()
                raise CacheMissError(f"{entry_id}: the stored copy is corrupt") from error

    def delete(self, entry_id: str) -> None:
        """Remove the entry's file and index record (CacheMissError if absent)."""
        with self._lock:
            if entry_id not in self._records:
                raise CacheMissError(entry_id)
            # File first: a crash in between leaves a record of a missing file (skipped on open),
            # not an unindexed file that the next open would adopt again.
            self._path(entry_id).unlink(missing_ok=True)
            del self._records[entry_id]
            self._digests.pop(entry_id, None)
            self._write_index()

    def _path(self, entry_id: str) -> Path:
        return self.directory / f"{entry_id}{SUFFIX}"

    def _open(self) -> None:
        for tmp in self.directory.glob(f"{TMP_PREFIX}*"):
            tmp.unlink(missing_ok=True)
        indexed = self._read_index()
        index_ok = indexed is not None
        indexed = indexed or {}
        files = {p.name.removesuffix(SUFFIX) for p in self.directory.glob(f"*{SUFFIX}")}
        for entry_id in sorted(set(indexed) - files):
            self._skip(entry_id, "its file is missing", delete=False)
        for entry_id in sorted(files):
            try:
                if not ENTRY_ID.fullmatch(entry_id):
                    raise ValueError("the file name is not an entry id")
                record, digest = self._header(entry_id, indexed.get(entry_id))
            except _CORRUPT as error:
                # Delete only what is known to be ours: an indexed file, not a stranger's.
                self._skip(entry_id, f"{type(error).__name__}: {error}", delete=entry_id in indexed)
                continue
            self._records[entry_id], self._digests[entry_id] = record, digest
        if not index_ok or self._digests != {entry_id: digest for entry_id, (_, digest) in indexed.items()}:
            self._write_index()

    def _read_index(self) -> dict[str, tuple[IndexRecord, str]] | None:
        """entry_id -> (record, file digest) from index.json ({} if absent; None if unreadable)."""
        path = self.directory / INDEX
        if not path.exists():
            return {}
        try:
            data = json.loads(path.read_text())
            return {entry_id: _record_from_json(entry_id, item) for entry_id, item in data["entries"].items()}
        except _CORRUPT as error:
            warnings.warn(
                f"{path}: unreadable index ({type(error).__name__}: {error}); rebuilt from the entry files",
                CacheCorruptionWarning,
                stacklevel=4,
            )
            return None

    def _header(self, entry_id: str, indexed: tuple[IndexRecord, str] | None) -> tuple[IndexRecord, str]:
        """The entry's record and digest, from the index if the file's header agrees with it."""
        with safe_open(self._path(entry_id), framework="pt") as f:
            metadata = f.metadata() or {}
            if metadata.get("format") != FORMAT:
                raise ValueError(f"format {metadata.get('format')!r} is not {FORMAT!r}")
            digest = metadata["sha256"]
            if indexed is not None and indexed[1] == digest:
                return indexed
            meta = json.loads(metadata["entry"])
            names = f.keys()
            steps = [int(name.removeprefix("state.")) for name in names if name.startswith("state.")]
            embedding = f.get_tensor("embedding")
        if meta["entry_id"] != entry_id:
            raise ValueError(f"the file holds entry {meta['entry_id']!r}")
        key = CacheKey.from_json(meta["key"])
        record = IndexRecord(
            entry_id, meta["namespace"], meta["prompt"], key, embedding, steps, meta["nbytes"], meta["created"]
        )
        return record, digest

    def _load(self, entry_id: str) -> CacheEntry:
        with safe_open(self._path(entry_id), framework="pt") as f:
            metadata = f.metadata() or {}
            names = f.keys()
            tensors = {name: f.get_tensor(name) for name in names}
        if metadata.get("format") != FORMAT:
            raise ValueError(f"format {metadata.get('format')!r} is not {FORMAT!r}")
        if _digest(tensors) != metadata["sha256"]:
            raise ValueError("the tensors do not match their sha256 digest")
        meta = json.loads(metadata["entry"])
        if meta["entry_id"] != entry_id:
            raise ValueError(f"the file holds entry {meta['entry_id']!r}")
        states = {int(name.removeprefix("state.")): x for name, x in tensors.items() if name.startswith("state.")}
        velocities = {int(name.removeprefix("velocity.")): v for name, v in tensors.items() if name.startswith("velocity.")}
        return CacheEntry(
            CacheKey.from_json(meta["key"]),
            meta["prompt"],
            tensors["embedding"],
            states,
            SigmaGrid(tensors["grid"], **meta["grid"]),
            tensors["noise"],
            tensors.get("generator_state"),
            velocities,
            meta["namespace"],
            entry_id,
            meta["created"],
        )

    def _skip(self, entry_id: str, reason: str, *, delete: bool) -> None:
        """Report and forget a damaged entry; ``delete``: delete its file too."""
        warnings.warn(f"cache entry {entry_id} skipped: {reason}", CacheCorruptionWarning, stacklevel=4)
        self._skipped[entry_id] = reason
        self._records.pop(entry_id, None)
        self._digests.pop(entry_id, None)
        if delete:
            with contextlib.suppress(OSError):
                self._path(entry_id).unlink(missing_ok=True)

    def _write_index(self) -> None:
        entries = {
            entry_id: _record_to_json(record, self._digests[entry_id]) for entry_id, record in self._records.items()
        }
        self._atomic_write(self.directory / INDEX, json.dumps({"format": FORMAT, "entries": entries}).encode())

    def _atomic_write(self, path: Path, data: bytes) -> None:
        """Write ``data`` to ``path`` so that a crash leaves the old file or the new one."""
        fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX, dir=self.directory)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        # Make the rename itself durable.
        dir_fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def _cpu_tensors(entry: CacheEntry) -> dict[str, torch.Tensor]:
    """The entry's tensors by file name, on the CPU, contiguous and sharing no memory."""
    named = {f"state.{k}": x for k, x in entry.states.items()}
    named.update({f"velocity.{k}": v for k, v in entry.velocities.items()})
    named.update(noise=entry.noise, embedding=entry.embedding, grid=entry.grid.values)
    if entry.generator_state is not None:
        named["generator_state"] = entry.generator_state
    tensors, seen = {}, set()
    for name, x in named.items():
        x = x.detach().cpu().contiguous()
        # safetensors refuses tensors that share memory (state.0 may be the noise itself).
        ptr = x.untyped_storage().data_ptr()
        tensors[name] = x.clone() if ptr in seen else x
        seen.add(ptr)
    return tensors


def _digest(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over the tensors' names, dtypes, shapes and bytes, in name order."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        x = tensors[name].contiguous()
        h.update(f"{name}:{x.dtype}:{tuple(x.shape)};".encode())
        h.update(x.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def _record_to_json(record: IndexRecord, digest: str) -> dict[str, Any]:
    return {
        "namespace": record.namespace,
        "prompt": record.prompt,
        "key": record.key.to_json(),
        "embedding": record.embedding.tolist(),
        "steps": list(record.steps),
        "nbytes": record.nbytes,
        "created": record.created,
        "file": f"{record.entry_id}{SUFFIX}",
        "sha256": digest,
    }


def _record_from_json(entry_id: str, item: dict[str, Any]) -> tuple[IndexRecord, str]:
    if item["file"] != f"{entry_id}{SUFFIX}":
        raise ValueError(f"entry {entry_id} names the file {item['file']!r}")
    embedding = torch.tensor(item["embedding"], dtype=torch.float32)
    key = CacheKey.from_json(item["key"])
    record = IndexRecord(
        entry_id, item["namespace"], item["prompt"], key, embedding, item["steps"], item["nbytes"], item["created"]
    )
    return record, str(item["sha256"])
