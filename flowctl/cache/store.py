"""The in-memory tiers of the trajectory cache, over an optional persistent :class:`DiskStore`.

An entry lives in the device tier (tensors on the model's device), the host tier (CPU memory)
or only on disk. Each memory tier has a budget in bytes (of :attr:`CacheEntry.nbytes`) that
holds after every operation; a budget of 0 disables the tier. :meth:`CacheStore.put` inserts
into the device tier and :meth:`CacheStore.get` promotes into it; an entry larger than a tier's
budget skips that tier. A tier over budget moves a victim down: device -> host (demotion),
host -> dropped (eviction; with a DiskStore the entry stays on disk). Victims, never the entry
being put or got:

- "lru": the least recently used entry;
- "benefit" (NIRVANA): the least ``hits x (largest cached step / key.steps)``, ties by LRU.

Look-ups never cross namespaces (tenants) unless the caller names the namespaces to search:
a shared cache leaks prompts across tenants.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal, get_args

import torch

from .._checks import check_int
from ..errors import InvalidArgumentError, ShapeError, UnknownNameError
from .disk import DiskStore
from .entry import (
    CacheEntry,
    CacheKey,
    CacheMissError,
    IndexRecord,
    check_namespace,
    unit_embedding,
)

EvictionPolicy = Literal["lru", "benefit"]
"""How a tier over budget picks its victim (see the module docstring)."""


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
    """Where one entry is: ``tier`` "device" or "host" with ``entry`` in memory, or "disk"."""

    record: IndexRecord
    seq: int
    tier: str = "disk"
    entry: CacheEntry | None = None
    hits: int = 0
    last_used: int = 0


class CacheStore:
    """Cache entries in a device tier, a host tier and, optionally, a DiskStore; thread-safe.

    Args:
        device: the model's device, where the device tier keeps tensors and :meth:`get`
            returns them.
        device_bytes: budget of the device tier, bytes (0: no device tier).
        host_bytes: budget of the host (CPU) tier, bytes (0: no host tier).
        eviction: "lru" or "benefit".
        disk: a persistent store; written through on :meth:`put`, and its entries are
            loaded into the index on construction.
    """

    def __init__(
        self,
        device: torch.device | str = "cpu",
        *,
        device_bytes: int = 1 << 30,
        host_bytes: int = 4 << 30,
        eviction: EvictionPolicy = "lru",
        disk: DiskStore | None = None,
    ):
        try:
            self.device = torch.device(device)
        except (RuntimeError, TypeError) as error:
            raise InvalidArgumentError("device", str(error)) from None
        self._budget = {
            "device": check_int("device_bytes", device_bytes, minimum=0),
            "host": check_int("host_bytes", host_bytes, minimum=0),
        }
        if eviction not in get_args(EvictionPolicy):
            raise UnknownNameError("eviction", eviction, list(get_args(EvictionPolicy)))
        if disk is not None and not isinstance(disk, DiskStore):
            raise InvalidArgumentError("disk", f"expected a DiskStore or None, got {type(disk).__name__}")
        self.eviction = eviction
        self.disk = disk
        self._lock = threading.RLock()
        self._used = {"device": 0, "host": 0}
        self._clock = itertools.count()
        self._slots: dict[str, _Slot] = {}
        self._hits = self._evictions = self._demotions = 0
        if disk is not None:
            for record in sorted(disk.index(), key=lambda r: r.created):
                self._slots[record.entry_id] = _Slot(record, next(self._clock))

    @property
    def device_bytes(self) -> int:
        return self._budget["device"]

    @property
    def host_bytes(self) -> int:
        return self._budget["host"]

    def __len__(self) -> int:
        with self._lock:
            return len(self._slots)

    def __contains__(self, entry_id: object) -> bool:
        """Whether an entry of this id is stored, in any namespace (ids are random uuids)."""
        with self._lock:
            return entry_id in self._slots

    def put(self, entry: CacheEntry) -> str:
        """Store ``entry`` (replacing one of the same id) and return its id.

        With a DiskStore the entry is written there first: a failed write leaves the store as
        it was.

        Raises:
            InvalidArgumentError: the id belongs to another namespace, or no tier can hold the
                entry and no DiskStore is attached.
        """
        if not isinstance(entry, CacheEntry):
            raise InvalidArgumentError("entry", f"expected a CacheEntry, got {type(entry).__name__}")
        record = IndexRecord.from_entry(entry)
        with self._lock:
            old = self._slots.get(entry.entry_id)
            if old is not None and old.record.namespace != entry.namespace:
                raise InvalidArgumentError("entry", f"entry_id {entry.entry_id} is taken in another namespace")
            if self.disk is None and record.nbytes > max(self._budget.values()):
                raise InvalidArgumentError(
                    "entry",
                    f"its {record.nbytes} bytes fit neither the device tier ({self.device_bytes} bytes) nor the "
                    f"host tier ({self.host_bytes} bytes), and no DiskStore is attached",
                )
            if self.disk is not None:
                self.disk.write(entry)
            if old is not None:
                self._unplace(old)
            slot = _Slot(record, next(self._clock))
            slot.last_used = slot.seq
            self._slots[entry.entry_id] = slot
            self._admit(slot, entry)
        return entry.entry_id

    def get(self, entry_id: str, *, namespace: str = "default") -> CacheEntry:
        """A copy of the entry, its tensors on :attr:`device`; promotes it to the device tier,
        counts a hit.

        Raises:
            CacheMissError: no entry of this id in ``namespace`` (or its disk copy was corrupt).
        """
        with self._lock:
            slot = self._slot(entry_id, namespace)
            if slot.tier == "disk":
                try:
                    entry = self.disk.read(entry_id)
                except CacheMissError:
                    del self._slots[entry_id]
                    raise
            else:
                entry = slot.entry
            slot.hits += 1
            slot.last_used = next(self._clock)
            self._hits += 1
            if slot.tier != "device":
                self._unplace(slot)
                self._admit(slot, entry)
            # a copy: a caller writing into the returned tensors must not change the cache
            return (slot.entry if slot.tier == "device" else entry).to(self.device, copy=True)

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
            allowed = {check_namespace("namespace", namespace)}
        elif isinstance(namespaces, str) or not isinstance(namespaces, Iterable):
            raise InvalidArgumentError("namespaces", f"expected an iterable of namespaces, got {namespaces!r}")
        else:
            allowed = {check_namespace("namespaces", n) for n in namespaces}
        with self._lock:
            slots = [s for s in self._slots.values() if s.record.key == key and s.record.namespace in allowed]
        if not slots:
            return None
        dims = {s.record.embedding.numel() for s in slots}
        if dims != {query.numel()}:
            raise ShapeError("embedding", f"expected dimension {sorted(dims)}, got {query.numel()}")
        similarity = (torch.stack([s.record.embedding for s in slots]) @ query).tolist()
        best = max(range(len(slots)), key=lambda i: (similarity[i], slots[i].record.created, slots[i].seq))
        record = slots[best].record
        return Match(record.entry_id, record.namespace, record.prompt, similarity[best], record.steps)

    def remove(self, entry_id: str, *, namespace: str = "default") -> None:
        """Drop the entry from every tier, the DiskStore included (CacheMissError if absent)."""
        with self._lock:
            slot = self._slot(entry_id, namespace)
            if self.disk is not None and entry_id in self.disk:
                self.disk.delete(entry_id)
            self._unplace(slot)
            del self._slots[entry_id]

    def stats(self) -> CacheStats:
        with self._lock:
            tiers = [s.tier for s in self._slots.values()]
            return CacheStats(
                self._used["device"],
                self._used["host"],
                tiers.count("device"),
                tiers.count("host"),
                tiers.count("disk"),
                self._hits,
                self._evictions,
                self._demotions,
            )

    def _slot(self, entry_id: str, namespace: str) -> _Slot:
        check_namespace("namespace", namespace)
        slot = self._slots.get(entry_id)
        if slot is None or slot.record.namespace != namespace:
            raise CacheMissError(f"no entry {entry_id!r} in namespace {namespace!r}")
        return slot

    def _admit(self, slot: _Slot, entry: CacheEntry) -> None:
        """Place ``slot``'s entry in the highest tier it fits, then restore the budgets."""
        for tier in ("device", "host"):
            if slot.record.nbytes <= self._budget[tier]:
                self._place(slot, tier, entry)
                break
        self._fit("device", protect=slot)
        self._fit("host", protect=slot)

    def _place(self, slot: _Slot, tier: str, entry: CacheEntry) -> None:
        slot.entry = entry.to(self.device if tier == "device" else "cpu")
        slot.tier = tier
        self._used[tier] += slot.record.nbytes

    def _unplace(self, slot: _Slot) -> None:
        if slot.tier != "disk":
            self._used[slot.tier] -= slot.record.nbytes
        slot.tier, slot.entry = "disk", None

    def _fit(self, tier: str, *, protect: _Slot) -> None:
        """Move victims out of ``tier`` until it is within budget."""
        while self._used[tier] > self._budget[tier]:
            victim = min(
                (s for s in self._slots.values() if s.tier == tier and s is not protect),
                key=self._victim_order,
            )
            entry = victim.entry
            self._unplace(victim)
            if tier == "device" and victim.record.nbytes <= self.host_bytes:
                self._place(victim, "host", entry)
                self._demotions += 1
            else:
                self._evictions += 1
                if self.disk is None:
                    del self._slots[victim.record.entry_id]

    def _victim_order(self, slot: _Slot) -> tuple[float, int]:
        score = slot.hits * slot.record.benefit if self.eviction == "benefit" else 0.0
        return score, slot.last_used
