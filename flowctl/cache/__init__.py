"""The cross-prompt trajectory cache: complete entries, memory tiers, persistent stores (a local
directory, PostgreSQL), the similarity policy and cached generation."""

from .disk import DiskStore
from .entry import CacheEntry, CacheKey, CacheMissError
from .generator import CachedGenerator, GenerationResult, Lookup, PromptModel
from .persistent import CacheCorruptionWarning, Match, PersistentStore, open_store
from .policy import NIRVANA_POLICY, SEED_POLICY, Bucket, CachePolicy, Decision, get_policy
from .store import CacheStats, CacheStore

__all__ = [
    "CacheKey",
    "CacheEntry",
    "CacheMissError",
    "CacheStore",
    "CacheStats",
    "Match",
    "PersistentStore",
    "DiskStore",
    "PostgresStore",
    "open_store",
    "CacheCorruptionWarning",
    "CachePolicy",
    "Bucket",
    "Decision",
    "SEED_POLICY",
    "NIRVANA_POLICY",
    "get_policy",
    "CachedGenerator",
    "GenerationResult",
    "Lookup",
    "PromptModel",
]


def __getattr__(name: str):
    # PostgresStore needs the 'postgres' extra: imported on first use.
    if name == "PostgresStore":
        from .postgres import PostgresStore

        return PostgresStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
