"""What ``flowctl cache list|inspect|clear`` shows of a persistent store, as plain data."""

from __future__ import annotations

import datetime
from .entry import CacheEntry, IndexRecord


def summary(record: IndexRecord) -> dict:
    """One entry's description from the index (no tensor is read)."""
    key = record.key
    return {
        "id": record.entry_id,
        "namespace": record.namespace,
        "prompt": record.prompt,
        "model": key.model,
        "encoder": key.encoder,
        "steps": key.steps,
        "shift": key.shift,
        "mu": key.mu,
        "guidance": key.guidance,
        "shape": list(key.shape),
        "dtype": key.dtype,
        "cached_steps": list(record.steps),
        "bytes": record.nbytes,
        "created": datetime.datetime.fromtimestamp(record.created, datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def describe(entry: CacheEntry) -> dict:
    """Everything a resume uses: sigma, model timestep and step size at each cached step (sigma
    = 1 is noise, 0 is data), and what is stored besides the latents."""
    steps = {
        str(k): {"sigma": float(entry.sigma(k)), "timestep": float(entry.timestep(k)), "dt": float(entry.dt(k))}
        for k in entry.cached_steps
    }
    return summary(IndexRecord.from_entry(entry)) | {
        "at_steps": steps,
        "noise_shape": list(entry.noise.shape),
        "generator_state": entry.generator_state is not None,
    }
