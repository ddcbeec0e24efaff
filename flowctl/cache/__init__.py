"""The cross-prompt trajectory cache: complete entries, memory tiers, a persistent store, the
similarity policy and cached generation."""

from .disk import CacheCorruptionWarning, DiskStore
from .entry import CacheEntry, CacheKey, CacheMissError
from .generator import CachedGenerator, GenerationResult, Lookup, PromptModel
from .policy import NIRVANA_POLICY, SEED_POLICY, Bucket, CachePolicy, Decision, get_policy
from .store import CacheStats, CacheStore, Match

__all__ = [
    "CacheKey",
    "CacheEntry",
    "CacheMissError",
    "CacheStore",
    "CacheStats",
    "Match",
    "DiskStore",
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
