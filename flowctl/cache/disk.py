"""The local persistent store: a cache directory that any number of processes on one machine
share.

A cache directory holds

- ``<entry_id>.<token>.safetensors``: one entry each, in the :mod:`~flowctl.cache.codec` format
  (self-describing, its checksum or HMAC covering metadata and tensors). Files are never
  overwritten: replacing an entry writes a new file (a new token) and deletes the old one after
  the index points at the new one;
- ``index.sqlite`` (with ``-wal`` and ``-shm``): SQLite in WAL mode. A row per entry (namespace,
  prompt, key, embedding, steps, size, creation time, checksum, file, hits, last use), a change
  log from which every process's in-memory search index catches up with the others' commits
  (checked per look-up with ``PRAGMA data_version``, which costs no I/O when nothing changed),
  and the store's settings (the format, a check value of the secret);
- ``quarantine/``: entries that failed verification, moved aside with a ``.why`` note;
- ``.tmp-<pid>-*``: files being written by process ``<pid>``.

A put writes and fsyncs its file under a temporary name, then, holding SQLite's write lock,
renames it into place and commits its row: a crash leaves the old entry or the new one, and at
worst an unreferenced file, which the next opening removes (opening never touches a live
process's temporary files). Clearing deletes rows in one transaction, then their files, so it
stays consistent with concurrent writers. Commits use ``synchronous=NORMAL``: durable against a
killed process; a power cut may lose the last commits, never corrupt the index.

A directory written by the previous release (an ``index.json`` beside ``<entry_id>.safetensors``
files) is converted on opening, each entry verified and rewritten in the current format.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import sqlite3
import threading
import time
import uuid
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import torch

from ..errors import CacheFullError, CacheStorageError, InvalidArgumentError, UnknownNameError
from . import codec
from .entry import CacheEntry, CacheKey, CacheMissError, IndexRecord, check_namespace, key_text, unit_embedding
from .persistent import CacheCorruptionWarning, EvictionPolicy, Match
from .search import AnnMode, EmbeddingIndex

DATABASE = "index.sqlite"
LEGACY_INDEX = "index.json"
QUARANTINE = "quarantine"
TMP_PREFIX = ".tmp-"
FILE = re.compile(r"(?P<id>[A-Za-z0-9_-]{1,128})\.(?P<token>[0-9a-f]{12})\.safetensors")
LEGACY_FILE = re.compile(r"(?P<id>[A-Za-z0-9_-]{1,128})\.safetensors")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    entry_id TEXT PRIMARY KEY, namespace TEXT NOT NULL, prompt TEXT NOT NULL, key TEXT NOT NULL,
    embedding BLOB NOT NULL, steps TEXT NOT NULL, nbytes INTEGER NOT NULL, created REAL NOT NULL,
    benefit REAL NOT NULL, mac TEXT NOT NULL, file TEXT NOT NULL,
    hits INTEGER NOT NULL DEFAULT 0, last_used REAL NOT NULL);
CREATE TABLE IF NOT EXISTS log (seq INTEGER PRIMARY KEY AUTOINCREMENT, entry_id TEXT NOT NULL, op TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS settings (name TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
_ROW = "entry_id, namespace, prompt, key, embedding, steps, nbytes, created"


class DiskStore:
    """Cache entries persisted in ``directory`` (created if missing), shared by processes and
    threads; a :class:`~flowctl.cache.persistent.PersistentStore`.

    Args:
        directory: the cache directory; give the cache one of its own.
        secret: key of the entries' HMAC (bytes or text); default: the environment variable
            ``FLOWCTL_CACHE_SECRET`` if set, else none (a sha256 checksum). A store written with
            a secret opens only with it, and one written without refuses one (InvalidArgumentError)
            until cleared, so a misconfigured process cannot quarantine what it cannot check.
        ann: approximate look-up (see :class:`~flowctl.cache.search.EmbeddingIndex`): "never",
            "auto" (above ``ann_threshold`` entries under one key and namespace) or "always".
        ann_threshold: see ``ann``.
        read_only: open a directory this process cannot write, for reading only (records,
            look-ups, gets; no repair on opening, and a write raises CacheStorageError).

    Raises:
        CacheStorageError: the directory or its index cannot be opened.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        secret: bytes | str | None = None,
        ann: AnnMode = "auto",
        ann_threshold: int = 50_000,
        read_only: bool = False,
    ):
        if not isinstance(directory, (str, os.PathLike)) or not os.fspath(directory):
            raise InvalidArgumentError("directory", f"expected a cache directory path, got {directory!r}")
        self.directory = Path(directory)
        self._read_only = read_only
        self._secret = codec.resolve_secret(secret)
        self._lock = threading.RLock()
        self._quarantined: dict[str, str] = {}
        self._foreign: set[str] = set()
        self._index = EmbeddingIndex(ann=_available(ann), ann_threshold=ann_threshold)
        with _storage("opening the cache directory"):
            if read_only:
                self._db = _open_read_only(self.directory / DATABASE)
            else:
                self.directory.mkdir(parents=True, exist_ok=True)
                self._db = sqlite3.connect(self.directory / DATABASE, timeout=60, isolation_level=None, check_same_thread=False)
                self._db.execute("PRAGMA busy_timeout = 60000")
                if self._db.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                    self._db.execute("PRAGMA journal_mode = WAL")
                self._db.execute("PRAGMA synchronous = NORMAL")
                if self._db.execute("SELECT count(*) FROM sqlite_master WHERE name = 'settings'").fetchone()[0] == 0:
                    self._db.executescript(_SCHEMA)
        self._check_secret()
        with _storage("opening the cache directory"):
            if not read_only:
                self._repair()
            self._load()

    # -- the PersistentStore interface --------------------------------------------------------

    @property
    def quarantined(self) -> dict[str, str]:
        with self._lock:
            return dict(self._quarantined)

    def __len__(self) -> int:
        with self._lock, _storage("counting entries"):
            return self._db.execute("SELECT count(*) FROM entries").fetchone()[0]

    def __contains__(self, entry_id: object) -> bool:
        with self._lock, _storage("looking up an entry"):
            return self._db.execute("SELECT 1 FROM entries WHERE entry_id = ?", (entry_id,)).fetchone() is not None

    def put(self, entry: CacheEntry) -> None:
        """Store ``entry``; durable and visible to every process on return."""
        if not isinstance(entry, CacheEntry):
            raise InvalidArgumentError("entry", f"expected a CacheEntry, got {type(entry).__name__}")
        encoded = codec.encode(entry, self._secret)
        name = f"{entry.entry_id}.{uuid.uuid4().hex[:12]}.safetensors"
        key = key_text(entry.key)
        embedding = entry.embedding.cpu().numpy()
        with self._lock, _storage("writing an entry"):
            tmp = self._write_temp(encoded.data)
            try:
                with self._transaction():
                    old = self._db.execute("SELECT namespace, file FROM entries WHERE entry_id = ?", (entry.entry_id,)).fetchone()
                    if old is not None and old[0] != entry.namespace:
                        raise InvalidArgumentError("entry", f"entry_id {entry.entry_id} is taken in another namespace")
                    os.replace(tmp, self.directory / name)
                    now = time.time()
                    self._db.execute(
                        "INSERT OR REPLACE INTO entries VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0, ?)",
                        (entry.entry_id, entry.namespace, entry.prompt, key, embedding.tobytes(), json.dumps(list(entry.cached_steps)),
                         entry.nbytes, entry.created, entry.cached_steps[-1] / entry.key.steps, encoded.mac, name, now),
                    )
                    self._db.execute("INSERT INTO log (entry_id, op) VALUES (?, 'put')", (entry.entry_id,))
            except BaseException:
                for path in (tmp, self.directory / name):
                    with contextlib.suppress(OSError):
                        path.unlink(missing_ok=True)
                raise
            if old is not None and old[1] != name:
                self._unlink(old[1])
            self._sync_directory()
            self._index.add((key, entry.namespace), entry.entry_id, embedding, entry.created)

    def get(self, entry_id: str, namespace: str) -> CacheEntry:
        """The entry, verified, its tensors on the CPU; counts a hit."""
        check_namespace("namespace", namespace)
        with self._lock:
            for _ in range(3):  # a concurrent replacement may move the file under us
                row = self._row(entry_id, "namespace, file, " + _ROW)
                if row is None or row[0] != namespace:
                    raise CacheMissError(f"no entry {entry_id!r} in namespace {namespace!r}")
                try:
                    data = (self.directory / row[1]).read_bytes()
                except FileNotFoundError:
                    if self._row(entry_id, "file") == (row[1],):
                        self._quarantine(entry_id, row[1], "its file is missing")
                        raise CacheMissError(f"{entry_id}: its file is missing") from None
                    continue
                except OSError as error:
                    raise _storage_error("reading an entry", error) from None
                try:
                    entry = codec.decode(data, self._secret, entry_id=entry_id)
                    _agree(entry, row[2:])
                except codec.IntegrityError as error:
                    self._quarantine(entry_id, row[1], str(error))
                    raise CacheMissError(f"{entry_id}: the stored copy failed verification ({error})") from None
                self._touch(entry_id)
                return entry
            raise CacheMissError(f"{entry_id}: replaced repeatedly while being read")

    def delete(self, entry_id: str, namespace: str) -> None:
        """Remove the entry (CacheMissError if none in ``namespace``)."""
        check_namespace("namespace", namespace)
        with self._lock, _storage("deleting an entry"):
            with self._transaction():
                row = self._db.execute("SELECT namespace, file FROM entries WHERE entry_id = ?", (entry_id,)).fetchone()
                if row is None or row[0] != namespace:
                    raise CacheMissError(f"no entry {entry_id!r} in namespace {namespace!r}")
                self._forget([entry_id])
            self._drop([entry_id])
            self._unlink(row[1])

    def clear(self, namespace: str | None = None) -> int:
        """Remove every entry of ``namespace`` (all with None); returns how many."""
        if namespace is not None:
            check_namespace("namespace", namespace)
        with self._lock, _storage("clearing entries"):
            with self._transaction():
                where, args = ("", ()) if namespace is None else (" WHERE namespace = ?", (namespace,))
                rows = self._db.execute("SELECT entry_id, file FROM entries" + where, args).fetchall()
                self._forget([r[0] for r in rows])
            self._drop([r[0] for r in rows])
            for _, name in rows:
                self._unlink(name)
            return len(rows)

    def evict(self, max_bytes: int, policy: EvictionPolicy = "lru") -> int:
        """Remove entries, victims first by ``policy``, until the rest hold at most ``max_bytes``."""
        if policy not in ("lru", "benefit"):
            raise UnknownNameError("policy", policy, ["lru", "benefit"])
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 0:
            raise InvalidArgumentError("max_bytes", f"expected an integer >= 0, got {max_bytes!r}")
        order = "last_used" if policy == "lru" else "hits * benefit, last_used"
        with self._lock, _storage("evicting entries"):
            with self._transaction():
                rows = self._db.execute(f"SELECT entry_id, file, nbytes FROM entries ORDER BY {order}").fetchall()
                excess = sum(r[2] for r in rows) - max_bytes
                victims = []
                for entry_id, name, nbytes in rows:
                    if excess <= 0:
                        break
                    victims.append((entry_id, name))
                    excess -= nbytes
                self._forget([v[0] for v in victims])
            self._drop([v[0] for v in victims])
            for _, name in victims:
                self._unlink(name)
            return len(victims)

    def nearest(self, embedding: torch.Tensor, key: CacheKey, namespaces: Iterable[str]) -> Match | None:
        """The most similar entry under ``key`` in ``namespaces`` (exact similarity), or None."""
        query = unit_embedding("embedding", embedding).cpu().numpy()
        groups = [(key_text(key), check_namespace("namespaces", n)) for n in namespaces]
        with self._lock:
            for _ in range(3):
                self._sync()
                found = self._index.nearest(query, groups)
                if found is None:
                    return None
                row = self._row(found[0], "namespace, prompt, steps")
                if row is not None:  # else removed since our last sync: sync again
                    return Match(found[0], row[0], row[1], found[1], tuple(json.loads(row[2])))
            return None

    def records(self, namespace: str | None = None) -> list[IndexRecord]:
        """Every entry's record (of ``namespace``, or all), oldest first; no tensor is read."""
        where, args = ("", ()) if namespace is None else (" WHERE namespace = ?", (namespace,))
        with self._lock, _storage("listing entries"):
            rows = self._db.execute(f"SELECT {_ROW} FROM entries{where} ORDER BY created", args).fetchall()
        return [_record(row) for row in rows]

    def wait_for_index(self) -> None:
        """Block until the search index's background builds are done (look-ups are exact, and
        slower on large stores, until then; benchmarks wait, servers need not)."""
        self._index.wait()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- internals -----------------------------------------------------------------------------

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        """BEGIN IMMEDIATE (SQLite's write lock, across processes) ... COMMIT, or ROLLBACK."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def _row(self, entry_id: str, columns: str) -> tuple | None:
        with _storage("reading the index"):
            return self._db.execute(f"SELECT {columns} FROM entries WHERE entry_id = ?", (entry_id,)).fetchone()

    def _forget(self, entry_ids: list[str]) -> None:
        """Delete rows and log it (inside a transaction; :meth:`_drop` them after the commit)."""
        self._db.executemany("DELETE FROM entries WHERE entry_id = ?", [(i,) for i in entry_ids])
        self._db.executemany("INSERT INTO log (entry_id, op) VALUES (?, 'delete')", [(i,) for i in entry_ids])

    def _drop(self, entry_ids: list[str]) -> None:
        """Remove committed deletions from the search index."""
        for entry_id in entry_ids:
            self._index.remove(entry_id)

    def _touch(self, entry_id: str) -> None:
        """Count a hit; best effort (a full disk or a busy index must not fail a read)."""
        with contextlib.suppress(sqlite3.Error):
            self._db.execute("UPDATE entries SET hits = hits + 1, last_used = ? WHERE entry_id = ?", (time.time(), entry_id))

    def _quarantine(self, entry_id: str, name: str, reason: str) -> None:
        """Move a failed entry's file aside with a note, drop its row, warn, remember why."""
        folder = self.directory / QUARANTINE
        with _storage("quarantining an entry"):
            if (self.directory / name).exists():
                folder.mkdir(exist_ok=True)
                os.replace(self.directory / name, folder / name)
                (folder / f"{name}.why").write_text(reason + "\n")
            with self._transaction():
                ours = self._db.execute("SELECT file FROM entries WHERE entry_id = ?", (entry_id,)).fetchone() == (name,)
                if ours:
                    self._forget([entry_id])
            if ours:
                self._drop([entry_id])
        self._quarantined[entry_id] = reason
        warnings.warn(f"cache entry {entry_id} quarantined in {folder}: {reason}", CacheCorruptionWarning, stacklevel=4)

    def _sync(self) -> None:
        """Apply other processes' commits to the search index (nothing to do when
        ``data_version`` is unchanged)."""
        with _storage("reading the index"):
            version = self._db.execute("PRAGMA data_version").fetchone()[0]
            if version == self._version:
                return
            self._version = version  # a commit after this read is seen now and again next time
            self._db.execute("BEGIN")
            try:
                changes = self._db.execute("SELECT seq, entry_id, op FROM log WHERE seq > ? ORDER BY seq", (self._seq,)).fetchall()
                last = {entry_id: op for _, entry_id, op in changes}
                puts = [i for i, op in last.items() if op == "put"]
                rows = []
                for start in range(0, len(puts), 500):
                    chunk = puts[start : start + 500]
                    marks = ",".join("?" * len(chunk))
                    rows += self._db.execute(f"SELECT entry_id, namespace, key, embedding, created FROM entries WHERE entry_id IN ({marks})", chunk).fetchall()
            finally:
                self._db.execute("COMMIT")
        if changes:
            self._seq = changes[-1][0]
        for entry_id, op in last.items():
            if op != "put":
                self._index.remove(entry_id)
        for entry_id, namespace, key, embedding, created in rows:
            self._index.add((key, namespace), entry_id, np.frombuffer(embedding, np.float32), created)

    def _load(self) -> None:
        """Fill the search index from the rows (one read transaction: rows and log agree)."""
        self._db.execute("BEGIN")
        try:
            self._version = self._db.execute("PRAGMA data_version").fetchone()[0]
            self._seq = self._db.execute("SELECT coalesce(max(seq), 0) FROM log").fetchone()[0]
            groups: dict[tuple[str, str], tuple[list, list, list]] = {}
            for entry_id, namespace, key, embedding, created in self._db.execute("SELECT entry_id, namespace, key, embedding, created FROM entries"):
                ids, vectors, times = groups.setdefault((key, namespace), ([], [], []))
                ids.append(entry_id)
                vectors.append(embedding)
                times.append(created)
        finally:
            self._db.execute("COMMIT")
        for group, (ids, vectors, times) in groups.items():
            matrix = np.frombuffer(b"".join(vectors), np.float32).reshape(len(ids), -1)
            self._index.add_many(group, ids, matrix, np.array(times))

    def _check_secret(self) -> None:
        check = codec.secret_check(self._secret)
        with _storage("opening the cache directory"):
            stored = self._db.execute("SELECT value FROM settings WHERE name = 'secret'").fetchone()
            entries = self._db.execute("SELECT count(*) FROM entries").fetchone()[0]
        if stored is not None and stored[0] != check:
            raise InvalidArgumentError("secret", "does not match the secret this cache was written with" if check else "this cache was written with a secret: open it with the same secret")
        if stored is None and check is not None:
            if entries:
                raise InvalidArgumentError("secret", "this cache was written without a secret: clear it before using one")
            if not self._read_only:
                with _storage("opening the cache directory"), self._transaction():
                    self._db.execute("INSERT OR REPLACE INTO settings VALUES ('secret', ?)", (check,))

    def _repair(self) -> None:
        """Holding the write lock: remove dead processes' temporary files and files no row
        points at (a crash between a write and its commit), convert a previous release's
        directory, and report files that are not entries."""
        with self._transaction():
            referenced = {row[0] for row in self._db.execute("SELECT file FROM entries")}
            legacy = []
            for path in self.directory.iterdir():
                name = path.name
                if name.startswith(TMP_PREFIX):
                    if not _alive(name):
                        path.unlink(missing_ok=True)
                elif FILE.fullmatch(name):
                    if name not in referenced:
                        path.unlink(missing_ok=True)
                elif LEGACY_FILE.fullmatch(name):
                    legacy.append(path)
                elif name.endswith(".safetensors") and name not in self._foreign:
                    self._foreign.add(name)
                    warnings.warn(f"{path}: not a cache entry; left alone", CacheCorruptionWarning, stacklevel=3)
            if legacy or (self.directory / LEGACY_INDEX).exists():
                self._convert(legacy)

    def _convert(self, paths: list[Path]) -> None:
        """Rewrite a previous release's entries in the current format (inside the repair's
        transaction); files that fail verification are quarantined, others' files left alone."""
        converted = []
        for path in paths:
            data = path.read_bytes()
            entry_id = path.name.removesuffix(".safetensors")
            try:
                entry = codec.decode_legacy(data, entry_id=entry_id)
            except codec.IntegrityError as error:
                if b"flowctl.cache/1" in data[:4096]:
                    folder = self.directory / QUARANTINE
                    folder.mkdir(exist_ok=True)
                    os.replace(path, folder / path.name)
                    (folder / f"{path.name}.why").write_text(f"{error}\n")
                    self._quarantined[entry_id] = str(error)
                    warnings.warn(f"cache entry {entry_id} quarantined on conversion: {error}", CacheCorruptionWarning, stacklevel=4)
                else:
                    warnings.warn(f"{path}: not a cache entry; left alone", CacheCorruptionWarning, stacklevel=4)
                continue
            encoded = codec.encode(entry, self._secret)
            name = f"{entry_id}.{uuid.uuid4().hex[:12]}.safetensors"
            tmp = self._write_temp(encoded.data)
            os.replace(tmp, self.directory / name)
            self._db.execute(
                "INSERT OR REPLACE INTO entries VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0, ?)",
                (entry_id, entry.namespace, entry.prompt, key_text(entry.key), entry.embedding.numpy().tobytes(),
                 json.dumps(list(entry.cached_steps)), entry.nbytes, entry.created, entry.cached_steps[-1] / entry.key.steps,
                 encoded.mac, name, entry.created),
            )
            self._db.execute("INSERT INTO log (entry_id, op) VALUES (?, 'put')", (entry_id,))
            converted.append(path)
        self._sync_directory()
        # Old files go only after the new ones are in place; the commit follows the repair.
        (self.directory / LEGACY_INDEX).unlink(missing_ok=True)
        for path in converted:
            path.unlink(missing_ok=True)

    def _write_temp(self, data: bytes) -> Path:
        """``data`` in a new fsynced temporary file of this process."""
        tmp = self.directory / f"{TMP_PREFIX}{os.getpid()}-{uuid.uuid4().hex}"
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
            raise
        return tmp

    def _unlink(self, name: str) -> None:
        """Delete a file whose row is gone (a failure leaves an orphan the next open removes)."""
        with contextlib.suppress(OSError):
            (self.directory / name).unlink(missing_ok=True)

    def _sync_directory(self) -> None:
        """Make renames in the directory durable."""
        fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _open_read_only(database: Path) -> sqlite3.Connection:
    """The index of a directory this process cannot write: read-only, or immutable where SQLite
    cannot make the WAL's shared-memory file (there is none: no process has the index open)."""
    uri = database.resolve().as_uri() + "?mode=ro"
    db = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
    try:
        db.execute("SELECT count(*) FROM entries").fetchone()
        return db
    except sqlite3.Error:
        db.close()
    return sqlite3.connect(uri + "&immutable=1", uri=True, isolation_level=None, check_same_thread=False)


