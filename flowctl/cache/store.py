"""The in-memory tiers of the trajectory cache, over an optional persistent store.

An entry lives in the device tier (tensors on the model's device), the host tier (CPU memory)
or only in the persistent store (a :class:`~flowctl.cache.DiskStore` directory or a
:class:`~flowctl.cache.PostgresStore`). Each memory tier has a budget in bytes (of
:attr:`CacheEntry.nbytes`) that holds after every operation; a budget of 0 disables the tier.
:meth:`CacheStore.put` inserts into the device tier and :meth:`CacheStore.get` promotes into
it; an entry larger than a tier's budget skips that tier. A tier over budget moves a victim
down: device -> host (demotion), host -> dropped (eviction; with a persistent store the entry
stays there). Victims, never the entry being put or got:

- "lru": the least recently used entry;
- "benefit" (NIRVANA): the least ``hits x (largest cached step / key.steps)``, ties by LRU.

With a persistent store, look-ups ask it, so they see what other processes committed; without,
the store searches its own entries. Look-ups never cross namespaces (tenants) unless the caller
names the namespaces to search: a shared cache leaks prompts across tenants.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import get_args

import torch

from .._checks import check_device, check_int, check_items
from ..errors import InvalidArgumentError, UnknownNameError
from .entry import CacheEntry, CacheKey, CacheMissError, IndexRecord, check_entry_id, check_namespace, key_text, unit_embedding
from .persistent import EvictionPolicy, Match, PersistentStore
from .search import AnnMode, EmbeddingIndex


@dataclass(frozen=True)
class CacheStats:
    """Occupancy (bytes and entries per tier) and event counts since the store was made."""

    device_bytes_used: int
    host_bytes_used: int
    device_entries: int
    host_entries: int
    disk_entries: int
    hits: int
    evictions: int
    demotions: int


@dataclass(eq=False)
class _Slot:
    """An entry held in memory: ``tier`` "device" or "host"."""

    record: IndexRecord
    tier: str
    entry: CacheEntry
    hits: int = 0
    last_used: int = 0


class CacheStore:
    """Cache entries in a device tier, a host tier and, optionally, a persistent store;
    thread-safe.

    Args:
        device: the model's device (one this machine has), where the device tier keeps tensors
            and :meth:`get` returns them.
        device_bytes: budget of the device tier, bytes (0: no device tier).
        host_bytes: budget of the host (CPU) tier, bytes (0: no host tier).
        eviction: "lru" or "benefit".
        persistent: a :class:`~flowctl.cache.persistent.PersistentStore` (a DiskStore or a
            PostgresStore): written through on :meth:`put`, asked by :meth:`nearest`, read on a
            memory miss.
        ann: approximate look-up over the memory tiers when there is no persistent store (see
            :class:`~flowctl.cache.search.EmbeddingIndex`; the persistent stores have their own).
    """

    def __init__(
        self,
        device: torch.device | str = "cpu",
        *,
        device_bytes: int = 1 << 30,
        host_bytes: int = 4 << 30,
        eviction: EvictionPolicy = "lru",
        persistent: PersistentStore | None = None,
        ann: AnnMode = "never",
    ):
        self.device = check_device("device", device)
        self._budget = {
            "device": check_int("device_bytes", device_bytes, minimum=0),
            "host": check_int("host_bytes", host_bytes, minimum=0),
        }
        if not isinstance(eviction, str) or eviction not in get_args(EvictionPolicy):
            raise UnknownNameError("eviction", eviction, list(get_args(EvictionPolicy)))
        if persistent is not None and not isinstance(persistent, PersistentStore):
            raise InvalidArgumentError("persistent", f"expected a DiskStore, a PostgresStore or None, got {type(persistent).__name__}")
        self.eviction = eviction
        self.persistent = persistent
        self._index = EmbeddingIndex(ann=ann)  # of the memory tiers, used without a persistent store
        self._lock = threading.RLock()
        self._used = {"device": 0, "host": 0}
        self._clock = itertools.count()
        self._slots: dict[str, _Slot] = {}
        self._hits = self._evictions = self._demotions = 0

    @property
    def device_bytes(self) -> int:
        return self._budget["device"]

    @property
    def host_bytes(self) -> int:
        return self._budget["host"]

    def __len__(self) -> int:
        with self._lock:
            return len(self._slots) if self.persistent is None else len(self.persistent)

    def __contains__(self, entry_id: object) -> bool:
        """Whether an entry of this id is stored, in any namespace (ids are unique per store)."""
        with self._lock:
            return entry_id in self._slots or (self.persistent is not None and entry_id in self.persistent)

    def put(self, entry: CacheEntry) -> str:
        """Store ``entry`` (replacing one of the same id) and return its id.

        With a persistent store the entry is written there first: a failed write leaves the
        store as it was.

        Raises:
            InvalidArgumentError: not a CacheEntry, the id belongs to another namespace, or no tier can hold the
                entry and no persistent store is attached.
            CacheStorageError: the persistent store failed (CacheFullError: out of space).
        """
        if not isinstance(entry, CacheEntry):
            raise InvalidArgumentError("entry", f"expected a CacheEntry, got {type(entry).__name__}")
        record = IndexRecord.from_entry(entry)
        with self._lock:
            old = self._slots.get(entry.entry_id)
            if old is not None and old.record.namespace != entry.namespace:
                raise InvalidArgumentError("entry", f"entry_id {entry.entry_id} is taken in another namespace")
            if self.persistent is None and record.nbytes > max(self._budget.values()):
                raise InvalidArgumentError(
                    "entry",
                    f"its {record.nbytes} bytes fit neither the device tier ({self.device_bytes} bytes) nor the "
                    f"host tier ({self.host_bytes} bytes), and no persistent store is attached",
                )
            if self.persistent is not None:
                self.persistent.put(entry)
            if old is not None:
                self._unplace(old)
            self._admit(record, entry, hits=0)
        return entry.entry_id

    def get(self, entry_id: str, *, namespace: str = "default") -> CacheEntry:
        """A copy of the entry, its tensors on :attr:`device`; promotes it to the device tier,
        counts a hit.

        Raises:
            CacheMissError: no entry of this id in ``namespace`` (or its stored copy failed
                verification and was quarantined).
            CacheStorageError: the persistent store could not be read.
        """
        check_entry_id("entry_id", entry_id)
        check_namespace("namespace", namespace)
        with self._lock:
            slot = self._slots.get(entry_id)
            if slot is not None and slot.record.namespace != namespace:
                slot = None
            if slot is None and self.persistent is None:
                raise CacheMissError(f"no entry {entry_id!r} in namespace {namespace!r}")
            self._hits += 1
            if slot is None:
                entry = self.persistent.get(entry_id, namespace)
                slot = self._admit(IndexRecord.from_entry(entry), entry, hits=1)
            else:
                slot.hits += 1
                slot.last_used = next(self._clock)
                if slot.tier != "device":
                    entry = slot.entry
                    self._unplace(slot)
                    slot = self._admit(slot.record, entry, hits=slot.hits)
            # a copy: a caller writing into the returned tensors must not change the cache
            return (slot.entry if slot is not None else entry).to(self.device, copy=True)

    def nearest(
        self,
        embedding: torch.Tensor,
        key: CacheKey,
        *,
        namespace: str = "default",
        namespaces: Iterable[str] | None = None,
    ) -> Match | None:
        """The entry under exactly ``key`` whose embedding is most cosine-similar to ``embedding``.

        Searches ``namespace``, or exactly the namespaces in ``namespaces`` when given. Ties go
        to the most recently created entry. No tensor is loaded. None if nothing qualifies.
        """
        if not isinstance(key, CacheKey):
            raise InvalidArgumentError("key", f"expected a CacheKey, got {type(key).__name__}")
        query = unit_embedding("embedding", embedding).cpu()
        if namespaces is None:
            allowed = [check_namespace("namespace", namespace)]
        else:
            allowed = sorted({check_namespace("namespaces", n) for n in check_items("namespaces", namespaces, "an iterable of namespaces")})
        if self.persistent is not None:
            return self.persistent.nearest(query, key, allowed)
        with self._lock:
            found = self._index.nearest(query.numpy(), [(key_text(key), n) for n in allowed])
            if found is None:
                return None
            record = self._slots[found[0]].record
        return Match(record.entry_id, record.namespace, record.prompt, found[1], record.steps)

    def remove(self, entry_id: str, *, namespace: str = "default") -> None:
        """Drop the entry from every tier, the persistent store included (CacheMissError if
        absent)."""
        check_entry_id("entry_id", entry_id)
        check_namespace("namespace", namespace)
        with self._lock:
            slot = self._slots.get(entry_id)
            if slot is not None and slot.record.namespace != namespace:
                slot = None
            if self.persistent is not None:
                self.persistent.delete(entry_id, namespace)
            elif slot is None:
                raise CacheMissError(f"no entry {entry_id!r} in namespace {namespace!r}")
            if slot is not None:
                self._unplace(slot)

    def stats(self) -> CacheStats:
        with self._lock:
            tiers = [s.tier for s in self._slots.values()]
            persistent_only = 0 if self.persistent is None else max(0, len(self.persistent) - len(tiers))
            return CacheStats(
                self._used["device"],
                self._used["host"],
                tiers.count("device"),
                tiers.count("host"),
                persistent_only,
                self._hits,
                self._evictions,
                self._demotions,
            )

    def _admit(self, record: IndexRecord, entry: CacheEntry, *, hits: int) -> _Slot | None:
        """Place the entry in the highest tier it fits, then restore the budgets; its slot, or
        None when no tier holds it."""
        slot = None
        for tier in ("device", "host"):
            if record.nbytes <= self._budget[tier]:
                slot = self._place(record, tier, entry, hits)
                break
        if slot is not None:
            self._fit("device", protect=slot)
            self._fit("host", protect=slot)
        return slot

    def _place(self, record: IndexRecord, tier: str, entry: CacheEntry, hits: int) -> _Slot:
        slot = _Slot(record, tier, entry.to(self.device if tier == "device" else "cpu"), hits, next(self._clock))
        self._slots[record.entry_id] = slot
        self._used[tier] += record.nbytes
        self._index.add((key_text(record.key), record.namespace), record.entry_id, record.embedding.numpy(), record.created)
        return slot

    def _unplace(self, slot: _Slot) -> None:
        self._used[slot.tier] -= slot.record.nbytes
        del self._slots[slot.record.entry_id]
        self._index.remove(slot.record.entry_id)

    def _fit(self, tier: str, *, protect: _Slot) -> None:
        """Move victims out of ``tier`` until it is within budget."""
        while self._used[tier] > self._budget[tier]:
            victim = min(
                (s for s in self._slots.values() if s.tier == tier and s is not protect),
                key=self._victim_order,
            )
            self._unplace(victim)
            if tier == "device" and victim.record.nbytes <= self.host_bytes:
                self._place(victim.record, "host", victim.entry, victim.hits).last_used = victim.last_used
                self._demotions += 1
            else:
                self._evictions += 1

    def _victim_order(self, slot: _Slot) -> tuple[float, int]:
        score = slot.hits * slot.record.benefit if self.eviction == "benefit" else 0.0
        return score, slot.last_used
