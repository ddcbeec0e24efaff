"""What the diffusers model families share: derivatives through attention, a model's weight
checksum, their typed errors, the checks of a text condition and of latents against the
transformer, the latent noise as diffusers' pipelines draw it, and the strategies by name for a
patch transformer."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from flowctl import transitions
from flowctl._checks import check_int, check_real
from flowctl.errors import FlowctlError, InvalidArgumentError, ShapeError
from flowctl.jacobians import ColouredJacobian
from flowctl.sampling import SigmaGrid
from flowctl.transitions import Strategy


class MissingTextEncoderError(FlowctlError):
    """A prompt was given as text, but the pipeline was loaded without its CLIP text encoders
    and tokenizers: pass the embeddings (an :class:`SD3Condition`) instead."""


class UnsupportedSchedulerError(FlowctlError):
    """The pipeline's scheduler is not a FlowMatchEulerDiscreteScheduler, or uses an option the
    adapter's sigma grid does not reproduce (Karras, exponential or beta sigmas, a shift
    terminal, inverted sigmas, stochastic sampling)."""


def math_attention():
    """A context in which scaled-dot-product attention uses the MATH kernel.

    Forward-mode AD (``torch.func.jvp``) and double backward through the MMDiT fail with the
    default CPU kernel (and the flash / memory-efficient CUDA ones); the MATH kernel is plain
    differentiable torch. Run derivative-based strategies (shooting, MPC) inside it; plain
    sampling stays on the default kernels, which the pipeline uses.
    """
    return sdpa_kernel(SDPBackend.MATH)


def weight_checksum(module: torch.nn.Module) -> str:
    """BLAKE2b (16 hex digits) over the names, shapes, dtypes and bytes of a module's state."""
    h = hashlib.blake2b(digest_size=8)
    with torch.no_grad():
        for name, tensor in module.state_dict().items():
            h.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype};".encode())
            h.update(tensor.detach().reshape(-1).contiguous().cpu().view(torch.uint8).numpy())
    return h.hexdigest()


