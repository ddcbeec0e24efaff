"""What a persistent cache store provides: the interface :class:`~flowctl.cache.CacheStore`
puts its memory tiers over, shared by the local :class:`~flowctl.cache.DiskStore` (a directory:
SQLite index and safetensors files) and :class:`~flowctl.cache.PostgresStore` (PostgreSQL with
pgvector).

A persistent store is shared: several processes (and, for PostgreSQL, machines) read and write
it at once. Every method sees what any of them committed before it was called; a put is durable
and visible to all on return. Entries are verified on :meth:`get`: one whose checksum (an HMAC
when the store has a secret) or metadata does not match is quarantined (moved aside, reported
in :attr:`quarantined`, never served) and the get is a miss. Only a verified mismatch
quarantines; an I/O or server error raises :class:`~flowctl.errors.CacheStorageError` and
changes nothing.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol, runtime_checkable

import torch

from ..errors import InvalidArgumentError

if TYPE_CHECKING:
    from .entry import CacheEntry, CacheKey, IndexRecord

class CacheCorruptionWarning(UserWarning):
    """A stored entry failed verification and was quarantined, or a file in a cache directory is
    not one of its entries and was left alone."""


EvictionPolicy = Literal["lru", "benefit"]
"""Which entries go first when a store is over budget: the least recently used ("lru"), or the
least ``hits x (largest cached step / key.steps)`` with ties by LRU ("benefit", NIRVANA's)."""


@dataclass(frozen=True)
class Match:
    """The cached entry most similar to a query.

    Attributes:
        entry_id, namespace, prompt: the entry's.
        similarity: cosine similarity of the query and the entry's embedding, in [-1, 1].
        steps: the grid steps the entry holds latents for, ascending.
    """

    entry_id: str
    namespace: str
    prompt: str
    similarity: float
    steps: tuple[int, ...]


@runtime_checkable
class PersistentStore(Protocol):
    def put(self, entry: CacheEntry) -> None:
        """Store ``entry``, replacing a stored entry of the same id in the same namespace.

        Raises:
            InvalidArgumentError: the id is taken by an entry of another namespace (nothing is
                written).
            CacheFullError: no space left (nothing is written).
            CacheStorageError: any other I/O or server failure (nothing is written).
        """

    def get(self, entry_id: str, namespace: str) -> CacheEntry:
        """The entry, verified, tensors on the CPU; counts a hit (for eviction).

        Raises:
            CacheMissError: no such entry in ``namespace``, or it failed verification (then it
                is quarantined).
            CacheStorageError: it could not be read (it stays stored).
        """

    def delete(self, entry_id: str, namespace: str) -> None:
        """Remove the entry (CacheMissError if there is none in ``namespace``)."""

    def clear(self, namespace: str | None = None) -> int:
        """Remove every entry of ``namespace`` (of all namespaces with None); returns how many.
        Consistent with concurrent writers: an entry committed after the clear began survives
        whole, one committed before is gone whole."""

    def nearest(self, embedding: torch.Tensor, key: CacheKey, namespaces: Iterable[str]) -> Match | None:
        """The entry under exactly ``key`` in one of ``namespaces`` whose embedding is most
        cosine-similar to the unit vector ``embedding``; the similarity is exact. Ties go to the
        most recently created. None if nothing qualifies; ShapeError if the dimensions differ."""

    def records(self, namespace: str | None = None) -> list[IndexRecord]:
        """Every stored entry's record (of ``namespace``, or all), oldest first; no tensor read."""

    def evict(self, max_bytes: int, policy: EvictionPolicy = "lru") -> int:
        """Remove entries, victims first by ``policy``, until they hold at most ``max_bytes``;
        returns how many were removed."""

    @property
    def quarantined(self) -> dict[str, str]:
        """Entry id -> why it was quarantined, for every entry this handle quarantined."""

    def __len__(self) -> int: ...

    def __contains__(self, entry_id: object) -> bool: ...

    def close(self) -> None:
        """Release connections and files; the handle is unusable afterwards."""


def store_location(location: object, argument: str = "location") -> tuple[str, bool]:
    """``(location as text, whether it is a PostgreSQL URL)``; anything else must be a directory
    path (another URL scheme, or an empty location, is an InvalidArgumentError)."""
    text = os.fspath(location) if isinstance(location, (str, os.PathLike)) else None
    if not text:
        raise InvalidArgumentError(argument, f"expected a cache directory or a postgresql:// URL, got {location!r}")
    if text.startswith(("postgresql://", "postgres://")):
        return text, True
    if re.match(r"[A-Za-z][A-Za-z0-9+.-]*://", text):
        raise InvalidArgumentError(argument, f"{text!r}: unknown store URL; expected a cache directory or a postgresql:// URL")
    return text, False


def open_store(
    location: str | os.PathLike[str], *, secret: bytes | str | None = None, create: bool = True, writable: bool = True, argument: str = "location"
) -> PersistentStore:
    """The persistent store at ``location``: a PostgreSQL URL (``postgresql://...``) opens a
    :class:`~flowctl.cache.PostgresStore`, anything else is a cache directory
    (:class:`~flowctl.cache.DiskStore`). ``create=False`` refuses a directory that does not
    exist (a typo must not create an empty cache); a directory this process cannot write is
    refused up front (InvalidArgumentError), or with ``writable=False`` opened for reading only
    (listing, inspecting). ``argument`` names ``location`` in errors."""
    text, remote = store_location(location, argument)
    if remote:
        from .postgres import PostgresStore

        return PostgresStore(text, secret=secret)
    from .disk import DiskStore

    path = Path(text)
    if path.exists() and not path.is_dir():
        raise InvalidArgumentError(argument, f"{text!r} is a file, not a cache directory")
    if not create and not path.is_dir():
        raise InvalidArgumentError(argument, f"no cache directory at {text!r}")
    read_only = path.is_dir() and not os.access(path, os.W_OK | os.X_OK)
    if read_only and writable:
        raise InvalidArgumentError(argument, f"{text!r} is read-only: this process cannot write the cache directory")
    return DiskStore(path, secret=secret, read_only=read_only)
