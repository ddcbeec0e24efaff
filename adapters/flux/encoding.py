"""Prompts through FLUX's text encoders (CLIP-L's pooled output and T5's tokens), by the
pipeline's own ``encode_prompt``, so a condition is the one ``pipe(prompt=...)`` builds."""

from __future__ import annotations

from typing import Any

import torch

from flowctl._checks import check_int
from flowctl.errors import InvalidArgumentError
from flowctl.text import check_prompts

from flowctl.adapters.common import MissingTextEncoderError

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
