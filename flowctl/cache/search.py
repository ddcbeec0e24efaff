"""Nearest-embedding search over cached entries, kept incrementally.

Entries are grouped by (cache key, namespace): a look-up only ever compares entries under one
key, in the namespaces it names. A group keeps its unit embeddings in float32 matrices that grow
by doubling (an add or a removal costs O(1); nothing is re-stacked per query). Search is exact
(a matrix-vector product) by default.

With ``ann``, a group of ``ann_threshold`` entries or more also gets an HNSW graph (the
``usearch`` package, ``pip install flowctl[ann]``), built in a background thread from a
snapshot: until it is ready the group is searched exactly, so opening a large store does not
wait for it. Entries added meanwhile stay in an exactly-searched tail and join the graph a few
per later call. A query takes the graph's ``candidates`` nearest (int8 vectors in the graph)
plus the tail's, and ranks them exactly in float64: the similarity returned is always the exact
cosine; only which entry wins can differ from exact search (recall is measured in
``benchmarks/cache_store.py``). The graph is rebuilt, in the background again, once more of its
entries were removed than remain.
"""

from __future__ import annotations

import atexit
import itertools
import threading
from collections.abc import Hashable, Iterable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from ..errors import InvalidArgumentError, MissingDependencyError, ShapeError

AnnMode = Literal["never", "auto", "always"]

_DRAIN = 4
"""Tail entries moved into a ready graph per add or look-up."""
_CHUNK = 8192
"""Entries a build adds to its graph between checks that the interpreter is not exiting."""
_EXITING = threading.Event()
_BUILDS: set[threading.Thread] = set()


@atexit.register
def _stop_builds() -> None:
    """Let running builds stop at their next chunk and wait for them (a thread inside usearch
    when the interpreter exits would abort the process)."""
    _EXITING.set()
    for thread in list(_BUILDS):
        thread.join()


class _Rows:
    """Embeddings with ids and creation times in growable arrays; rows [0, n) are live."""

    def __init__(self, dim: int):
        self.dim = dim
        self.vectors, self.created = np.empty((16, dim), np.float32), np.empty(16)
        self.ids: list[str | None] = []

    @property
    def n(self) -> int:
        return len(self.ids)

    def append(self, ids: list[str], vectors: np.ndarray, created: np.ndarray) -> int:
        """Append rows; returns the first new row's index."""
        first, count = self.n, len(ids)
        if first + count > len(self.vectors):
            capacity = max(16, 2 * (first + count))
            self.vectors = np.concatenate([self.vectors[:first], np.empty((capacity - first, self.dim), np.float32)])
            self.created = np.concatenate([self.created[:first], np.empty(capacity - first)])
        self.vectors[first : first + count], self.created[first : first + count] = vectors, created
        self.ids.extend(ids)
        return first


@dataclass(eq=False)
class _Group:
    dim: int
    tail: _Rows  # searched exactly; a removal moves the last row into the hole
    graph: Any = None  # a usearch Index over ``graphed``'s rows (label = row)
    graphed: _Rows | None = None  # rows of the graph; a removed entry leaves its row, id None
    dead: int = 0  # removed rows in ``graphed``
    building: bool = False

    @property
    def live(self) -> int:
        return self.tail.n + (self.graphed.n - self.dead if self.graphed is not None else 0)


