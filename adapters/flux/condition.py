"""One prompt's condition for FLUX.1's transformer: T5 token embeddings, the pooled CLIP
embedding, the text position ids, and optionally the negative prompt's for true CFG."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from flowctl._checks import check_int, check_tensor
from flowctl.errors import InvalidArgumentError, ShapeError


@dataclass(frozen=True, eq=False)
class FluxCondition:
    """The transformer's text inputs for a batch of B latents.

    Attributes:
        prompt_embeds: (B, L, joint_attention_dim), T5's token embeddings (4096 for FLUX.1).
        pooled_prompt_embeds: (B, pooled_projection_dim), CLIP's pooled output (768 for FLUX.1).
        text_ids: (L, 3) text position ids; None for the pipeline's zeros (in prompt_embeds'
            dtype, on its device).
        negative_prompt_embeds, negative_pooled_prompt_embeds, negative_text_ids: the negative
            prompt's, for true classifier-free guidance (used only when the dynamics'
            ``true_cfg_scale > 1``, as the pipeline's ``do_true_cfg``); None for none. The
            embeddings must have the positive ones' shapes (the pipeline requires it).

    All embeddings share one dtype and device (the transformer's, when used).
    """

    prompt_embeds: torch.Tensor
    pooled_prompt_embeds: torch.Tensor
    text_ids: torch.Tensor | None = None
    negative_prompt_embeds: torch.Tensor | None = None
    negative_pooled_prompt_embeds: torch.Tensor | None = None
    negative_text_ids: torch.Tensor | None = None

    def __post_init__(self) -> None:
        pe = check_tensor("prompt_embeds", self.prompt_embeds)
        pooled = check_tensor("pooled_prompt_embeds", self.pooled_prompt_embeds)
        if pe.dim() != 3:
            raise ShapeError("prompt_embeds", f"expected (batch, tokens, dim), got {tuple(pe.shape)}")
        if pooled.dim() != 2 or pooled.shape[0] != pe.shape[0]:
            raise ShapeError("pooled_prompt_embeds", f"expected ({pe.shape[0]}, dim), got {tuple(pooled.shape)}")
        tensors = {"prompt_embeds": pe, "pooled_prompt_embeds": pooled}
        negatives = (self.negative_prompt_embeds, self.negative_pooled_prompt_embeds)
        if (negatives[0] is None) != (negatives[1] is None):
            raise InvalidArgumentError("negative_prompt_embeds", "give both negative embeddings or neither")
        if negatives[0] is None and self.negative_text_ids is not None:
            raise InvalidArgumentError("negative_text_ids", "given without negative embeddings")
        if negatives[0] is not None:
            for name, neg, pos in zip(("negative_prompt_embeds", "negative_pooled_prompt_embeds"), negatives, (pe, pooled)):
                if check_tensor(name, neg).shape != pos.shape:
                    raise ShapeError(name, f"shape {tuple(neg.shape)} does not match the positive one's {tuple(pos.shape)}")
                tensors[name] = neg
        for name, t in tensors.items():
            if t.dtype != pe.dtype or t.device != pe.device:
                raise InvalidArgumentError(name, f"is {t.dtype} on {t.device}; prompt_embeds is {pe.dtype} on {pe.device}")
        object.__setattr__(self, "text_ids", _text_ids("text_ids", self.text_ids, pe))
        if negatives[0] is not None:
            object.__setattr__(self, "negative_text_ids", _text_ids("negative_text_ids", self.negative_text_ids, negatives[0]))

    @property
    def has_negative(self) -> bool:
        """Whether the negative prompt's embeddings are given (true CFG is possible)."""
        return self.negative_prompt_embeds is not None

    @property
    def batch(self) -> int:
        return self.prompt_embeds.shape[0]

    @property
    def dtype(self) -> torch.dtype:
        return self.prompt_embeds.dtype

    @property
    def device(self) -> torch.device:
        return self.prompt_embeds.device

    def repeat(self, n: int) -> FluxCondition:
        """This condition for ``n`` latents per prompt (the pipeline's ``num_images_per_prompt``
        layout for encoded prompts: each prompt's rows repeated ``n`` times in place)."""
        n = check_int("n", n, minimum=1)
        rep = lambda t: None if t is None else t.repeat_interleave(n, dim=0)  # noqa: E731
        return FluxCondition(
            rep(self.prompt_embeds), rep(self.pooled_prompt_embeds), self.text_ids,
            rep(self.negative_prompt_embeds), rep(self.negative_pooled_prompt_embeds), self.negative_text_ids,
        )


def _text_ids(name: str, ids: torch.Tensor | None, embeds: torch.Tensor) -> torch.Tensor:
    """``ids`` checked against ``embeds`` (L tokens), or the pipeline's zeros (L, 3)."""
    if ids is None:
        return torch.zeros(embeds.shape[1], 3).to(device=embeds.device, dtype=embeds.dtype)
    ids = check_tensor(name, ids)
    if ids.dim() == 3 and ids.shape[0] >= 1:  # the deprecated batched form: the transformer takes ids[0]
        ids = ids[0]
    if ids.shape != (embeds.shape[1], 3):
        raise ShapeError(name, f"expected ({embeds.shape[1]}, 3) position ids for {embeds.shape[1]} tokens, got {tuple(ids.shape)}")
    if ids.device != embeds.device:
        raise InvalidArgumentError(name, f"is on {ids.device}, the embeddings on {embeds.device}")
    return ids
