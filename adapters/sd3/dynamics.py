"""SD3's MMDiT as a flowctl dynamics: the guided velocity exactly as diffusers' pipeline computes it.

Conventions (docs/conventions.md): ``t`` is sigma, ``sigma = 1`` is pure noise and ``sigma = 0``
is data; the transformer's timestep argument is ``sigma * num_train_timesteps`` (``sigma * 1000``
for SD3), computed in float32 on the latents' device, as the scheduler's ``timesteps`` are.
Latents are ``(B, C, H, W)`` in the transformer's dtype and on its device.

Classifier-free guidance is laid out as ``StableDiffusion3Pipeline.__call__`` lays it out (a
batch of ``[negative, positive]``, ``uncond + scale * (text - uncond)``, on only when
``guidance_scale > 1``): the layout changes the bits (docs/sd3.md, "What breaks the equality"), so keeping it is what
makes the adapter's loop equal the pipeline's.
"""

from __future__ import annotations

from typing import Any

import torch

from flowctl._checks import check_int, check_tensor
from flowctl.errors import InvalidArgumentError, ShapeError

from flowctl.adapters.common import MissingTextEncoderError, TransformerField, check_on_transformer, check_text_condition

from .condition import SD3Condition
from .encoding import SD3PromptEncoder, has_text_encoders



class SD3Dynamics(TransformerField):
    """``velocity(x, sigma, cond)``: SD3's (or SD3.5's) MMDiT with classifier-free guidance.

    One call is one model evaluation (a guided call runs the transformer once on a batch of
    2B). Gradients flow to the latents only: the transformer runs without autograd unless ``x``
    requires grad; forward-mode AD needs :func:`math_attention` (:meth:`derivatives` enters it).
    The transformer must sit on one device (no CPU-offload hooks); latents and embeddings must be in its dtype, on that device.

    Args:
        transformer: a diffusers ``SD3Transformer2DModel``.
        name: a label for the model (reports); the cache identity is :attr:`fingerprint`.
        prompts: turns a prompt into its condition (:class:`SD3PromptEncoder`); None when the
            pipeline has no text encoders (pass :class:`SD3Condition` s built from embeddings).
        num_train_timesteps: the scheduler's; the timestep is ``sigma * num_train_timesteps``.
    """

    def __init__(self, transformer: Any, *, name: str = "sd3", prompts: SD3PromptEncoder | None = None, num_train_timesteps: int = 1000):
        config = getattr(transformer, "config", None)
        if not isinstance(transformer, torch.nn.Module) or config is None or not hasattr(config, "in_channels"):
            raise InvalidArgumentError("transformer", f"expected a diffusers SD3Transformer2DModel, got {type(transformer).__name__}")
        if not isinstance(name, str) or not name.strip():
            raise InvalidArgumentError("name", f"expected a non-empty string, got {name!r}")
        self.transformer = transformer
        self.name = name
        self.prompts = prompts
        self.num_train_timesteps = check_int("num_train_timesteps", num_train_timesteps, minimum=1)
        self._start_checksum()

    @classmethod
    def from_pipeline(
        cls, pipeline: Any, *, guidance_scale: float = 7.0, negative_prompt: str = "", max_sequence_length: int = 256, name: str = "sd3"
    ) -> SD3Dynamics:
        """The pipeline's transformer, with prompt encoding through its text encoders when it has
        them (``guidance_scale``, ``negative_prompt``, ``max_sequence_length`` as in ``pipe()``)."""
        prompts = (
            SD3PromptEncoder(pipeline, guidance_scale=guidance_scale, negative_prompt=negative_prompt, max_sequence_length=max_sequence_length)
            if has_text_encoders(pipeline) else None
        )
        return cls(pipeline.transformer, name=name, prompts=prompts, num_train_timesteps=pipeline.scheduler.config.num_train_timesteps)

    FINGERPRINT_PREFIX = "sd3-mmdit"

    @property
    def fingerprint(self) -> str:
        """The model's identity for cache keys: the transformer's config, weights and dtype
        (:meth:`TransformerField._model_id`)."""
        return self._model_id()

    def condition(self, prompt: str) -> SD3Condition:
        """The condition of ``prompt`` through the pipeline's text encoders."""
        if self.prompts is None:
            raise MissingTextEncoderError(
                "this SD3Dynamics has no text encoders (the pipeline was loaded without them): "
                "pass an SD3Condition built from prompt_embeds and pooled_prompt_embeds instead of a prompt"
            )
        return self.prompts.encode(prompt)

    def velocity(self, x: torch.Tensor, t: float | torch.Tensor, cond: SD3Condition) -> torch.Tensor:
        """The guided velocity ``v = eps - x0`` at sigma ``t`` (float or 0-dim tensor).

        Shapes, dtypes and devices are checked on every call (no device synchronisation);
        finiteness is checked where a run starts (:func:`flowctl.sampling.integrate`, the
        strategies), not per step."""
        if not isinstance(cond, SD3Condition):
            raise InvalidArgumentError("cond", f"expected an SD3Condition, got {type(cond).__name__}")
        self._check_latents(x)
        self._check_condition(cond, x.shape[0])
        sigma = self._sigma(t, x)
        model_input = torch.cat([x] * 2) if cond.guided else x
        timestep = (sigma * self.num_train_timesteps).expand(model_input.shape[0])
        with torch.set_grad_enabled(torch.is_grad_enabled() and x.requires_grad):
            out = self.transformer(
                hidden_states=model_input,
                timestep=timestep,
                encoder_hidden_states=cond.encoder_hidden_states,
                pooled_projections=cond.pooled_projections,
                joint_attention_kwargs=None,
                return_dict=False,
            )[0]
        if not cond.guided:
            return out
        uncond, text = out.chunk(2)
        return uncond + cond.guidance_scale * (text - uncond)

    def _check_latents(self, x: object) -> None:
        x = check_tensor("x", x, finite=False)
        config = self.transformer.config
        if x.dim() != 4 or x.shape[1] != config.in_channels:
            raise ShapeError("x", f"expected latents (batch, {config.in_channels}, height, width), got {tuple(x.shape)}")
        patch, limit = config.patch_size, getattr(config, "pos_embed_max_size", None)
        if x.shape[2] % patch or x.shape[3] % patch:
            raise ShapeError("x", f"height and width must be multiples of the patch size {patch}, got {tuple(x.shape[2:])}")
        if limit is not None and max(x.shape[2], x.shape[3]) // patch > limit:
            raise ShapeError("x", f"at most {limit * patch} latent pixels a side, got {tuple(x.shape[2:])}")
        check_on_transformer(x, self.transformer)

    def _check_condition(self, cond: SD3Condition, batch: int) -> None:
        check_text_condition(cond, batch, self.transformer)

    def __repr__(self) -> str:
        return f"SD3Dynamics(name={self.name!r}, dtype={self.dtype}, device={self.device})"
