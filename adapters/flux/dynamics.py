"""FLUX.1's transformer as a flowctl dynamics: the velocity exactly as ``FluxPipeline`` computes it.

Conventions (docs/conventions.md): ``t`` is sigma, ``sigma = 1`` is pure noise and ``sigma = 0``
is data. States are UNPACKED latents ``(B, C, H, W)`` (C = ``in_channels / 4``, H and W even) in
the transformer's dtype and on its device, like SD3's, so the cache, strategies and metrics see
image-shaped states; each call packs them into 2x2 patch tokens, runs the transformer, and
unpacks the velocity (a permutation: no bit changes).

What the pipeline does, and so this does, bit for bit:

- the timestep: the scheduler's float32 ``timesteps`` are ``sigmas * num_train_timesteps``; the
  pipeline casts one to the latents' dtype and passes ``timestep / 1000`` (in that dtype), which
  the transformer multiplies by 1000 again. ``(sigma * 1000) / 1000`` is not always ``sigma`` in
  float32, so the same operations are done here, not a shortcut;
- the embedded guidance (FLUX.1-dev, ``transformer.config.guidance_embeds``): a float32
  ``torch.full([1], guidance_scale)`` expanded to the batch; None for models without it
  (FLUX.1-schnell), where ``guidance_scale`` is ignored, as the pipeline ignores it;
- true classifier-free guidance, on when ``true_cfg_scale > 1`` and the condition carries
  negative embeddings (the pipeline's ``do_true_cfg``): two transformer calls, positive then
  negative (not one batch of 2B), and ``neg + true_cfg_scale * (pos - neg)``;
- position ids: zeros for the text tokens, (0, row, column) per patch, in the embeddings' dtype.
"""

from __future__ import annotations

from typing import Any

import torch

from flowctl._checks import check_int, check_real, check_tensor
from flowctl.errors import InvalidArgumentError, ShapeError

from flowctl.adapters.common import MissingTextEncoderError, TransformerField, check_on_transformer, check_text_condition

from .condition import FluxCondition
from .encoding import FluxPromptEncoder, has_text_encoders
from .latents import latent_image_ids, pack_latents, unpack_latents

__all__ = ["FluxDynamics"]

TIMESTEP_SCALE = 1000
"""The pipeline passes ``timestep / 1000`` (a literal, not ``num_train_timesteps``)."""