def _record(row: tuple) -> IndexRecord:
    entry_id, namespace, prompt, key, embedding, steps, nbytes, created = row
    vector = torch.from_numpy(np.frombuffer(embedding, np.float32).copy())
    return IndexRecord(entry_id, namespace, prompt, CacheKey.from_json(json.loads(key)), vector, json.loads(steps), nbytes, created)


def _agree(entry: CacheEntry, row: tuple) -> None:
    """Raise IntegrityError unless the index row describes ``entry`` (an edited index must not
    serve an entry under another namespace, prompt or embedding)."""
    entry_id, namespace, prompt, key, embedding, steps, nbytes, created = row
    expected = (entry.entry_id, entry.namespace, entry.prompt, key_text(entry.key), entry.embedding.numpy().tobytes(),
                json.dumps(list(entry.cached_steps)), entry.nbytes, entry.created)
    fields = ("entry_id", "namespace", "prompt", "key", "embedding", "steps", "nbytes", "created")
    differ = [f for f, a, b in zip(fields, row, expected) if a != b]
    if differ:
        raise codec.IntegrityError(f"the index row disagrees with the verified file on {', '.join(differ)}")


def _available(ann: AnnMode) -> AnnMode:
    """``ann``, with "auto" falling back to exact search where usearch is not installed."""
    if ann == "auto":
        try:
            import usearch.index  # noqa: F401
        except ImportError:
            return "never"
    return ann


def _alive(tmp_name: str) -> bool:
    """Whether the process that owns a temporary file still runs (unknown owner: assume yes)."""
    try:
        pid = int(tmp_name.removeprefix(TMP_PREFIX).split("-")[0])
        os.kill(pid, 0)
    except ValueError:
        return False
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _storage_error(doing: str, error: BaseException) -> CacheStorageError:
    full = isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT)
    full = full or (isinstance(error, sqlite3.OperationalError) and "full" in str(error))
    cls = CacheFullError if full else CacheStorageError
    return cls(f"{doing}: {type(error).__name__}: {error}")


@contextlib.contextmanager
def _storage(doing: str) -> Iterator[None]:
    """Turn OS and SQLite errors into CacheStorageError (CacheFullError when out of space)."""
    try:
        yield
    except (OSError, sqlite3.Error) as error:
        raise _storage_error(doing, error) from None
