"""An attribute classifier for the shape world: a prompt-adherence metric for generated images.

A small CNN reads a (3, 32, 32) image in [-1, 1] and predicts each attribute of
:data:`~flowctl.data.shapes_dataset.VOCABULARIES` (shape, colour, size, position, background,
modifier). It is trained on fresh renders with augmentation (Gaussian pixel noise of std up to
0.3, blur, one-pixel shifts, slight brightness and contrast changes) so that it reads the
imperfect images a small generative model makes. :meth:`AttributeClassifier.adherence` scores
an image against the attributes of its prompt (see :func:`~flowctl.data.prompts.parse_prompt`).

The shipped weights are ``attribute_classifier.safetensors`` next to this module; their
safetensors metadata holds the vocabularies, the training settings and the held-out accuracy.
Reproduce them with ``python -m flowctl.data.attributes --out PATH``.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from .._checks import check_int, check_real, check_tensor
from ..errors import InvalidArgumentError, ShapeError
from ..systems.shapes import BACKGROUNDS, COLOURS
from .shapes_dataset import VOCABULARIES, Attributes, ShapesDataset, render_labels

SIZE = 32  # image side the network reads, in pixels
SHIPPED = Path(__file__).with_name("attribute_classifier.safetensors")
MAX_NOISE = 0.3  # largest std of the training pixel noise, in [-1, 1] image units
_WIDTHS = (32, 64, 64, 96)


class AttributeClassifier(nn.Module):
    """Four 3 x 3 convolutions (the last three of stride 2) with GroupNorm and SiLU, a hidden
    layer, and one linear head per attribute. ``metadata`` is what the weights file says
    (vocabularies, settings, accuracy), empty for an untrained one."""

    def __init__(self, metadata: dict[str, object] | None = None):
        super().__init__()
        layers: list[nn.Module] = []
        width = 3
        for i, w in enumerate(_WIDTHS):
            layers += [nn.Conv2d(width, w, 3, stride=1 if i == 0 else 2, padding=1), nn.GroupNorm(8, w), nn.SiLU()]
            width = w
        side = SIZE // 2 ** (len(_WIDTHS) - 1)
        self.body = nn.Sequential(*layers, nn.Flatten(), nn.Linear(width * side * side, 128), nn.SiLU())
        self.heads = nn.ModuleDict({name: nn.Linear(128, len(v)) for name, v in VOCABULARIES.items()})
        self.metadata = dict(metadata or {})

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Logits per attribute: ``{name: (N, len(VOCABULARIES[name]))}``."""
        h = self.body(images)
        return {name: head(h) for name, head in self.heads.items()}

    def _check(self, images: object) -> torch.Tensor:
        images = check_tensor("images", images, ndim_min=4)
        if images.dim() != 4 or tuple(images.shape[1:]) != (3, SIZE, SIZE):
            raise ShapeError("images", f"expected shape (N, 3, {SIZE}, {SIZE}), got {tuple(images.shape)}")
        return images.to(device=next(self.parameters()).device, dtype=torch.float32)

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """The predicted label (index into its vocabulary) of each attribute: ``{name: (N,)}``
        for images (N, 3, 32, 32) in [-1, 1], on the model's device."""
        images = self._check(images)
        was_training = self.training
        self.eval()
        try:
            return {name: logits.argmax(1) for name, logits in self(images).items()}
        finally:
            self.train(was_training)

    def matches(self, images: torch.Tensor, attributes: Sequence[Attributes] | Attributes) -> torch.Tensor:
        """Whether the classifier sees each attribute of each image's prompt: (6, N) bool, rows in
        :data:`VOCABULARIES` order. ``attributes`` is one per image, or one for all."""
        images = self._check(images)
        if isinstance(attributes, Attributes):
            attributes = (attributes,) * len(images)
        if len(attributes) != len(images):
            raise ShapeError("attributes", f"expected {len(images)} (one per image), got {len(attributes)}")
        if not all(isinstance(a, Attributes) for a in attributes):
            raise InvalidArgumentError("attributes", "expected Attributes")
        return _matches(self.predict(images), attributes)

    def adherence(self, images: torch.Tensor, attributes: Sequence[Attributes] | Attributes) -> torch.Tensor:
        """Per image, the fraction in [0, 1] of its prompt's six attributes the classifier sees
        in it: (N,)."""
        return self.matches(images, attributes).float().mean(0)

    def save(self, path: str | Path) -> None:
        """Write the weights and :attr:`metadata` (each value JSON-encoded) to ``path``."""
        meta = {k: json.dumps(v) for k, v in {**self.metadata, "vocabularies": VOCABULARIES}.items()}
        save_file({k: v.contiguous() for k, v in self.state_dict().items()}, str(path), metadata=meta)

    @classmethod
    def load(cls, path: str | Path | None = None) -> AttributeClassifier:
        """The classifier saved at ``path`` (None: the shipped one), in eval mode. Raises
        InvalidArgumentError when the file's vocabularies are not this world's."""
        path = SHIPPED if path is None else Path(path)
        if not path.is_file():
            raise InvalidArgumentError("path", f"no such file: {path}")
        with safe_open(str(path), "pt") as f:
            raw = f.metadata() or {}
        try:
            metadata = {k: json.loads(v) for k, v in raw.items()}
        except ValueError as e:
            raise InvalidArgumentError("path", f"{path} has metadata that is not JSON: {e}") from None
        vocabularies = {k: tuple(v) for k, v in metadata.get("vocabularies", {}).items()}
        if vocabularies != VOCABULARIES:
            raise InvalidArgumentError("path", f"{path} was trained on other vocabularies")
        model = cls(metadata)
        model.load_state_dict(load_file(str(path)))
        return model.eval()


