"""A prompt-conditioned Gaussian-mixture flow: the embedded default model.

The components are captioned images (:mod:`flowctl.systems.shapes` by default), each a broad
Gaussian ``N(image_k, std^2 I)`` in data units (images in [-1, 1]). A prompt sets the mixture
weights through its text embedding ``e``:

    w_k = softmax_k(cos(e, e_caption_k) / temperature),

so similar prompts give similar weights, and the image generated from a given noise responds to
the prompt continuously. The flow itself is :class:`GaussianMixtureFlow`'s exact rectified flow
(sigma = 1 is noise, sigma = 0 is data); :meth:`PromptedMixtureFlow.velocity` takes the weight
vector as its condition, so any flowctl sampler, blend or controller runs on it unchanged.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import torch

from .._checks import check_int, check_real, check_tensor
from ..errors import InvalidArgumentError, ShapeError
from ..text import TextEncoder, check_prompts
from .gaussian_mixture import GaussianMixtureFlow
from .shapes import captioned_shapes

DEFAULT_STD = 0.5
DEFAULT_TEMPERATURE = 0.05


class PromptedMixtureFlow:
    """Exact rectified flow of a Gaussian mixture whose weights a prompt chooses.

    Args:
        encoder: the text encoder for prompts and captions (its ``name`` enters
            :attr:`fingerprint`).
        components: number of captioned shape images K (the component means).
        size: image side, pixels; each mean is (3, size, size) in [-1, 1].
        std: standard deviation of every component, data units (broad: the default 0.5 is a
            quarter of the data range, so neighbouring prompts blend rather than snap).
        temperature: softmax temperature on cosine similarities. At the default 0.05 a cosine
            0.05 higher weighs e times more.
        seed: seed of the shape images and captions.

    Attributes:
        encoder, captions (tuple of K str), means ((K, 3, size, size) float32),
        caption_embeddings ((K, encoder.dim), unit rows), std, temperature, fingerprint.
    """

    def __init__(
        self,
        encoder: TextEncoder,
        *,
        components: int = 96,
        size: int = 32,
        std: float = DEFAULT_STD,
        temperature: float = DEFAULT_TEMPERATURE,
        seed: int = 0,
    ):
        components = check_int("components", components, minimum=1)
        size = check_int("size", size, minimum=8)
        seed = check_int("seed", seed, minimum=0)
        images, captions = captioned_shapes(components, size, seed)
        self._setup(images, captions, encoder, std, temperature, f"shapes-K{components}-S{size}-seed{seed}")

    @classmethod
    def from_images(
        cls,
        images: torch.Tensor,
        captions: Sequence[str],
        encoder: TextEncoder,
        *,
        std: float = DEFAULT_STD,
        temperature: float = DEFAULT_TEMPERATURE,
    ) -> PromptedMixtureFlow:
        """A flow over given captioned images (shape (K, ...), one caption each)."""
        images = check_tensor("images", images, ndim_min=2)
        captions = check_prompts(captions)
        if len(captions) != images.shape[0]:
            raise ShapeError("captions", f"expected {images.shape[0]} captions (one per image), got {len(captions)}")
        digest = hashlib.sha256(images.detach().cpu().float().numpy().tobytes())
        digest.update(str(tuple(images.shape)).encode())
        digest.update("\n".join(captions).encode())
        flow = cls.__new__(cls)
        flow._setup(images, captions, encoder, std, temperature, f"images{digest.hexdigest()[:12]}")
        return flow

    def _setup(
        self,
        images: torch.Tensor,
        captions: tuple[str, ...],
        encoder: TextEncoder,
        std: float,
        temperature: float,
        source: str,
    ) -> None:
        if not isinstance(encoder, TextEncoder):
            raise InvalidArgumentError("encoder", f"expected a TextEncoder, got {type(encoder).__name__}")
        self.std = check_real("std", std, positive=True)
        self.temperature = check_real("temperature", temperature, positive=True)
        self.encoder = encoder
        self.captions = captions
        self.mixture = GaussianMixtureFlow(images.float(), self.std)
        self.caption_embeddings = encoder.encode(captions)
        self.fingerprint = (
            f"prompted-mixture-{source}-std{self.std:g}-T{self.temperature:g}-{encoder.name}"
        )

    @property
    def means(self) -> torch.Tensor:
        return self.mixture.means

    @property
    def num_components(self) -> int:
        return self.mixture.num_components

    @property
    def event_shape(self) -> torch.Size:
        return self.mixture.event_shape

    def condition(self, prompt: str | Sequence[str]) -> torch.Tensor:
        """Mixture weights for a prompt, shape (K,), or for a list of prompts, shape (n, K)."""
        if isinstance(prompt, str):
            return self.condition_from_embedding(self.encoder.encode([prompt])[0])
        return self.condition_from_embedding(self.encoder.encode(prompt))

    def condition_from_embedding(self, embedding: torch.Tensor) -> torch.Tensor:
        """Mixture weights from a text embedding, shape (dim,) -> (K,) or (n, dim) -> (n, K).

        The embedding need not be normalised (only its direction counts), but must be finite
        and non-zero.
        """
        e = check_tensor("embedding", embedding, ndim_min=1)
        dim = self.caption_embeddings.shape[1]
        if e.dim() > 2 or e.shape[-1] != dim:
            raise ShapeError("embedding", f"expected shape ({dim},) or (n, {dim}), got {tuple(e.shape)}")
        e = e.detach().to("cpu", torch.float32)
        norms = e.norm(dim=-1, keepdim=True)
        if not bool((norms > 0).all()):
            raise InvalidArgumentError("embedding", "a zero vector has no direction")
        cos = (e / norms) @ self.caption_embeddings.T
        return torch.softmax(cos / self.temperature, dim=-1)

    def velocity(self, x: torch.Tensor, t: float | torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """``E[eps - x0 | x_sigma = x]`` at sigma ``t`` for mixture weights ``cond`` ((K,) or (B, K))."""
        return self.mixture.velocity(x, t, cond)

    def __repr__(self) -> str:
        return f"PromptedMixtureFlow({self.fingerprint})"
