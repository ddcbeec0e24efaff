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

import hashlib
import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from flowctl._checks import check_int, check_real, check_tensor
from flowctl.errors import InvalidArgumentError, ShapeError

from .errors import MissingTextEncoderError

if TYPE_CHECKING:
    from .encoding import SD3PromptEncoder


def math_attention():
    """A context in which scaled-dot-product attention uses the MATH kernel.

    Forward-mode AD (``torch.func.jvp``) and double backward through the MMDiT fail with the
    default CPU kernel (and the flash / memory-efficient CUDA ones); the MATH kernel is plain
    differentiable torch. Run derivative-based strategies (shooting, MPC) inside it; plain
    sampling stays on the default kernels, which the pipeline uses.
    """
    return sdpa_kernel(SDPBackend.MATH)


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


class SD3Dynamics:
    """``velocity(x, sigma, cond)``: SD3's (or SD3.5's) MMDiT with classifier-free guidance.

    One call is one model evaluation (a guided call runs the transformer once on a batch of
    2B). Gradients flow to the latents only: the transformer runs without autograd unless ``x``
    requires grad; forward-mode AD needs :func:`math_attention`. The transformer must sit on one
    device (no CPU-offload hooks); latents and embeddings must be in its dtype, on that device.

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
        self._fingerprint: str | None = None

    @classmethod
    def from_pipeline(
        cls, pipeline: Any, *, guidance_scale: float = 7.0, negative_prompt: str = "", max_sequence_length: int = 256, name: str = "sd3"
    ) -> SD3Dynamics:
        """The pipeline's transformer, with prompt encoding through its text encoders when it has
        them (``guidance_scale``, ``negative_prompt``, ``max_sequence_length`` as in ``pipe()``)."""
        from .encoding import SD3PromptEncoder, has_text_encoders

        prompts = (
            SD3PromptEncoder(pipeline, guidance_scale=guidance_scale, negative_prompt=negative_prompt, max_sequence_length=max_sequence_length)
            if has_text_encoders(pipeline) else None
        )
        return cls(pipeline.transformer, name=name, prompts=prompts, num_train_timesteps=pipeline.scheduler.config.num_train_timesteps)

    @property
    def dtype(self) -> torch.dtype:
        return self.transformer.dtype

    @property
    def device(self) -> torch.device:
        return self.transformer.device

    @property
    def fingerprint(self) -> str:
        """The model's identity for cache keys: a hash of the transformer's config and of its
        weights' bytes, and the dtype. Computed on first use (it reads every weight once) and kept:
        modify the weights in place and the fingerprint goes stale."""
        if self._fingerprint is None:
            config = {k: v for k, v in dict(self.transformer.config).items() if not k.startswith("_")}
            config_hash = hashlib.blake2b(json.dumps(config, sort_keys=True, default=str).encode(), digest_size=8).hexdigest()
            dtype = str(self.dtype).removeprefix("torch.")
            self._fingerprint = f"sd3-mmdit-{dtype}-{config_hash}-{weight_checksum(self.transformer)}"
        return self._fingerprint

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
        if isinstance(t, torch.Tensor):
            if t.numel() != 1:
                raise ShapeError("t", f"expected one sigma for the batch, got shape {tuple(t.shape)}")
            sigma = t.reshape(()).to(device=x.device, dtype=torch.float32)
        else:
            sigma = torch.tensor(check_real("t", t), dtype=torch.float32, device=x.device)
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
        if x.dtype != self.dtype:
            raise InvalidArgumentError("x", f"dtype {x.dtype} is not the transformer's {self.dtype}")
        if x.device != self.device:
            raise InvalidArgumentError("x", f"is on {x.device}, the transformer on {self.device}")

    def _check_condition(self, cond: SD3Condition, batch: int) -> None:
        config = self.transformer.config
        if cond.batch != batch:
            raise ShapeError("cond", f"has {cond.batch} prompt(s) for a batch of {batch} latents")
        if cond.prompt_embeds.shape[2] != config.joint_attention_dim:
            raise ShapeError("cond", f"prompt_embeds have dim {cond.prompt_embeds.shape[2]}, the model {config.joint_attention_dim}")
        if cond.pooled_prompt_embeds.shape[1] != config.pooled_projection_dim:
            raise ShapeError("cond", f"pooled_prompt_embeds have dim {cond.pooled_prompt_embeds.shape[1]}, the model {config.pooled_projection_dim}")
        if cond.dtype != self.dtype or cond.device != self.device:
            raise InvalidArgumentError("cond", f"embeddings are {cond.dtype} on {cond.device}, the transformer {self.dtype} on {self.device}")

    def __repr__(self) -> str:
        return f"SD3Dynamics(name={self.name!r}, dtype={self.dtype}, device={self.device})"


def weight_checksum(module: torch.nn.Module) -> str:
    """BLAKE2b (16 hex digits) over the names, shapes, dtypes and bytes of a module's state."""
    h = hashlib.blake2b(digest_size=8)
    with torch.no_grad():
        for name, tensor in module.state_dict().items():
            h.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype};".encode())
            h.update(tensor.detach().reshape(-1).contiguous().cpu().view(torch.uint8).numpy())
    return h.hexdigest()
