"""A prompt-conditioned Gaussian-mixture flow: the embedded default model.

The components are captioned images (:mod:`flowctl.systems.shapes` by default), each a broad
Gaussian ``N(image_k, std^2 I)`` in data units (images in [-1, 1]). A prompt sets the mixture
weights through its text embedding ``e``:

    w_k = softmax_k(cos(e, e_caption_k) / temperature),

so similar prompts give similar weights. The prompt also moves every component's mean by one
offset, ``d = pull * (sum_k w_k image_k - mean_k image_k)``, towards the images it weighs: with
3 x 32 x 32 pixels the posterior over components settles within the first few steps, and the
offset keeps the image responding to the prompt after that, continuously, as details do in a
real model. The data distribution is ``sum_k w_k N(image_k + d, std^2 I)``. The flow itself is :class:`GaussianMixtureFlow`'s exact rectified flow
(sigma = 1 is noise, sigma = 0 is data), shifted by the offset; :meth:`PromptedMixtureFlow.velocity`
takes a :class:`PromptCondition` (weights and offset), so any flowctl sampler, blend or controller
runs on it unchanged.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .._checks import check_finite, check_int, check_real, check_tensor
from ..errors import InvalidArgumentError, ShapeError
from ..text import TextEncoder, check_prompts
from .gaussian_mixture import GaussianMixtureFlow
from .shapes import MAX_SIZE, captioned_shapes

DEFAULT_STD = 0.5
DEFAULT_TEMPERATURE = 0.05
DEFAULT_PULL = 0.5


@dataclass(frozen=True, eq=False)
class PromptCondition:
    """What a prompt sets: mixture weights (K,) or (n, K) and the offset of every component's
    mean, (*event_shape) or (n, *event_shape), in data units (n prompts for a batch of n)."""

    weights: torch.Tensor
    offset: torch.Tensor

    def __post_init__(self) -> None:
        weights = check_tensor("weights", self.weights, ndim_min=1, finite=False)
        offset = check_tensor("offset", self.offset, ndim_min=1, finite=False)
        if weights.dim() > 2:
            raise ShapeError("weights", f"expected (K,) or (n, K), got {tuple(weights.shape)}")
        if weights.dim() == 2 and offset.shape[0] != weights.shape[0]:
            raise ShapeError("offset", f"expected one offset per prompt, {weights.shape[0]}, got shape {tuple(offset.shape)}")
        check_finite(("weights", weights), ("offset", offset))


class PromptedMixtureFlow:
    """Exact rectified flow of a Gaussian mixture whose weights a prompt chooses.

    Args:
        encoder: the text encoder for prompts and captions (its ``name`` enters
            :attr:`fingerprint`).
        components: number of captioned shape images K (the component means).
        size: image side, pixels (8 to 1024); each mean is (3, size, size) in [-1, 1].
        std: standard deviation of every component, data units (broad: the default 0.5 is a
            quarter of the data range, so neighbouring prompts blend rather than snap).
        temperature: softmax temperature on cosine similarities. At the default 0.05 a cosine
            0.05 higher weighs e times more.
        pull: how far the prompt moves every mean towards its weighted image, in [0, 1].
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
        pull: float = DEFAULT_PULL,
        seed: int = 0,
    ):
        components = check_int("components", components, minimum=1)
        size = check_int("size", size, minimum=8, maximum=MAX_SIZE)
        seed = check_int("seed", seed, minimum=0)
        images, captions = captioned_shapes(components, size, seed)
        self._setup(images, captions, encoder, std, temperature, pull, f"shapes-K{components}-S{size}-seed{seed}")

    @classmethod
    def from_images(
        cls,
        images: torch.Tensor,
        captions: Sequence[str],
        encoder: TextEncoder,
        *,
        std: float = DEFAULT_STD,
        temperature: float = DEFAULT_TEMPERATURE,
        pull: float = DEFAULT_PULL,
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
        flow._setup(images, captions, encoder, std, temperature, pull, f"images{digest.hexdigest()[:12]}")
        return flow

    def _setup(
        self,
        images: torch.Tensor,
        captions: tuple[str, ...],
        encoder: TextEncoder,
        std: float,
        temperature: float,
        pull: float,
        source: str,
    ) -> None:
        if not isinstance(encoder, TextEncoder):
            raise InvalidArgumentError("encoder", f"expected a TextEncoder, got {type(encoder).__name__}")
        self.std = check_real("std", std, positive=True)
        self.temperature = check_real("temperature", temperature, positive=True)
        self.pull = check_real("pull", pull, low=0.0, high=1.0)
        self.encoder = encoder
        self.captions = captions
        self.mixture = GaussianMixtureFlow(images.float(), self.std)
        self.caption_embeddings = encoder.encode(captions)
        self.fingerprint = (
            f"prompted-mixture-{source}-std{self.std:g}-T{self.temperature:g}-pull{self.pull:g}-{encoder.name}"
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

    def condition(self, prompt: str | Sequence[str]) -> PromptCondition:
        """The condition of a prompt (weights (K,)) or of a list of prompts (weights (n, K))."""
        if isinstance(prompt, str):
            return self.condition_from_embedding(self.encoder.encode([prompt])[0])
        return self.condition_from_embedding(self.encoder.encode(prompt))

    def condition_from_embedding(self, embedding: torch.Tensor) -> PromptCondition:
        """The condition from a text embedding: weights (dim,) -> (K,) or (n, dim) -> (n, K).

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
        weights = torch.softmax(cos / self.temperature, dim=-1)
        images = self.means.flatten(1)
        offset = self.pull * (weights @ images - images.mean(0))
        return PromptCondition(weights, offset.reshape(*weights.shape[:-1], *self.event_shape))

    def velocity(self, x: torch.Tensor, t: float | torch.Tensor, cond: PromptCondition) -> torch.Tensor:
        """``E[eps - x0 | x_sigma = x]`` at sigma ``t``: the mixture's velocity shifted by the offset
        d, ``v(x - (1 - sigma) d) - d`` (data x0 + d sits at ``x + (1 - sigma) d``)."""
        x = check_tensor("x", x, ndim_min=1, finite=False)
        a = 1.0 - check_real("t", t)
        cond = self._check_condition(cond, x, "x")
        return self.mixture.velocity(x - a * cond.offset, t, cond.weights) - cond.offset

    def log_prob(self, x0: torch.Tensor, cond: PromptCondition) -> torch.Tensor:
        """Log density (nats) of data ``x0`` (B, *event_shape) under the prompt's distribution."""
        x0 = check_tensor("x0", x0, ndim_min=1, finite=False)
        cond = self._check_condition(cond, x0, "x0")
        return self.mixture.log_prob(x0 - cond.offset, cond.weights)

    def _check_condition(self, cond: object, x: torch.Tensor, name: str) -> PromptCondition:
        """``cond`` if it is a condition for the batch ``x`` of this flow's images (metadata only:
        the condition checked its values when it was made)."""
        event = self.event_shape
        if x.shape[1:] != event:
            raise ShapeError(name, f"expected shape (B, {', '.join(map(str, event))}), got {tuple(x.shape)}")
        if not isinstance(cond, PromptCondition):
            raise InvalidArgumentError("cond", f"expected a PromptCondition (from condition()), got {type(cond).__name__}")
        if cond.offset.shape not in (event, (x.shape[0], *event)):
            raise ShapeError("cond.offset", f"expected {tuple(event)} or ({x.shape[0]}, {', '.join(map(str, event))}) for {name} of shape {tuple(x.shape)}, got {tuple(cond.offset.shape)}")
        if cond.offset.device != x.device:
            raise InvalidArgumentError("cond.offset", f"is on {cond.offset.device}, {name} on {x.device}")
        return cond

    def __repr__(self) -> str:
        return f"PromptedMixtureFlow({self.fingerprint})"
