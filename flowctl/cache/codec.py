"""An entry as bytes: the one stored format of both persistent stores.

The bytes are a safetensors file: tensors ``state.<step>``, ``velocity.<step>`` (where kept),
``noise``, ``embedding`` and, if kept, ``generator_state``; metadata ``format``, ``entry``
(canonical JSON: id, namespace, prompt, created, nbytes and the key, whose settings determine
the sigma grid: it is rebuilt from them, not stored) and ``mac``: ``"sha256:<hex>"``, or ``"hmac-sha256:<hex>"`` when the store has a
secret, over the format, the metadata JSON and every tensor's name, dtype, shape and bytes. So
an edited prompt, namespace, embedding, grid or latent fails verification, and with a secret
nobody without it can forge an entry that passes.

Files of the previous format (``flowctl.cache/1``: a sha256 over the tensors only) are read by
:func:`decode_legacy`, for converting an old cache directory.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from dataclasses import dataclass
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load, save

from ..errors import FlowctlError, InvalidArgumentError
from .entry import CacheEntry, CacheKey

FORMAT = "flowctl.cache/2"
LEGACY_FORMAT = "flowctl.cache/1"


class IntegrityError(Exception):
    """The bytes are not a valid entry of this store: unparsable, another format, a checksum or
    HMAC that does not match, or content that fails validation. A verified mismatch: the
    stores quarantine the entry."""


@dataclass(frozen=True)
class Encoded:
    """An entry's bytes and their ``mac`` (as stored in the metadata, ``kind:hex``)."""

    data: bytes
    mac: str


def resolve_secret(secret: bytes | str | None) -> bytes | None:
    """A store's secret as bytes: ``secret``, else the environment variable
    ``FLOWCTL_CACHE_SECRET`` if set, else None (entries get a plain sha256 checksum)."""
    if secret is None:
        secret = os.environ.get("FLOWCTL_CACHE_SECRET") or None
    if secret is None:
        return None
    if isinstance(secret, str):
        secret = secret.encode()
    if not isinstance(secret, bytes) or not secret:
        raise InvalidArgumentError("secret", "expected non-empty bytes or text")
    return secret


def secret_check(secret: bytes | None) -> str | None:
    """A value that identifies ``secret`` without revealing it (stores keep it, so that opening
    with another secret, or none, is refused instead of quarantining every entry)."""
    return None if secret is None else hmac.new(secret, b"flowctl.cache key check", hashlib.sha256).hexdigest()


def encode(entry: CacheEntry, secret: bytes | None) -> Encoded:
    """``entry`` as bytes, signed with ``secret`` (an HMAC) or checksummed (sha256) without."""
    tensors = _cpu_tensors(entry)
    meta = json.dumps(
        {
            "entry_id": entry.entry_id,
            "namespace": entry.namespace,
            "prompt": entry.prompt,
            "created": entry.created,
            "nbytes": entry.nbytes,
            "key": entry.key.to_json(),
        },
        sort_keys=True,
        separators=(",", ":"),
    )
    mac = _mac(meta, tensors, secret)
    return Encoded(save(tensors, metadata={"format": FORMAT, "entry": meta, "mac": mac}), mac)


def decode(data: bytes, secret: bytes | None, *, entry_id: str | None = None) -> CacheEntry:
    """The entry ``data`` encodes, verified against ``secret`` (and ``entry_id`` if given).

    Raises:
        IntegrityError: see the class.
    """
    metadata, tensors = _parse(data)
    if metadata.get("format") != FORMAT:
        raise IntegrityError(f"format {metadata.get('format')!r} is not {FORMAT!r}")
    meta_json, mac = metadata.get("entry"), metadata.get("mac")
    if not isinstance(meta_json, str) or not isinstance(mac, str):
        raise IntegrityError("the metadata lacks 'entry' or 'mac'")
    kind = mac.partition(":")[0]
    if secret is not None and kind != "hmac-sha256":
        raise IntegrityError(f"the store has a secret but the entry is signed {kind!r}, not with an HMAC")
    if secret is None and kind != "sha256":
        raise IntegrityError(f"the entry is signed {kind!r}; the store has no secret to check it")
    if not hmac.compare_digest(_mac(meta_json, tensors, secret), mac):
        raise IntegrityError("the checksum does not match the metadata and tensors" + (" (HMAC)" if secret else ""))
    return _entry(json.loads(meta_json), tensors, entry_id)


