"""One prompt's condition for SD3's MMDiT (its embeddings and guidance), and the weight checksum
that names a model in fingerprints."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from flowctl._checks import check_int, check_real, check_tensor
from flowctl.errors import InvalidArgumentError, ShapeError


@dataclass(frozen=True, eq=False)
class SD3Condition:
    """One prompt's condition for the MMDiT, with its guidance.

    Attributes:
        prompt_embeds: (B, T, joint_attention_dim), the joint CLIP + T5 token embeddings.
        pooled_prompt_embeds: (B, pooled_projection_dim), the pooled CLIP embeddings.
        negative_prompt_embeds: as ``prompt_embeds``, for the negative prompt; None for no
            guidance. Unused, as in the pipeline, when ``guidance_scale <= 1``.
        negative_pooled_prompt_embeds: as ``pooled_prompt_embeds``, for the negative prompt.
        guidance_scale: classifier-free guidance scale; guidance is on when it is > 1.
        encoder_hidden_states, pooled_projections: derived, the transformer's text inputs
            (``[negative, positive]`` concatenated under guidance, as the pipeline does once
            before its loop).

    All tensors share one dtype and device (the transformer's, when used).
    """

    prompt_embeds: torch.Tensor
    pooled_prompt_embeds: torch.Tensor
    negative_prompt_embeds: torch.Tensor | None = None
    negative_pooled_prompt_embeds: torch.Tensor | None = None
    guidance_scale: float = 1.0
    encoder_hidden_states: torch.Tensor = field(init=False, repr=False)
    pooled_projections: torch.Tensor = field(init=False, repr=False)

    def __post_init__(self) -> None:
        pe = check_tensor("prompt_embeds", self.prompt_embeds)
        pooled = check_tensor("pooled_prompt_embeds", self.pooled_prompt_embeds)
        if pe.dim() != 3:
            raise ShapeError("prompt_embeds", f"expected (batch, tokens, dim), got {tuple(pe.shape)}")
        if pooled.dim() != 2 or pooled.shape[0] != pe.shape[0]:
            raise ShapeError("pooled_prompt_embeds", f"expected ({pe.shape[0]}, dim), got {tuple(pooled.shape)}")
        negatives = (self.negative_prompt_embeds, self.negative_pooled_prompt_embeds)
        if (negatives[0] is None) != (negatives[1] is None):
            raise InvalidArgumentError("negative_prompt_embeds", "give both negative embeddings or neither")
        tensors = {"prompt_embeds": pe, "pooled_prompt_embeds": pooled}
        if negatives[0] is not None:
            for name, neg, pos in zip(("negative_prompt_embeds", "negative_pooled_prompt_embeds"), negatives, (pe, pooled)):
                if check_tensor(name, neg).shape != pos.shape:
                    raise ShapeError(name, f"shape {tuple(neg.shape)} does not match the positive one's {tuple(pos.shape)}")
                tensors[name] = neg
        for name, t in tensors.items():
            if t.dtype != pe.dtype or t.device != pe.device:
                raise InvalidArgumentError(name, f"is {t.dtype} on {t.device}; prompt_embeds is {pe.dtype} on {pe.device}")
        scale = check_real("guidance_scale", self.guidance_scale)
        object.__setattr__(self, "guidance_scale", scale)
        if scale > 1 and negatives[0] is None:
            raise InvalidArgumentError(
                "negative_prompt_embeds", f"required for classifier-free guidance (guidance_scale {scale:g} > 1)"
            )
        # The pipeline concatenates once, before its loop: [negative, positive].
        hidden, pooled_in = (torch.cat([negatives[0], pe]), torch.cat([negatives[1], pooled])) if scale > 1 else (pe, pooled)
        object.__setattr__(self, "encoder_hidden_states", hidden)
        object.__setattr__(self, "pooled_projections", pooled_in)

    def repeat(self, n: int) -> SD3Condition:
        """This condition for ``n`` latents per prompt (the pipeline's ``num_images_per_prompt``
        layout: each prompt's rows repeated ``n`` times in place)."""
        n = check_int("n", n, minimum=1)
        rep = lambda t: None if t is None else t.repeat_interleave(n, dim=0)  # noqa: E731
        return SD3Condition(rep(self.prompt_embeds), rep(self.pooled_prompt_embeds), rep(self.negative_prompt_embeds),
                            rep(self.negative_pooled_prompt_embeds), self.guidance_scale)

    @property
    def guided(self) -> bool:
        """Whether classifier-free guidance is on (``guidance_scale > 1``, as in the pipeline)."""
        return self.guidance_scale > 1

    @property
    def batch(self) -> int:
        return self.prompt_embeds.shape[0]

    @property
    def dtype(self) -> torch.dtype:
        return self.prompt_embeds.dtype

    @property
    def device(self) -> torch.device:
        return self.prompt_embeds.device
