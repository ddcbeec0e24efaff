"""The embedded default model: a tiny SD3 MMDiT trained on captioned shapes, shipped with flowctl.

``shapes_mmdit/`` beside this module holds a diffusers ``SD3Transformer2DModel`` (``config.json``,
``diffusion_pytorch_model.safetensors``), the training record ``train.json`` and
``MODEL_CARD.md``; ``python -m flowctl.adapters.sd3.train`` with the record's settings
reproduces the weights. The model runs in pixel space: its state is the RGB image
(3, 32, 32) in [-1, 1] (so decoding is the identity, clamped to that range), conditioned on
all-MiniLM-L6-v2 through :class:`~flowctl.adapters.sd3.encoding.MiniLMPromptEncoder`. It runs
through :class:`~flowctl.adapters.sd3.SD3Dynamics`, the code path of a real checkpoint.

Its grid is ``FlowMatchEulerDiscreteScheduler(shift=3)``'s (:meth:`flowctl.sampling.SigmaGrid.create`);
sigma = 1 is noise, 0 is data. Prompt adherence is read by the shape world's attribute classifier
(:mod:`flowctl.data.attributes`).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from flowctl.adapters.common import noise_latents
from flowctl.bench.runner import BenchModel
from flowctl.data.attributes import AttributeClassifier
from flowctl.data.prompts import parse_prompt
from flowctl.errors import InvalidArgumentError
from flowctl.sampling import SigmaGrid
from flowctl.text import MiniLMEncoder

from .bench import mmdit_model
from .dynamics import SD3Dynamics
from .encoding import MiniLMPromptEncoder

WEIGHTS = Path(__file__).with_name("shapes_mmdit")
NAME = "flowctl-shapes-mmdit"
SHAPE = (3, 32, 32)  # the model's state: an RGB image in [-1, 1]
SHIFT = 3.0  # the sigma grid's shift, as in training-time sampling
GUIDANCE = 4.0  # default classifier-free guidance (docs/embedded.md measures others)
ADHERENCE_NOTE = "adherence = fraction of B's six attributes the attribute classifier sees in the image (0-1)"


def load_embedded(
    path: str | Path | None = None,
    *,
    guidance_scale: float = GUIDANCE,
    negative_prompt: str = "",
    encoder: MiniLMEncoder | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> SD3Dynamics:
    """The embedded model (``path``: a folder in :data:`WEIGHTS`' layout; None: the shipped one)
    as :class:`SD3Dynamics`, prompting through ``encoder`` (a new :class:`MiniLMEncoder` if None)."""
    from diffusers import SD3Transformer2DModel

    folder = WEIGHTS if path is None else Path(path)
    record_path = folder / "train.json"
    if not (folder / "config.json").is_file() or not record_path.is_file():
        raise InvalidArgumentError("path", f"{folder} is not an embedded-model folder (config.json and train.json)")
    tokens = json.loads(record_path.read_text())["text"]["tokens"]
    transformer = SD3Transformer2DModel.from_pretrained(folder, low_cpu_mem_usage=False).eval().requires_grad_(False)
    # from_pretrained leaves these float32 weights in float32 whatever torch_dtype says: cast here
    torch.nn.Module.to(transformer, device=device, dtype=dtype)
    prompts = MiniLMPromptEncoder(encoder or MiniLMEncoder(), tokens=tokens, guidance_scale=guidance_scale,
                                  negative_prompt=negative_prompt, dtype=dtype, device=device)
    return SD3Dynamics(transformer, name=NAME, prompts=prompts)


def embedded_grid(steps: int, shift: float = SHIFT) -> SigmaGrid:
    """The embedded model's sampler grid for ``steps`` Euler steps."""
    return SigmaGrid.create(steps, shift)


def embedded_noise(seed: int, dynamics: SD3Dynamics) -> tuple[torch.Tensor, torch.Tensor]:
    """Starting noise (1, 3, 32, 32) for ``seed`` in the dynamics' dtype and device, drawn as the
    SD3 pipeline draws latents, and the generator's state before the draw."""
    return noise_latents((1, *SHAPE), seed, dtype=dynamics.dtype, device=dynamics.device)


def to_image(x: torch.Tensor) -> torch.Tensor:
    """The model's state at sigma = 0 as an image in [-1, 1] (pixel space: a clamp)."""
    return x.clamp(-1, 1)


class ClassifierAdherence:
    """``(x, prompt_a, prompt_b) -> (batch,)``: the fraction of B's attributes the classifier sees
    in each image; NaN where B is not a single-shape prompt of the shape world."""

    def __init__(self, classifier: AttributeClassifier | None = None):
        self.classifier = classifier or AttributeClassifier.load()

    def __call__(self, x: torch.Tensor, prompt_a: str, prompt_b: str) -> torch.Tensor:
        attributes = parse_prompt(prompt_b)
        if attributes is None:
            return torch.full((len(x),), math.nan)
        return self.classifier.adherence(to_image(x).float(), attributes)


def embedded_bench_model(dynamics: SD3Dynamics, *, seeds: int, seed: int = 0, shift: float = SHIFT,
                         classifier: AttributeClassifier | None = None) -> BenchModel:
    """The benchmark's view of the embedded model: ``seeds`` noise images (seeds ``seed`` ..
    ``seed + seeds - 1``), the shifted grid, and the classifier's adherence."""
    noise = torch.cat([embedded_noise(s, dynamics)[0] for s in range(seed, seed + seeds)])
    return mmdit_model(dynamics, noise, lambda steps: embedded_grid(steps, shift), to_image=to_image,
                       adherence=ClassifierAdherence(classifier), adherence_note=ADHERENCE_NOTE)