def _matches(predicted: dict[str, torch.Tensor], attributes: Sequence[Attributes]) -> torch.Tensor:
    """Whether each predicted label is the true one: (attributes, N) bool, rows in
    VOCABULARIES order."""
    rows = [a.labels() for a in attributes]
    return torch.stack([
        predicted[name] == torch.tensor([r[name] for r in rows], device=predicted[name].device)
        for name in VOCABULARIES
    ])


def random_labels(count: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Uniform random labels of ``count`` images (modifiers uniform too; the shape's colour
    never the background's)."""
    labels = {name: torch.randint(len(v), (count,), generator=generator) for name, v in VOCABULARIES.items()}
    colours = tuple(COLOURS)
    background_colour = torch.tensor([colours.index(b) for b in BACKGROUNDS])[labels["background"]]
    colour = torch.randint(len(colours) - 1, (count,), generator=generator)
    labels["colour"] = colour + (colour >= background_colour).long()  # skip the background's colour
    return labels


def augment(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Degrade images (N, 3, H, W) in [-1, 1] as a generative model might: a shift of up to
    one pixel, blur (half the images), brightness and contrast changes of a few percent, and
    Gaussian noise of std uniform in [0, MAX_NOISE] (a quarter of the images stay noise-free)."""
    n, _, h, w = images.shape
    pad = torch.nn.functional.pad
    dx, dy = (int(v) for v in torch.randint(-1, 2, (2,), generator=generator))
    out = pad(images, (1, 1, 1, 1), mode="replicate")[:, :, 1 + dy:1 + dy + h, 1 + dx:1 + dx + w]
    sigma = 0.4 + 0.6 * float(torch.rand((), generator=generator))
    k = torch.exp(-torch.arange(-1.0, 2.0) ** 2 / (2 * sigma**2))
    kernel = (k[:, None] * k[None, :] / k.sum() ** 2).expand(3, 1, 3, 3)
    blurred = torch.nn.functional.conv2d(pad(out, (1, 1, 1, 1), mode="replicate"), kernel, groups=3)

    def uniform() -> torch.Tensor:
        return torch.rand(n, 1, 1, 1, generator=generator)

    out = torch.where(uniform() < 0.5, blurred, out)
    out = out * (1 + 0.1 * (uniform() - 0.5)) + 0.1 * (uniform() - 0.5)
    std = MAX_NOISE * uniform() * (uniform() < 0.75)
    return out + std * torch.randn(out.shape, generator=generator)


def train_classifier(
    steps: int = 3000,
    batch: int = 128,
    lr: float = 2e-3,
    seed: int = 0,
    log: Callable[[int, float], None] | None = None,
) -> AttributeClassifier:
    """Train a classifier on ``steps`` batches of fresh augmented renders with AdamW and a
    cosine learning-rate decay; ``log(step, loss)`` is called every 100 steps."""
    steps = check_int("steps", steps, minimum=1)
    batch = check_int("batch", batch, minimum=1)
    lr = check_real("lr", lr, positive=True)
    torch.manual_seed(check_int("seed", seed, minimum=0))
    generator = torch.Generator().manual_seed(seed)
    model = AttributeClassifier()
    optimiser = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps)))
    for step in range(steps):
        labels = random_labels(batch, generator)
        logits = model(augment(render_labels(labels, SIZE), generator))
        loss = sum(nn.functional.cross_entropy(logits[name], labels[name]) for name in VOCABULARIES)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        schedule.step()
        if log is not None and step % 100 == 0:
            log(step, float(loss.detach()))
    return model.eval()


def accuracy(model: AttributeClassifier, count: int = 2000, seed: int = 1, noise: float = 0.0) -> dict[str, float]:
    """Per attribute, the fraction of ``count`` fresh :class:`ShapesDataset` images (drawn with
    ``seed``, plus Gaussian pixel noise of std ``noise``) whose label the model predicts."""
    count = check_int("count", count, minimum=1)
    noise = check_real("noise", noise, nonnegative=True)
    data = ShapesDataset(count, seed=seed, size=SIZE)
    images = data.images()
    images = images + noise * torch.randn(images.shape, generator=torch.Generator().manual_seed(seed))
    hits = _matches(model.predict(images), data.attributes).float().mean(1)
    return dict(zip(VOCABULARIES, hits.tolist()))


def _main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=SHIPPED)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    model = train_classifier(
        args.steps, args.batch, seed=args.seed,
        log=lambda s, loss: print(f"step {s:5d}  loss {loss:.4f}  {time.perf_counter() - start:6.1f} s",
                                  flush=True),
    )
    seconds = time.perf_counter() - start
    evaluation = {"count": 2000, "seed": 1}
    model.metadata = {
        "steps": args.steps, "batch": args.batch, "seed": args.seed, "train_seconds": round(seconds, 1),
        "evaluation": evaluation,
        "accuracy": {f"noise={n}": accuracy(model, noise=n, **evaluation) for n in (0.0, 0.1, 0.2, 0.3)},
    }
    model.save(args.out)
    print(f"trained in {seconds:.0f} s; held-out accuracy (fresh renders, seed 1):")
    for setting, acc in model.metadata["accuracy"].items():
        print(f"  {setting:10s}", "  ".join(f"{k} {v:.3f}" for k, v in acc.items()))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    _main()