class EmbeddingIndex:
    """Unit embeddings of entries, grouped, searchable by cosine similarity; thread-safe.

    Args:
        ann: "never" (exact search only), "auto" (an HNSW graph for groups of at least
            ``ann_threshold`` entries) or "always".
        ann_threshold: group size from which "auto" builds a graph.
        candidates: how many graph neighbours are ranked exactly.
    """

    def __init__(self, *, ann: AnnMode = "never", ann_threshold: int = 50_000, candidates: int = 64):
        if ann not in ("never", "auto", "always"):
            raise InvalidArgumentError("ann", f"expected 'never', 'auto' or 'always', got {ann!r}")
        if ann != "never":
            _usearch()
        self.ann, self.ann_threshold, self.candidates = ann, ann_threshold, candidates
        self._lock = threading.RLock()
        self._groups: dict[Hashable, _Group] = {}
        self._where: dict[str, tuple[Hashable, bool, int]] = {}  # id -> (group, in the graph, row)
        self._stamps: dict[str, int] = {}  # id -> when it was last added (a build keeps only current ones)
        self._clock = itertools.count()
        self._builds: list[threading.Thread] = []

    def __len__(self) -> int:
        with self._lock:
            return len(self._where)

    def __contains__(self, entry_id: object) -> bool:
        with self._lock:
            return entry_id in self._where

    def add(self, group: Hashable, entry_id: str, embedding: np.ndarray, created: float) -> None:
        """Add (or replace) ``entry_id``'s unit ``embedding`` (1-D float32) in ``group``."""
        self.add_many(group, [entry_id], embedding.reshape(1, -1), np.array([created], dtype=np.float64))

    def add_many(self, group: Hashable, entry_ids: list[str], embeddings: np.ndarray, created: np.ndarray) -> None:
        """Add (or replace) entries in ``group`` (rows of ``embeddings``: unit, float32)."""
        if not entry_ids:
            return
        with self._lock:
            g = self._groups.get(group)
            if g is not None and embeddings.shape[1] != g.dim:
                raise ShapeError("embedding", f"expected dimension {g.dim} (the entries under this key), got {embeddings.shape[1]}")
            for entry_id in entry_ids:
                self._remove(entry_id)
            g = self._groups.get(group)  # the removals may have emptied it
            if g is None:
                g = self._groups[group] = _Group(embeddings.shape[1], _Rows(embeddings.shape[1]))
            first = g.tail.append(list(entry_ids), embeddings, created)
            for row, entry_id in enumerate(entry_ids, start=first):
                self._where[entry_id] = (group, False, row)
                self._stamps[entry_id] = next(self._clock)
            self._maintain(group, g)

    def remove(self, entry_id: str) -> None:
        """Remove ``entry_id`` if present."""
        with self._lock:
            self._remove(entry_id)

    def nearest(self, query: np.ndarray, groups: Iterable[Hashable]) -> tuple[str, float] | None:
        """The id and exact cosine similarity of the entry nearest ``query`` (unit, 1-D) over
        ``groups``; ties go to the most recently created. None when the groups are empty."""
        best: tuple[float, float, str] | None = None
        with self._lock:
            for group in groups:
                g = self._groups.get(group)
                if g is None:
                    continue
                if query.size != g.dim:
                    raise ShapeError("embedding", f"expected dimension {g.dim}, got {query.size}")
                self._maintain(group, g)
                vectors, created, ids = self._candidates(g, query)
                if not ids:
                    continue
                sims = vectors.astype(np.float64) @ query.astype(np.float64)
                top = sims.max()
                tied = np.flatnonzero(sims == top)
                i = int(tied[np.argmax(created[tied])])
                if best is None or (top, created[i]) > best[:2]:
                    best = (float(top), float(created[i]), ids[i])
        return None if best is None else (best[2], best[0])

    def wait(self) -> None:
        """Wait for background graph builds to finish (benchmarks and tests use it)."""
        while True:
            with self._lock:
                builds, self._builds = self._builds, []
            if not builds:
                return
            for thread in builds:
                thread.join()

    # -- internals (called holding the lock) ----------------------------------------------------

    def _remove(self, entry_id: str) -> None:
        where = self._where.pop(entry_id, None)
        if where is None:
            return
        del self._stamps[entry_id]
        group, in_graph, row = where
        g = self._groups[group]
        if in_graph:
            g.graph.remove(row)
            g.graphed.ids[row] = None
            g.dead += 1
        else:
            self._tail_pop(group, g, row)
        if g.live == 0 and not g.building:
            del self._groups[group]

    def _tail_pop(self, group: Hashable, g: _Group, row: int) -> None:
        """Drop a tail row: the last row moves into its place."""
        tail, last = g.tail, g.tail.n - 1
        if row != last:
            tail.vectors[row], tail.created[row], tail.ids[row] = tail.vectors[last], tail.created[last], tail.ids[last]
            self._where[tail.ids[row]] = (group, False, row)
        tail.ids.pop()

    def _maintain(self, group: Hashable, g: _Group) -> None:
        """Start a graph build when the group needs one; move a few tail entries into a ready
        graph."""
        if self.ann == "never" or g.building:
            return
        wanted = self.ann == "always" or g.live >= self.ann_threshold
        if wanted and (g.graph is None or g.dead > g.graphed.n - g.dead):
            self._start_build(group, g)
        elif g.graph is not None:
            for _ in range(min(_DRAIN, g.tail.n)):
                self._to_graph(group, g, g.tail.n - 1)

    def _to_graph(self, group: Hashable, g: _Group, row: int) -> None:
        entry_id = g.tail.ids[row]
        vector, created = g.tail.vectors[row].copy(), g.tail.created[row]
        self._tail_pop(group, g, row)
        label = g.graphed.append([entry_id], vector[None], np.array([created]))
        g.graph.add(label, vector)
        self._where[entry_id] = (group, True, label)

    def _start_build(self, group: Hashable, g: _Group) -> None:
        """Snapshot the group's live entries and build a graph of them in a thread."""
        parts = [(g.tail.ids[: g.tail.n], g.tail.vectors[: g.tail.n], g.tail.created[: g.tail.n])]
        if g.graphed is not None:
            keep = [i for i, entry_id in enumerate(g.graphed.ids) if entry_id is not None]
            parts.append(([g.graphed.ids[i] for i in keep], g.graphed.vectors[keep], g.graphed.created[keep]))
        ids = [entry_id for part in parts for entry_id in part[0]]
        snapshot = _Rows(g.dim)
        snapshot.append(ids, np.concatenate([p[1] for p in parts]), np.concatenate([p[2] for p in parts]))
        stamps = [self._stamps[entry_id] for entry_id in ids]
        g.building = True
        thread = threading.Thread(target=self._build, args=(group, g, snapshot, stamps), daemon=True, name="flowctl-ann-build")
        self._builds.append(thread)
        _BUILDS.add(thread)
        thread.start()

    def _build(self, group: Hashable, g: _Group, snapshot: _Rows, stamps: list[int]) -> None:
        graph = None
        try:
            # int8 vectors in the graph: it only proposes candidates, ranked on the float32 rows
            graph = _usearch().Index(ndim=g.dim, metric="ip", dtype="i8", connectivity=32, expansion_add=128, expansion_search=64)
            for start in range(0, snapshot.n, _CHUNK):  # in chunks: the interpreter may be exiting
                if _EXITING.is_set():
                    graph = None
                    break
                stop = min(start + _CHUNK, snapshot.n)
                graph.add(np.arange(start, stop, dtype=np.uint64), snapshot.vectors[start:stop])
        except Exception:  # noqa: BLE001 - out of memory or the like: the group stays exact
            graph = None
        with self._lock:
            g.building = False
            _BUILDS.discard(threading.current_thread())
            if graph is None or self._groups.get(group) is not g:
                return
            self._install(group, g, graph, snapshot, stamps)

    def _install(self, group: Hashable, g: _Group, graph: Any, snapshot: _Rows, stamps: list[int]) -> None:
        """Make ``graph`` the group's: entries of the snapshot still current move into it (out
        of the tail or the old graph); those removed or replaced since are removed from it."""
        tail_keep = np.ones(g.tail.n, dtype=bool)
        dead = 0
        for label, (entry_id, stamp) in enumerate(zip(snapshot.ids, stamps)):
            if self._stamps.get(entry_id) != stamp:
                graph.remove(label)
                snapshot.ids[label] = None
                dead += 1
                continue
            _, in_graph, row = self._where[entry_id]
            if not in_graph:
                tail_keep[row] = False
            self._where[entry_id] = (group, True, label)
        # Every entry of the old graph is in the snapshot: while a build runs, adds stay in the tail.
        kept = np.flatnonzero(tail_keep)
        tail = _Rows(g.dim)
        tail.append([g.tail.ids[i] for i in kept], g.tail.vectors[kept], g.tail.created[kept])
        for row, entry_id in enumerate(tail.ids):
            self._where[entry_id] = (group, False, row)
        g.tail, g.graph, g.graphed, g.dead = tail, graph, snapshot, dead

    def _candidates(self, g: _Group, query: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """Vectors, creation times and ids worth ranking exactly: the tail's best few by a
        float32 product (all of a small tail) and the graph's nearest."""
        tail, k = g.tail, self.candidates
        rows = np.arange(tail.n)
        if tail.n > k:
            rows = np.argpartition(-(tail.vectors[: tail.n] @ query.astype(np.float32)), k)[:k]
        vectors, created, ids = [tail.vectors[rows]], [tail.created[rows]], [tail.ids[i] for i in rows]
        if g.graph is not None and g.graphed.n > g.dead:
            labels = [int(label) for label in g.graph.search(query.astype(np.float32), k).keys if g.graphed.ids[int(label)] is not None]
            vectors.append(g.graphed.vectors[labels])
            created.append(g.graphed.created[labels])
            ids += [g.graphed.ids[label] for label in labels]
        return np.concatenate(vectors), np.concatenate(created), ids


def _usearch():
    try:
        import usearch.index
    except ImportError:
        raise MissingDependencyError("approximate look-up needs usearch: pip install flowctl[ann]") from None
    return usearch.index