class FluxDynamics(TransformerField):
    """``velocity(x, sigma, cond)``: a FLUX.1 transformer, with its embedded guidance and
    optional true classifier-free guidance, as ``FluxPipeline`` runs it.

    One call is one model evaluation (with true CFG it runs the transformer twice, on B each).
    Gradients flow to the latents only: the transformer runs without autograd unless ``x``
    requires grad; forward-mode AD needs :func:`math_attention` (:meth:`derivatives` enters it).
    The transformer must sit on one device; latents and embeddings must be in its dtype, on that device.

    Args:
        transformer: a diffusers ``FluxTransformer2DModel`` (``in_channels = 4 x`` the latent
            channels, ``out_channels`` equal to it).
        guidance_scale: the embedded guidance (the pipeline's ``guidance_scale``, default 3.5);
            used only when ``transformer.config.guidance_embeds``.
        true_cfg_scale: true classifier-free guidance scale (the pipeline's ``true_cfg_scale``);
            on when > 1 and the condition has negative embeddings.
        name: a label for the model (reports); the cache identity is :attr:`fingerprint`.
        prompts: turns a prompt into its condition (:class:`FluxPromptEncoder`); None when the
            pipeline has no text encoders (pass :class:`FluxCondition` s built from embeddings).
        num_train_timesteps: the scheduler's; its timesteps are ``sigma * num_train_timesteps``.
    """

    def __init__(
        self,
        transformer: Any,
        *,
        guidance_scale: float = 3.5,
        true_cfg_scale: float = 1.0,
        name: str = "flux",
        prompts: FluxPromptEncoder | None = None,
        num_train_timesteps: int = 1000,
    ):
        config = getattr(transformer, "config", None)
        if not isinstance(transformer, torch.nn.Module) or config is None or not hasattr(config, "guidance_embeds"):
            raise InvalidArgumentError("transformer", f"expected a diffusers FluxTransformer2DModel, got {type(transformer).__name__}")
        if config.in_channels % 4 or (config.out_channels or config.in_channels) != config.in_channels:
            raise InvalidArgumentError(
                "transformer", f"in_channels {config.in_channels} must be 4 x the latent channels and equal out_channels {config.out_channels}"
            )
        if not isinstance(name, str) or not name.strip():
            raise InvalidArgumentError("name", f"expected a non-empty string, got {name!r}")
        self.transformer = transformer
        self.guidance_scale = check_real("guidance_scale", guidance_scale)
        self.true_cfg_scale = check_real("true_cfg_scale", true_cfg_scale)
        self.name = name
        self.prompts = prompts
        self.num_train_timesteps = check_int("num_train_timesteps", num_train_timesteps, minimum=1)
        self._start_checksum()

    @classmethod
    def from_pipeline(
        cls,
        pipeline: Any,
        *,
        guidance_scale: float = 3.5,
        true_cfg_scale: float = 1.0,
        negative_prompt: str | None = None,
        max_sequence_length: int = 512,
        name: str = "flux",
    ) -> FluxDynamics:
        """The pipeline's transformer, with prompt encoding through its text encoders when it has
        them (the arguments as in ``pipe()``; the negative prompt is encoded only when true CFG
        is on, as the pipeline does)."""
        negative = negative_prompt if check_real("true_cfg_scale", true_cfg_scale) > 1 else None
        prompts = (
            FluxPromptEncoder(pipeline, negative_prompt=negative, max_sequence_length=max_sequence_length)
            if has_text_encoders(pipeline) else None
        )
        return cls(
            pipeline.transformer, guidance_scale=guidance_scale, true_cfg_scale=true_cfg_scale, name=name,
            prompts=prompts, num_train_timesteps=pipeline.scheduler.config.num_train_timesteps,
        )

    @property
    def latent_channels(self) -> int:
        """C of the (B, C, H, W) states: the transformer's ``in_channels / 4``."""
        return self.transformer.config.in_channels // 4

    @property
    def guidance_embedded(self) -> bool:
        """Whether the model takes the guidance scale as an input (FLUX.1-dev; not schnell)."""
        return bool(self.transformer.config.guidance_embeds)

    @property
    def guidance(self) -> float:
        """The guidance scale the field runs with (a cache key's ``guidance``): the embedded
        guidance on a model that takes it, else the true CFG scale (1: unguided)."""
        return self.guidance_scale if self.guidance_embedded else self.true_cfg_scale

    FINGERPRINT_PREFIX = "flux-dit"

    @property
    def fingerprint(self) -> str:
        """The velocity field's identity for cache keys: the transformer's config, weights and
        dtype (:meth:`TransformerField._model_id`), and the settings that change the field (the
        embedded guidance scale when the model uses it, the true CFG scale when > 1)."""
        parts = [self._model_id()]
        if self.guidance_embedded:
            parts.append(f"guidance{self.guidance_scale!r}")
        if self.true_cfg_scale > 1:
            parts.append(f"truecfg{self.true_cfg_scale!r}")
        return "-".join(parts)

    def condition(self, prompt: str) -> FluxCondition:
        """The condition of ``prompt`` through the pipeline's text encoders."""
        if self.prompts is None:
            raise MissingTextEncoderError(
                "this FluxDynamics has no text encoders (the pipeline was loaded without them): "
                "pass a FluxCondition built from prompt_embeds and pooled_prompt_embeds instead of a prompt"
            )
        return self.prompts.encode(prompt)

    def true_cfg(self, cond: FluxCondition) -> bool:
        """Whether a call with ``cond`` runs true CFG (``true_cfg_scale > 1`` and negatives given)."""
        return self.true_cfg_scale > 1 and cond.has_negative

    def velocity(self, x: torch.Tensor, t: float | torch.Tensor, cond: FluxCondition) -> torch.Tensor:
        """The velocity ``v = eps - x0`` at sigma ``t`` (float or 0-dim tensor), (B, C, H, W).

        Shapes, dtypes and devices are checked on every call, before the transformer runs (no
        device synchronisation); finiteness is checked where a run starts."""
        if not isinstance(cond, FluxCondition):
            raise InvalidArgumentError("cond", f"expected a FluxCondition, got {type(cond).__name__}")
        self._check_latents(x)
        self._check_condition(cond, x.shape[0])
        sigma = self._sigma(t, x)
        batch, _, height, width = x.shape
        packed = pack_latents(x)
        image_ids = latent_image_ids(height // 2, width // 2, device=x.device, dtype=cond.dtype)
        # The scheduler's float32 timestep, cast to the latents' dtype, then / 1000 in that dtype.
        timestep = (sigma * self.num_train_timesteps).expand(batch).to(x.dtype) / TIMESTEP_SCALE
        guidance = (
            torch.full([1], self.guidance_scale, device=x.device, dtype=torch.float32).expand(batch)
            if self.guidance_embedded else None
        )

        def run(embeds: torch.Tensor, pooled: torch.Tensor, text_ids: torch.Tensor) -> torch.Tensor:
            return self.transformer(
                hidden_states=packed, timestep=timestep, guidance=guidance, pooled_projections=pooled,
                encoder_hidden_states=embeds, txt_ids=text_ids, img_ids=image_ids, joint_attention_kwargs={},
                return_dict=False,
            )[0]

        with torch.set_grad_enabled(torch.is_grad_enabled() and x.requires_grad):
            out = run(cond.prompt_embeds, cond.pooled_prompt_embeds, cond.text_ids)
            if self.true_cfg(cond):
                neg = run(cond.negative_prompt_embeds, cond.negative_pooled_prompt_embeds, cond.negative_text_ids)
                out = neg + self.true_cfg_scale * (out - neg)
        return unpack_latents(out, height, width)

    def _check_latents(self, x: object) -> None:
        x = check_tensor("x", x, finite=False)
        channels = self.latent_channels
        if x.dim() != 4 or x.shape[1] != channels:
            raise ShapeError("x", f"expected unpacked latents (batch, {channels}, height, width), got {tuple(x.shape)}")
        if x.shape[2] % 2 or x.shape[3] % 2:
            raise ShapeError("x", f"latent height and width must be even (2x2 patches), got {tuple(x.shape[2:])}")
        check_on_transformer(x, self.transformer)

    def _check_condition(self, cond: FluxCondition, batch: int) -> None:
        check_text_condition(cond, batch, self.transformer)

    def __repr__(self) -> str:
        return (f"FluxDynamics(name={self.name!r}, guidance_scale={self.guidance_scale!r}, "
                f"true_cfg_scale={self.true_cfg_scale!r}, dtype={self.dtype}, device={self.device})")
