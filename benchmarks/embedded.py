"""The embedded shapes model's quality: what its images show, read by the attribute classifier.

Prompts: ``--prompts`` fresh captions of :class:`flowctl.data.shapes_dataset.ShapesDataset`
(seed ``--data-seed``, not the training seed 0; captions are paraphrases, and an attribute
combination may also occur in training: the world has about 46,000), plus the B prompts of the
shipped benchmark pairs that describe one shape. One image per prompt, noise seed = its index,
``--steps`` Euler steps on the model's grid (shift 3), at each guidance scale of ``--guidance``.

Figures per guidance scale: the classifier's per-attribute agreement with the prompt (shape,
colour, size, position, background, modifier), adherence (the mean of the six: the benchmark's
adherence), and the fraction of images showing all six. Beside them, the same classifier on the
true renders of the same prompts (its own ceiling on this set), and on images of shuffled prompts
(the floor: attributes that agree by chance). Also the seconds per image at the default guidance.

Writes ``--out``/quality.json (every figure) and ``--out``/samples.png (rows: the first
``--grid-prompts`` prompts; columns: ``--grid-seeds`` seeds at the default guidance, then the
true render); prints a markdown table.

    .venv/bin/python benchmarks/embedded.py [--prompts 256] [--guidance 1 2 4 7] [--out results/embedded]
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import torch

from flowctl.adapters.sd3.embedded import GUIDANCE, embedded_grid, embedded_noise, load_embedded, to_image
from flowctl.bench.figures import image_grid, write_png
from flowctl.bench.pairs import PROMPT_PAIRS
from flowctl.data.attributes import AttributeClassifier
from flowctl.data.prompts import parse_prompt
from flowctl.data.shapes_dataset import VOCABULARIES, ShapesDataset, render_attributes
from flowctl.sampling import integrate
from flowctl.text import MiniLMEncoder


def generate(dynamics, prompts: list[str], seeds: list[int], steps: int, batch: int) -> torch.Tensor:
    """One image per (prompt, seed), in batches: (N, 3, 32, 32) in [-1, 1]."""
    grid, out = embedded_grid(steps), []
    for start in range(0, len(prompts), batch):
        chunk = prompts[start : start + batch]
        noise = torch.cat([embedded_noise(s, dynamics)[0] for s in seeds[start : start + batch]])
        cond = dynamics.prompts.encode_many(chunk)
        out.append(to_image(integrate(dynamics, noise, grid, cond, keep="final").final))
    return torch.cat(out)


def scores(classifier: AttributeClassifier, images: torch.Tensor, attributes) -> dict[str, float]:
    hits = classifier.matches(images, attributes).float()  # (6, N)
    per = {name: float(hits[i].mean()) for i, name in enumerate(VOCABULARIES)}
    return per | {"adherence": float(hits.mean()), "all six": float(hits.all(0).float().mean())}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--prompts", type=int, default=256)
    p.add_argument("--data-seed", type=int, default=2026)
    p.add_argument("--guidance", type=float, nargs="+", default=[1.0, 2.0, GUIDANCE, 7.0])
    p.add_argument("--steps", type=int, default=28)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--grid-prompts", type=int, default=8)
    p.add_argument("--grid-seeds", type=int, default=6)
    p.add_argument("--weights", type=Path, default=None, help="a model folder (default: the shipped one)")
    p.add_argument("--out", type=Path, default=Path("results/embedded"))
    args = p.parse_args()

    data = ShapesDataset(args.prompts, seed=args.data_seed)
    pair_prompts = [q for q in dict.fromkeys(pair.b for pair in PROMPT_PAIRS) if parse_prompt(q) is not None]
    prompts = list(data.captions) + pair_prompts
    attributes = list(data.attributes) + [parse_prompt(q) for q in pair_prompts]
    seeds = list(range(len(prompts)))
    classifier = AttributeClassifier.load()
    encoder = MiniLMEncoder()
    truth = render_attributes(attributes)
    shuffled = attributes[:]
    random.Random(0).shuffle(shuffled)
    rows = {"true renders (classifier ceiling)": scores(classifier, truth, attributes),
            "true renders, shuffled prompts (chance)": scores(classifier, truth, shuffled)}
    seconds = {}
    for g in args.guidance:
        dynamics = load_embedded(args.weights, guidance_scale=g, encoder=encoder)
        start = time.perf_counter()
        images = generate(dynamics, prompts, seeds, args.steps, args.batch)
        seconds[g] = (time.perf_counter() - start) / len(prompts)
        rows[f"generated, guidance {g:g}"] = scores(classifier, images, attributes)
        rows[f"generated, guidance {g:g}, pair prompts only"] = scores(classifier, images[args.prompts:], attributes[args.prompts:])

    dynamics = load_embedded(args.weights, encoder=encoder)
    shown = args.grid_prompts
    picked = prompts[:shown]
    samples = generate(dynamics, [q for q in picked for _ in range(args.grid_seeds)], list(range(shown * args.grid_seeds)), args.steps, args.batch)
    cells = [list(samples[i * args.grid_seeds : (i + 1) * args.grid_seeds]) + [truth[i]] for i in range(shown)]
    args.out.mkdir(parents=True, exist_ok=True)
    write_png(args.out / "samples.png", image_grid(cells, pad=2, scale=3))
    record = {"model": dynamics.fingerprint, "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
              "prompts": len(prompts), "pair_prompts": len(pair_prompts), "seconds_per_image": seconds, "rows": rows,
              "grid_prompts": picked, "torch_threads": torch.get_num_threads()}
    (args.out / "quality.json").write_text(json.dumps(record, indent=1))

    names = [*VOCABULARIES, "adherence", "all six"]
    print(f"Model `{dynamics.fingerprint}`; {len(prompts)} prompts ({args.prompts} fresh dataset captions, seed {args.data_seed}; "
          f"{len(pair_prompts)} benchmark B prompts); {args.steps} Euler steps, shift 3; one image per prompt.\n")
    print("| images | " + " | ".join(names) + " |")
    print("|---" + "|---:" * len(names) + "|")
    for label, r in rows.items():
        print(f"| {label} | " + " | ".join(f"{r[n]:.3f}" for n in names) + " |")
    print("\nSeconds per image (batch of " + str(args.batch) + "): " + ", ".join(f"guidance {g:g}: {s:.4f}" for g, s in seconds.items()))
    print(f"\nwrote {args.out / 'quality.json'}, {args.out / 'samples.png'}; grid rows: " + "; ".join(picked))


if __name__ == "__main__":
    main()
