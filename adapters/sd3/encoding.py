"""Prompts through SD3's text encoders: the MMDiT's condition, and the cache's similarity key.

- :class:`SD3PromptEncoder`: a prompt -> :class:`SD3Condition`, through the pipeline's own
  ``encode_prompt`` (CLIP-L, CLIP-G and T5, or zeros for T5 when the pipeline has none), so the
  condition is the one ``pipe(prompt=...)`` builds.
- :class:`SD3PooledEncoder`: a :class:`flowctl.text.TextEncoder` whose embedding is SD3's pooled
  CLIP embedding (CLIP-L's and CLIP-G's projected pooled outputs, concatenated, as the pipeline
  builds ``pooled_prompt_embeds``), unit-normalised. It runs the two CLIP encoders only, not T5.
- :class:`MiniLMPromptEncoder`: a prompt -> :class:`SD3Condition` through all-MiniLM-L6-v2, the
  conditioning of the embedded shapes model (:mod:`flowctl.adapters.sd3.embedded`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from flowctl.adapters.common import MissingTextEncoderError, weight_checksum
from flowctl._checks import check_int, check_real
from flowctl.errors import InvalidArgumentError
from flowctl.text import MiniLMEncoder, check_prompts

from .condition import SD3Condition

CLIP_PARTS = ("tokenizer", "text_encoder", "tokenizer_2", "text_encoder_2")


def has_text_encoders(pipeline: Any) -> bool:
    """Whether the pipeline has both CLIP tokenizers and encoders (T5 is optional)."""
    return all(getattr(pipeline, part, None) is not None for part in CLIP_PARTS)


def _require_text_encoders(pipeline: Any, what: str) -> None:
    missing = [part for part in CLIP_PARTS if getattr(pipeline, part, None) is None]
    if missing:
        raise MissingTextEncoderError(
            f"{what} needs the pipeline's CLIP text encoders and tokenizers; missing: {', '.join(missing)}. "
            "Load the checkpoint with them, or pass prompt embeddings (SD3Condition) instead of prompts"
        )


class SD3PromptEncoder:
    """A prompt's :class:`SD3Condition`, as ``StableDiffusion3Pipeline.__call__`` encodes it.

    Args:
        pipeline: a ``StableDiffusion3Pipeline`` with its CLIP encoders (T5 may be None).
        guidance_scale: classifier-free guidance scale of the conditions (on when > 1).
        negative_prompt: the negative prompt used with guidance (the pipeline's default "").
        max_sequence_length: T5 tokens (the pipeline's default 256).

    Conditions come in the transformer's dtype and on its device.
    """

    def __init__(self, pipeline: Any, *, guidance_scale: float = 7.0, negative_prompt: str = "", max_sequence_length: int = 256):
        _require_text_encoders(pipeline, "SD3PromptEncoder")
        if not isinstance(negative_prompt, str):
            raise InvalidArgumentError("negative_prompt", f"expected a string, got {type(negative_prompt).__name__}")
        self.pipeline = pipeline
        self.guidance_scale = check_real("guidance_scale", guidance_scale)
        self.negative_prompt = negative_prompt
        self.max_sequence_length = check_int("max_sequence_length", max_sequence_length, minimum=1)

    def encode(self, prompt: str) -> SD3Condition:
        (prompt,) = check_prompts([prompt])
        transformer = self.pipeline.transformer
        guided = self.guidance_scale > 1
        with torch.no_grad():
            pe, npe, ppe, nppe = self.pipeline.encode_prompt(
                prompt=prompt, prompt_2=None, prompt_3=None, device=transformer.device,
                do_classifier_free_guidance=guided, negative_prompt=self.negative_prompt if guided else None,
                max_sequence_length=self.max_sequence_length,
            )
        cast = lambda t: None if t is None else t.to(device=transformer.device, dtype=transformer.dtype)  # noqa: E731
        return SD3Condition(cast(pe), cast(ppe), cast(npe), cast(nppe), self.guidance_scale)


class SD3PooledEncoder:
    """SD3's pooled CLIP embedding as the cache's similarity key (a :class:`flowctl.text.TextEncoder`).

    ``encode(prompts)`` returns unit-norm float32 CPU rows of size ``dim`` (CLIP-L's projection
    size plus CLIP-G's: 768 + 1280 = 2048 for SD3). Policy thresholds set with another encoder
    (all-MiniLM-L6-v2 for the shipped buckets) do not carry over to it.

    Args:
        pipeline: a ``StableDiffusion3Pipeline`` with its two CLIP encoders and tokenizers.
        name: identifies the checkpoint in :attr:`name`; by default a checksum of the two
            CLIP encoders' weights.
    """

    def __init__(self, pipeline: Any, *, name: str | None = None):
        _require_text_encoders(pipeline, "SD3PooledEncoder")
        if name is not None and (not isinstance(name, str) or not name.strip()):
            raise InvalidArgumentError("name", f"expected a non-empty string or None, got {name!r}")
        self.pipeline = pipeline
        self.dim = pipeline.text_encoder.config.projection_dim + pipeline.text_encoder_2.config.projection_dim
        label = name or weight_checksum(pipeline.text_encoder) + weight_checksum(pipeline.text_encoder_2)
        self.name = f"sd3-pooled-clip:{label}"

    def encode(self, prompts: Sequence[str]) -> torch.Tensor:
        prompts = list(check_prompts(prompts))
        p = self.pipeline
        with torch.no_grad():
            pooled = [self._pooled(tok, enc, prompts) for tok, enc in ((p.tokenizer, p.text_encoder), (p.tokenizer_2, p.text_encoder_2))]
        return torch.nn.functional.normalize(torch.cat(pooled, dim=-1).to("cpu", torch.float32), dim=1)

    def _pooled(self, tokenizer: Any, encoder: Any, prompts: list[str]) -> torch.Tensor:
        """The projected pooled output, tokenised as the pipeline's ``_get_clip_prompt_embeds``."""
        ids = tokenizer(prompts, padding="max_length", max_length=self.pipeline.tokenizer_max_length, truncation=True, return_tensors="pt").input_ids
        return encoder(ids.to(encoder.device), output_hidden_states=True)[0]

    def __repr__(self) -> str:
        return f"SD3PooledEncoder(name={self.name!r}, dim={self.dim})"


class MiniLMPromptEncoder:
    """A prompt's :class:`SD3Condition` from all-MiniLM-L6-v2, as the embedded model was trained
    (``python -m flowctl.adapters.sd3.train``): token embeddings are MiniLM's last hidden states,
    zero at and zero-padded to ``tokens`` positions; pooled is the unit sentence embedding
    (:meth:`flowctl.text.MiniLMEncoder.encode_tokens`). The negative prompt under guidance is
    encoded the same way ("" is the unconditional condition the model was trained with).

    Args:
        encoder: the MiniLM encoder (shared with the cache's similarity look-up).
        tokens: text positions the transformer was trained with.
        guidance_scale: classifier-free guidance scale of the conditions (on when > 1).
        negative_prompt: the negative prompt under guidance.
        dtype, device: of the conditions (the transformer's).
    """

    def __init__(self, encoder: MiniLMEncoder, *, tokens: int, guidance_scale: float, negative_prompt: str = "",
                 dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu"):
        if not isinstance(negative_prompt, str):
            raise InvalidArgumentError("negative_prompt", f"expected a string, got {type(negative_prompt).__name__}")
        self.encoder = encoder
        self.tokens = check_int("tokens", tokens, minimum=1)
        self.guidance_scale = check_real("guidance_scale", guidance_scale)
        self.negative_prompt = negative_prompt
        self.dtype, self.device = dtype, torch.device(device)
        self._negative: tuple[torch.Tensor, torch.Tensor] | None = None

    def _cast(self, t: torch.Tensor) -> torch.Tensor:
        return t.to(device=self.device, dtype=self.dtype)

    def encode(self, prompt: str) -> SD3Condition:
        return self.encode_many([prompt])

    def encode_many(self, prompts: Sequence[str]) -> SD3Condition:
        """One condition row per prompt, in order (a batch of different prompts)."""
        prompts = check_prompts(prompts)
        tok, pooled = (self._cast(t) for t in self.encoder.encode_tokens(list(prompts), self.tokens))
        if self.guidance_scale <= 1:
            return SD3Condition(tok, pooled, guidance_scale=self.guidance_scale)
        if self._negative is None:
            self._negative = tuple(self._cast(t) for t in self.encoder.encode_tokens([self.negative_prompt], self.tokens))
        negative = (t.expand(len(prompts), *t.shape[1:]) for t in self._negative)
        return SD3Condition(tok, pooled, *negative, guidance_scale=self.guidance_scale)