def decode_legacy(data: bytes, *, entry_id: str | None = None) -> CacheEntry:
    """The entry of a ``flowctl.cache/1`` file, its tensor checksum verified (IntegrityError)."""
    metadata, tensors = _parse(data)
    if metadata.get("format") != LEGACY_FORMAT:
        raise IntegrityError(f"format {metadata.get('format')!r} is not {LEGACY_FORMAT!r}")
    h = hashlib.sha256()
    _update(h, tensors)
    if not hmac.compare_digest(h.hexdigest(), str(metadata.get("sha256"))):
        raise IntegrityError("the tensors do not match their sha256 digest")
    try:
        meta = json.loads(metadata["entry"])
    except (KeyError, ValueError) as error:
        raise IntegrityError(f"unreadable metadata: {error}") from None
    return _entry(meta, tensors, entry_id)


def _parse(data: bytes) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    try:
        tensors = load(data)
        header_size = int.from_bytes(data[:8], "little")
        metadata = json.loads(data[8 : 8 + header_size]).get("__metadata__") or {}
    except (SafetensorError, ValueError, TypeError, AttributeError) as error:
        raise IntegrityError(f"not a safetensors file: {error}") from None
    return metadata, tensors


def _entry(meta: Any, tensors: dict[str, torch.Tensor], entry_id: str | None) -> CacheEntry:
    try:
        if entry_id is not None and meta["entry_id"] != entry_id:
            raise IntegrityError(f"the bytes hold entry {meta['entry_id']!r}, not {entry_id!r}")
        states = {int(n.removeprefix("state.")): x for n, x in tensors.items() if n.startswith("state.")}
        velocities = {int(n.removeprefix("velocity.")): v for n, v in tensors.items() if n.startswith("velocity.")}
        return CacheEntry(
            CacheKey.from_json(meta["key"]),
            meta["prompt"],
            tensors["embedding"],
            states,
            tensors["noise"],
            tensors.get("generator_state"),
            velocities,
            meta["namespace"],
            meta["entry_id"],
            meta["created"],
        )
    except (KeyError, TypeError, ValueError, AttributeError, FlowctlError) as error:
        raise IntegrityError(f"invalid entry: {type(error).__name__}: {error}") from None


def _mac(meta_json: str, tensors: dict[str, torch.Tensor], secret: bytes | None) -> str:
    h = hashlib.sha256() if secret is None else hmac.new(secret, digestmod=hashlib.sha256)
    h.update(f"{FORMAT}\0{meta_json}\0".encode())
    _update(h, tensors)
    return f"{'sha256' if secret is None else 'hmac-sha256'}:{h.hexdigest()}"


def _update(h: Any, tensors: dict[str, torch.Tensor]) -> None:
    """Feed the tensors' names, dtypes, shapes and bytes to ``h``, in name order."""
    for name in sorted(tensors):
        x = tensors[name].contiguous()
        h.update(f"{name}:{x.dtype}:{tuple(x.shape)};".encode())
        h.update(x.reshape(-1).view(torch.uint8).numpy())


def _cpu_tensors(entry: CacheEntry) -> dict[str, torch.Tensor]:
    """The entry's tensors by stored name, on the CPU, contiguous and sharing no memory."""
    named = {f"state.{k}": x for k, x in entry.states.items()}
    named.update({f"velocity.{k}": v for k, v in entry.velocities.items()})
    named.update(noise=entry.noise, embedding=entry.embedding)
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
