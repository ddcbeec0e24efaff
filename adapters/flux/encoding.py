"""Prompts through FLUX's text encoders (CLIP-L's pooled output and T5's tokens).

- :class:`FluxPromptEncoder`: a prompt -> :class:`FluxCondition` by the pipeline's own
  ``encode_prompt``, so a condition is the one ``pipe(prompt=...)`` builds.
- :class:`FluxPooledEncoder`: a :class:`flowctl.text.TextEncoder` whose embedding is FLUX's
  pooled CLIP embedding (the transformer's ``pooled_projections``), unit-normalised; it runs
  CLIP only, not T5.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from flowctl._checks import check_int
from flowctl.errors import InvalidArgumentError
from flowctl.text import check_prompts

from flowctl.adapters.common import MissingTextEncoderError, weight_checksum

from .condition import FluxCondition

TEXT_PARTS = ("tokenizer", "text_encoder", "tokenizer_2", "text_encoder_2")


def has_text_encoders(pipeline: Any) -> bool:
    """Whether the pipeline has its CLIP and T5 tokenizers and encoders."""
    return all(getattr(pipeline, part, None) is not None for part in TEXT_PARTS)


class FluxPromptEncoder:
    """A prompt's :class:`FluxCondition`, as ``FluxPipeline.__call__`` encodes it.

    Args:
        pipeline: a ``FluxPipeline`` with both text encoders and tokenizers.
        negative_prompt: the negative prompt for true CFG, or None for none (then conditions
            carry no negative embeddings, and true CFG is off, as in the pipeline).
        max_sequence_length: T5 tokens (the pipeline's default 512).

    Conditions come in the transformer's dtype and on its device.
    """

    def __init__(self, pipeline: Any, *, negative_prompt: str | None = None, max_sequence_length: int = 512):
        missing = [part for part in TEXT_PARTS if getattr(pipeline, part, None) is None]
        if missing:
            raise MissingTextEncoderError(
                f"FluxPromptEncoder needs the pipeline's CLIP and T5 encoders and tokenizers; missing: {', '.join(missing)}. "
                "Load the checkpoint with them, or pass prompt embeddings (FluxCondition) instead of prompts"
            )
        if negative_prompt is not None and not isinstance(negative_prompt, str):
            raise InvalidArgumentError("negative_prompt", f"expected a string or None, got {type(negative_prompt).__name__}")
        self.pipeline = pipeline
        self.negative_prompt = negative_prompt
        self.max_sequence_length = check_int("max_sequence_length", max_sequence_length, minimum=1)
        if self.max_sequence_length > 512:
            raise InvalidArgumentError("max_sequence_length", f"must be <= 512 (the pipeline's limit), got {max_sequence_length}")

    def encode(self, prompt: str) -> FluxCondition:
        (prompt,) = check_prompts([prompt])
        transformer = self.pipeline.transformer
        cast = lambda t: t.to(device=transformer.device, dtype=transformer.dtype)  # noqa: E731
        parts = []
        with torch.no_grad():
            for text in (prompt, self.negative_prompt):
                if text is None:
                    parts.extend([None] * 3)
                    continue
                embeds, pooled, ids = self.pipeline.encode_prompt(
                    prompt=text, prompt_2=None, device=transformer.device, num_images_per_prompt=1,
                    max_sequence_length=self.max_sequence_length,
                )
                parts.extend([cast(embeds), cast(pooled), cast(ids)])
        return FluxCondition(*parts)


class FluxPooledEncoder:
    """FLUX's pooled CLIP embedding as the cache's similarity key (a :class:`flowctl.text.TextEncoder`).

    ``encode(prompts)`` returns unit-norm float32 CPU rows of size ``dim`` (CLIP-L's hidden
    size: 768 for FLUX.1), the pooled output ``FluxPipeline.encode_prompt`` passes the
    transformer, normalised. Policy thresholds set with another encoder (all-MiniLM-L6-v2 for
    the shipped buckets) do not carry over to it.

    Args:
        pipeline: a ``FluxPipeline`` with its CLIP encoder and tokenizer (T5 is not used).
        name: identifies the checkpoint in :attr:`name`; by default a checksum of the CLIP
            encoder's weights.
    """

    def __init__(self, pipeline: Any, *, name: str | None = None):
        missing = [part for part in ("tokenizer", "text_encoder") if getattr(pipeline, part, None) is None]
        if missing:
            raise MissingTextEncoderError(f"FluxPooledEncoder needs the pipeline's CLIP encoder and tokenizer; missing: {', '.join(missing)}")
        if name is not None and (not isinstance(name, str) or not name.strip()):
            raise InvalidArgumentError("name", f"expected a non-empty string or None, got {name!r}")
        self.pipeline = pipeline
        self.dim = pipeline.text_encoder.config.hidden_size
        self.name = f"flux-pooled-clip:{name or weight_checksum(pipeline.text_encoder)}"

    def encode(self, prompts: Sequence[str]) -> torch.Tensor:
        prompts = list(check_prompts(prompts))
        p = self.pipeline
        # tokenised and encoded as the pipeline's _get_clip_prompt_embeds
        ids = p.tokenizer(prompts, padding="max_length", max_length=p.tokenizer_max_length, truncation=True, return_tensors="pt").input_ids
        with torch.no_grad():
            pooled = p.text_encoder(ids.to(p.text_encoder.device), output_hidden_states=False).pooler_output
        return torch.nn.functional.normalize(pooled.to("cpu", torch.float32), dim=1)

    def __repr__(self) -> str:
        return f"FluxPooledEncoder(name={self.name!r}, dim={self.dim})"
