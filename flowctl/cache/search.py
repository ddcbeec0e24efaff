"""Nearest-embedding search over cached entries, kept incrementally.

Entries are grouped by (cache key, namespace): a look-up only ever compares entries under one
key, in the namespaces it names. Each group holds its unit embeddings in one float32 matrix
that grows by doubling (an add or a removal costs O(1); nothing is re-stacked per query).
Search is exact (one matrix-vector product) by default. With ``ann`` the groups above
``ann_threshold`` entries also keep an HNSW graph (the ``usearch`` package, ``pip install
flowctl[ann]``); a query takes its ``candidates`` nearest by the graph and re-ranks them
exactly, so the similarity returned is always the exact cosine; only which entry wins can
differ from exact search (recall is measured in ``benchmarks/cache_store.py``).
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from ..errors import InvalidArgumentError, MissingDependencyError, ShapeError

AnnMode = Literal["never", "auto", "always"]


@dataclass(eq=False)
class _Group:
    dim: int
    vectors: np.ndarray  # (capacity, dim) float32; rows [0, n) are live
    created: np.ndarray  # (capacity,) float64
    ids: list[str] = field(default_factory=list)
    graph: object | None = None  # a usearch Index over the rows, labelled by a stable number
    labels: list[int] = field(default_factory=list)  # row -> graph label
    rows_by_label: dict[int, int] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return len(self.ids)


class EmbeddingIndex:
    """Unit embeddings of entries, grouped, searchable by cosine similarity; not thread-safe
    (its owner locks).

    Args:
        ann: "never" (exact search only), "auto" (an HNSW graph for groups of at least
            ``ann_threshold`` entries) or "always".
        ann_threshold: group size from which "auto" searches by the graph.
        candidates: how many graph neighbours are re-ranked exactly.
    """

    def __init__(self, *, ann: AnnMode = "never", ann_threshold: int = 50_000, candidates: int = 64):
        if ann not in ("never", "auto", "always"):
            raise InvalidArgumentError("ann", f"expected 'never', 'auto' or 'always', got {ann!r}")
        if ann != "never":
            _usearch()
        self.ann, self.ann_threshold, self.candidates = ann, ann_threshold, candidates
        self._groups: dict[Hashable, _Group] = {}
        self._where: dict[str, tuple[Hashable, int]] = {}  # entry id -> (group, row)
        self._next_label = 0

    def __len__(self) -> int:
        return len(self._where)

    def __contains__(self, entry_id: object) -> bool:
        return entry_id in self._where

    def add(self, group: Hashable, entry_id: str, embedding: np.ndarray, created: float) -> None:
        """Add (or replace) ``entry_id``'s unit ``embedding`` (1-D float32) in ``group``."""
        if entry_id in self._where:
            self.remove(entry_id)
        g = self._groups.get(group)
        if g is None:
            g = self._groups[group] = _Group(embedding.size, np.empty((16, embedding.size), np.float32), np.empty(16))
        elif embedding.size != g.dim:
            raise ShapeError("embedding", f"expected dimension {g.dim} (the entries under this key), got {embedding.size}")
        if g.n == len(g.vectors):
            g.vectors = np.concatenate([g.vectors, np.empty_like(g.vectors)])
            g.created = np.concatenate([g.created, np.empty_like(g.created)])
        row = g.n
        g.vectors[row], g.created[row] = embedding, created
        g.ids.append(entry_id)
        self._where[entry_id] = (group, row)
        if g.graph is not None:
            self._graph_add(g, [row])
        elif self._wants_graph(g):
            self._build_graph(g)

    def add_many(self, group: Hashable, entry_ids: list[str], embeddings: np.ndarray, created: np.ndarray) -> None:
        """Add new entries to ``group`` at once (rows of ``embeddings``, unit, float32); the
        graph, if the group needs one, is built in one batch (usearch uses every core)."""
        for entry_id in entry_ids:
            self.remove(entry_id)
        if not entry_ids:
            return
        g = self._groups.get(group)
        if g is None:
            g = self._groups[group] = _Group(embeddings.shape[1], np.empty((0, embeddings.shape[1]), np.float32), np.empty(0))
        elif embeddings.shape[1] != g.dim:
            raise ShapeError("embedding", f"expected dimension {g.dim} (the entries under this key), got {embeddings.shape[1]}")
        first, count = g.n, len(entry_ids)
        if first + count > len(g.vectors):
            capacity = max(16, 2 * (first + count))
            g.vectors = np.concatenate([g.vectors[:first], np.empty((capacity - first, g.dim), np.float32)])
            g.created = np.concatenate([g.created[:first], np.empty(capacity - first)])
        g.vectors[first : first + count], g.created[first : first + count] = embeddings, created
        g.ids.extend(entry_ids)
        for row, entry_id in enumerate(entry_ids, start=first):
            self._where[entry_id] = (group, row)
        if g.graph is not None:
            self._graph_add(g, list(range(first, first + count)))
        elif self._wants_graph(g):
            self._build_graph(g)

    def remove(self, entry_id: str) -> None:
        """Remove ``entry_id`` if present (the group's last row moves into its place)."""
        where = self._where.pop(entry_id, None)
        if where is None:
            return
        group, row = where
        g = self._groups[group]
        last = g.n - 1
        if g.graph is not None:
            label = g.labels[row]
            g.graph.remove(label)
            del g.rows_by_label[label]
            if row != last:
                g.labels[row] = g.labels[last]
                g.rows_by_label[g.labels[row]] = row
            g.labels.pop()
        if row != last:
            g.vectors[row], g.created[row], g.ids[row] = g.vectors[last], g.created[last], g.ids[last]
            self._where[g.ids[row]] = (group, row)
        g.ids.pop()
        if not g.ids:
            del self._groups[group]

    def nearest(self, query: np.ndarray, groups: Iterable[Hashable]) -> tuple[str, float] | None:
        """The id and exact cosine similarity of the entry nearest ``query`` (unit, 1-D) over
        ``groups``; ties go to the most recently created. None when the groups are empty."""
        best: tuple[float, float, str] | None = None
        for group in groups:
            g = self._groups.get(group)
            if g is None:
                continue
            if query.size != g.dim:
                raise ShapeError("embedding", f"expected dimension {g.dim}, got {query.size}")
            rows = self._candidates(g, query)
            sims = g.vectors[rows].astype(np.float64) @ query.astype(np.float64)
            top = sims.max()
            tied = rows[sims == top]
            row = int(tied[np.argmax(g.created[tied])])
            if best is None or (top, g.created[row]) > best[:2]:
                best = (float(top), float(g.created[row]), g.ids[row])
        return None if best is None else (best[2], best[0])

    def _candidates(self, g: _Group, query: np.ndarray) -> np.ndarray:
        """Rows worth scoring exactly: all of them, or the graph's nearest ``candidates``."""
        if g.graph is None or g.n <= self.candidates:
            if g.n > self.candidates:
                # exact: the top few by a float32 product, re-scored in float64 by the caller
                sims = g.vectors[: g.n] @ query.astype(np.float32)
                k = self.candidates
                return np.argpartition(-sims, k)[:k]
            return np.arange(g.n)
        found = g.graph.search(query.astype(np.float32), self.candidates)
        return np.array([g.rows_by_label[int(label)] for label in found.keys], dtype=np.int64)

    def _wants_graph(self, g: _Group) -> bool:
        return self.ann == "always" or (self.ann == "auto" and g.n >= self.ann_threshold)

    def _build_graph(self, g: _Group) -> None:
        # int8 vectors in the graph: it only proposes candidates, re-ranked on the float32 rows
        g.graph = _usearch().Index(ndim=g.dim, metric="ip", dtype="i8", expansion_add=64, expansion_search=128)
        g.labels, g.rows_by_label = [], {}
        self._graph_add(g, list(range(g.n)))

    def _graph_add(self, g: _Group, rows: list[int]) -> None:
        labels = np.arange(self._next_label, self._next_label + len(rows), dtype=np.uint64)
        self._next_label += len(rows)
        g.graph.add(labels, g.vectors[rows])
        for row, label in zip(rows, labels.tolist()):
            g.labels.append(label)
            g.rows_by_label[label] = row


def _usearch():
    try:
        import usearch.index
    except ImportError:
        raise MissingDependencyError("approximate look-up needs usearch: pip install flowctl[ann]") from None
    return usearch.index