class TransformerField:
    """What the families' velocity fields over a diffusers transformer share: its dtype and
    device, its derivative mode, and the model part of a cache fingerprint.

    Subclasses set :attr:`transformer` and call :meth:`_start_checksum` in ``__init__``."""

    transformer: Any
    FINGERPRINT_PREFIX: str
    """The family's label in fingerprints ("sd3-mmdit", "flux-dit"); each subclass sets it."""

    def _start_checksum(self) -> None:
        self._weights: str | None = None

    @property
    def dtype(self) -> torch.dtype:
        return placement(self.transformer)[0]

    @property
    def device(self) -> torch.device:
        return placement(self.transformer)[1]

    def derivatives(self):
        """The context derivatives through the transformer run in: :func:`math_attention`
        (:func:`flowctl.dynamics.derivative_mode`; the planners on the exact model enter it)."""
        return math_attention()

    def share_checksum(self, other: TransformerField) -> None:
        """Take ``other``'s weight checksum: it runs the same transformer object (saves reading
        every weight again)."""
        if not isinstance(other, TransformerField) or other.transformer is not self.transformer:
            raise InvalidArgumentError("other", "must run the same transformer object")
        self._weights = other._checksum()

    @staticmethod
    def _sigma(t: float | torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``t``, one sigma for the batch (a float or a one-element tensor), as a float32 0-dim
        tensor on ``x``'s device, as the scheduler keeps its sigmas."""
        if isinstance(t, torch.Tensor):
            if t.numel() != 1:
                raise ShapeError("t", f"expected one sigma for the batch, got shape {tuple(t.shape)}")
            return t.reshape(()).to(device=x.device, dtype=torch.float32)
        return torch.tensor(check_real("t", t), dtype=torch.float32, device=x.device)

    def _model_id(self) -> str:
        """The family, dtype, a hash of the transformer's config and the checksum of its weights'
        bytes. The weights are read once, on first use: modify them in place and the id goes
        stale."""
        config = {k: v for k, v in dict(self.transformer.config).items() if not k.startswith("_")}
        config_hash = hashlib.blake2b(json.dumps(config, sort_keys=True, default=str).encode(), digest_size=8).hexdigest()
        dtype = str(self.dtype).removeprefix("torch.")
        return f"{self.FINGERPRINT_PREFIX}-{dtype}-{config_hash}-{self._checksum()}"

    def _checksum(self) -> str:
        if self._weights is None:
            self._weights = weight_checksum(self.transformer)
        return self._weights


def check_text_condition(cond: Any, batch: int, transformer: Any) -> None:
    """``cond`` (prompt and pooled embeddings, ``batch``, ``dtype``, ``device``) fits
    ``transformer``'s text inputs and a batch of ``batch`` latents."""
    config = transformer.config
    if cond.batch != batch:
        raise ShapeError("cond", f"has {cond.batch} prompt(s) for a batch of {batch} latents")
    if cond.prompt_embeds.shape[2] != config.joint_attention_dim:
        raise ShapeError("cond", f"prompt_embeds have dim {cond.prompt_embeds.shape[2]}, the model {config.joint_attention_dim}")
    if cond.pooled_prompt_embeds.shape[1] != config.pooled_projection_dim:
        raise ShapeError("cond", f"pooled_prompt_embeds have dim {cond.pooled_prompt_embeds.shape[1]}, the model {config.pooled_projection_dim}")
    dtype, device = placement(transformer)
    if cond.dtype != dtype or cond.device != device:
        raise InvalidArgumentError("cond", f"embeddings are {cond.dtype} on {cond.device}, the transformer {dtype} on {device}")


def placement(transformer: Any) -> tuple[torch.dtype, torch.device]:
    """The transformer's dtype and device, read from its first parameter: O(1), where diffusers'
    ``ModelMixin.dtype`` and ``.device`` walk every parameter, a visible share of a small model's
    forward when checked at every step. The adapters require the transformer on one device in one
    dtype."""
    first = next(transformer.parameters())
    return first.dtype, first.device


def check_on_transformer(x: torch.Tensor, transformer: Any) -> None:
    """``x`` is in ``transformer``'s dtype and on its device."""
    dtype, device = placement(transformer)
    if x.dtype != dtype:
        raise InvalidArgumentError("x", f"dtype {x.dtype} is not the transformer's {dtype}")
    if x.device != device:
        raise InvalidArgumentError("x", f"is on {x.device}, the transformer on {device}")


def noise_latents(shape: tuple[int, ...], seed: int, *, dtype: torch.dtype, device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
    """Standard normal (B, C, H, W) latents drawn on the CPU from
    ``torch.Generator().manual_seed(seed)`` in ``dtype`` and moved to ``device``, as the SD3 and
    FLUX pipelines draw them (FLUX before packing them) from
    ``generator=torch.Generator().manual_seed(seed)``; and the generator's state before the draw
    (a cache entry keeps it)."""
    if len(shape) != 4:
        raise ShapeError("shape", f"expected latents (batch, channels, height, width), got {tuple(shape)}")
    generator = torch.Generator().manual_seed(check_int("seed", seed, minimum=0))
    state = generator.get_state()
    return torch.randn(shape, generator=generator, dtype=dtype).to(device), state


def pixel_latent_shape(pipeline: Any, height: int | None, width: int | None, *, batch: int, channels: int, multiple: int,
                       why: str) -> tuple[int, int, int, int]:
    """(batch, ``channels``, h, w) latents of ``height`` x ``width`` pixel images (the
    pipeline's default size when None), which must be multiples of ``multiple`` (``why`` says
    of what); h, w are the sizes over the VAE's scale factor."""
    scale = pipeline.vae_scale_factor
    sizes = []
    for name, value in (("height", height), ("width", width)):
        value = pipeline.default_sample_size * scale if value is None else check_int(name, value, minimum=1)
        if value % multiple:
            raise InvalidArgumentError(name, f"must be a multiple of {multiple} ({why}), got {value}")
        sizes.append(value // scale)
    return (check_int("batch", batch, minimum=1), channels, *sizes)


def check_grid_on(grid: object, latents: torch.Tensor) -> None:
    """``grid`` is a SigmaGrid on the latents' device (so that its step sizes enter the Euler
    update as the scheduler's do)."""
    if not isinstance(grid, SigmaGrid):
        raise InvalidArgumentError("grid", f"expected a SigmaGrid, got {type(grid).__name__}")
    if grid.values.device != latents.device:
        raise InvalidArgumentError("grid", f"is on {grid.values.device}, the latents on {latents.device}; build it with device=latents.device")


def make_strategy(name: str, *, patch_size: int, shooting_iterations: int = 5, budget: float = 1.0) -> Strategy:
    """flowctl's strategy called ``name`` (:func:`flowctl.transitions.make_strategy`) for a
    transformer that tokenises ``patch_size`` x ``patch_size`` patches of its latents: shooting +
    MPC on the exact model linearises per patch (the blocks a token mixes). Derivatives run in
    the dynamics' own mode (``derivatives()``, :func:`math_attention`)."""
    patch_size = check_int("patch_size", patch_size, minimum=1)
    return transitions.make_strategy(name, shooting_iterations=shooting_iterations, budget=budget,
                                     mpc_jacobian=ColouredJacobian(block=(patch_size, patch_size), radius=0))
