"""SD3's MMDiT: forward time, JVP / VJP cost, structured Jacobian cost and MPC overhead per step.

Models (side by side in one run): the tiny MMDiT of ``tests/sd3_tiny.py`` with patch size 2 (as
SD3), random weights, a (1, 4, 32, 32) latent, always; with ``--full``, a transformer of SD3
medium's config (``stabilityai/stable-diffusion-3-medium-diffusers``' transformer/config.json:
patch 2, 16 channels, 24 layers, 24 heads of 64, joint_attention_dim 4096,
caption_projection_dim 1536, pooled 2048, pos_embed_max_size 192, sample_size 128) with random
weights, a (1, 16, 128, 128) latent and 333 text tokens (77 CLIP + 256 T5), meant for a GPU
(``--device cuda --dtype float16``). Embeddings are random.

Fields (each model): "guided", the adapter's ``SD3Dynamics.velocity`` with classifier-free
guidance (``--guidance``, the transformer on a batch of two: the sampler's per-step
evaluation), and "unguided", one transformer call on a batch of one. Both at sigma_k of SD3's
28-step grid (shift 3), k = ``--step``; estimators vmap ``--chunk-size`` (tiny) or
``--full-chunk-size`` JVPs at a time.

Figures per model and field:

- forward: median seconds of one call (1 NFE by definition); JVP (under the MATH attention
  kernel, its forward included), VJP (the backward pass alone) and VJP with its graph-recording
  forward, in NFE-equivalents (:func:`flowctl.adapters.sd3.jacobians.measure_product_cost`,
  ``--repeats`` timed calls each after one warm-up).
- Jacobian estimates (:mod:`flowctl.adapters.sd3.jacobians`): per-patch blocks (radius 0,
  C p^2 JVPs), the coloured diagonal (radius p - 1, C p^2 JVPs) and a Rademacher diagonal with
  as many probes: JVPs, cost in NFE-equivalents at the measured JVP cost, and wall time in
  NFE-equivalents (median of ``--repeats`` estimates; includes vmap batching). On the tiny model,
  each estimator's relative Frobenius error against the exact dense Jacobian on a (1, 4, E, E)
  latent (E = ``--error-latent``; dense by n JVPs) and the share of |J|_F outside the blocks.
- MPC per step: :func:`flowctl.mpc.euler_linearisation` of the block and diagonal estimates
  over ``--horizon`` grid steps (float32 for a half-precision model) and one
  ``StructuredBackend`` solve (q = 1, r = 0.1, unbounded, steering toward the denoised
  estimate): median milliseconds over ``--repeats`` after one warm-up, and the solve in
  NFE-equivalents.

Prints markdown tables; writes every figure to ``--out`` (JSON).

    .venv/bin/python benchmarks/sd3.py [--full [--full-layers 24] [--full-latent 128]]
        [--device cpu] [--dtype float32] [--repeats 5] [--horizon 5] [--out results/sd3.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import diffusers
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from flowctl.adapters.sd3.condition import SD3Condition  # noqa: E402
from flowctl.adapters.sd3.dynamics import SD3Dynamics  # noqa: E402
from flowctl.adapters.sd3.jacobians import (  # noqa: E402
    block_error,
    coloured_diagonal,
    math_attention,
    measure_estimate,
    measure_product_cost,
    median_seconds,
    patch_blocks,
    probed_diagonal,
)
from sd3_tiny import tiny_embeddings, tiny_transformer  # noqa: E402

from flowctl import SigmaGrid  # noqa: E402
from flowctl.jacobians import DenseJacobian  # noqa: E402
from flowctl.mpc import MPCConfig, StateLayout, StructuredBackend, euler_linearisation  # noqa: E402

SD3_MEDIUM = dict(
    sample_size=128, patch_size=2, in_channels=16, num_layers=24, attention_head_dim=64, num_attention_heads=24,
    joint_attention_dim=4096, caption_projection_dim=1536, pooled_projection_dim=2048, out_channels=16,
    pos_embed_max_size=192,
)
TEXT_TOKENS = 333  # 77 CLIP + 256 T5 tokens (max_sequence_length 256)
GRID_STEPS, GRID_SHIFT = 28, 3.0


def _embeddings(joint: int, pooled: int, tokens: int, like: dict) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    draw = lambda *shape: torch.randn(*shape, generator=g).to(**like)  # noqa: E731
    return {"prompt_embeds": draw(1, tokens, joint), "pooled_prompt_embeds": draw(1, pooled),
            "negative_prompt_embeds": draw(1, tokens, joint), "negative_pooled_prompt_embeds": draw(1, pooled)}


def tiny_model(like: dict):
    return "tiny", tiny_transformer(0, patch_size=2).to(**like), {k: v.to(**like) for k, v in tiny_embeddings().items()}, 32


def full_model(like: dict, layers: int, latent: int):
    from diffusers import SD3Transformer2DModel

    torch.manual_seed(0)
    with torch.device(like["device"]):
        model = SD3Transformer2DModel(**{**SD3_MEDIUM, "num_layers": layers}).eval()
    model = model.to(**like)
    emb = _embeddings(SD3_MEDIUM["joint_attention_dim"], SD3_MEDIUM["pooled_projection_dim"], TEXT_TOKENS, like)
    return f"SD3-medium config, {layers} layers", model, emb, latent


def fields(model, emb: dict, sigma: float, guidance: float) -> dict[str, Any]:
    dynamics = SD3Dynamics(model)
    guided = SD3Condition(**emb, guidance_scale=guidance)
    timestep = torch.tensor([sigma * 1000.0], dtype=model.dtype, device=model.device)

    def unguided(x: torch.Tensor) -> torch.Tensor:
        return model(hidden_states=x, encoder_hidden_states=emb["prompt_embeds"],
                     pooled_projections=emb["pooled_prompt_embeds"], timestep=timestep, return_dict=False)[0]

    return {"guided": lambda x: dynamics.velocity(x, sigma, guided), "unguided": unguided}


def estimators(patch: int, channels: int, chunk_size: int) -> dict[str, Any]:
    jvps = channels * patch * patch
    return {
        "patch blocks (r=0)": patch_blocks(patch, chunk_size=chunk_size),
        f"coloured diagonal (r={patch - 1})": coloured_diagonal(patch, chunk_size=chunk_size),
        f"Rademacher diagonal ({jvps} probes)": probed_diagonal(jvps, chunk_size=chunk_size),
    }


def errors(field, ests: dict[str, Any], like: dict, channels: int, size: int) -> dict[str, dict[str, float]]:
    """Each estimator's block_error against the dense Jacobian on a (1, C, size, size) latent."""
    x = torch.randn(1, channels, size, size, generator=torch.Generator().manual_seed(1)).to(**like)
    with math_attention():
        dense = DenseJacobian().estimate(field, x).data
        estimates = {name: est.estimate(field, x) for name, est in ests.items()}
    out = {}
    for name, e in estimates.items():
        held = torch.eye(x.numel(), dtype=torch.bool, device=x.device)
        if e.structure == "block":
            held[e.index[:, :, None], e.index[:, None, :]] = True
        outside = float(dense[~held].norm() / dense.norm())
        out[name] = {"error": block_error(e, dense), "outside_share": outside, "latent": list(x.shape)}
    return out


def mpc_step(estimate, field, x, sigma_index: int, horizon: int, repeats: int, forward_s: float) -> dict[str, Any]:
    grid = SigmaGrid.create(GRID_STEPS, GRID_SHIFT)
    ds = torch.stack([grid.dt(sigma_index + i) for i in range(horizon)])
    dtype = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype
    with torch.no_grad():
        v = field(x)
    sigma = float(grid.t(sigma_index))
    layout, n = StateLayout.of(estimate), x.numel()
    target = layout.permute((x - sigma * v).reshape(-1).to(dtype))  # the denoised estimate x0_hat
    reference, x0 = target.expand(horizon, n), layout.permute(x.reshape(-1).to(dtype))
    u_prev = torch.zeros_like(x0)
    config = MPCConfig(nx=n, nu=n, horizon=horizon, q=1.0, r=0.1)
    options = {"block_size": layout.block_size} if estimate.structure == "block" else {}
    backend = StructuredBackend(config, estimate.structure, **options)
    made = {}

    def linearise() -> None:
        made["lin"] = euler_linearisation(estimate, ds, v, x, dtype=dtype)

    linearise_s = median_seconds(linearise, x.device, repeats)
    solve_s = median_seconds(lambda: backend.solve(made["lin"], x0, reference, u_prev), x.device, repeats)
    return {"structure": estimate.structure, "nx": n, "block_size": layout.block_size, "horizon": horizon,
            "linearise_ms": 1e3 * linearise_s, "solve_ms": 1e3 * solve_s, "solve_nfe": solve_s / forward_s}


def run_model(name: str, model, emb: dict, latent: int, chunk_size: int, args, like: dict) -> dict[str, Any]:
    cfg = model.config
    c, p = cfg.in_channels, cfg.patch_size
    x = torch.randn(1, c, latent, latent, generator=torch.Generator().manual_seed(0)).to(**like)
    grid = SigmaGrid.create(GRID_STEPS, GRID_SHIFT)
    sigma = float(grid.t(args.step))
    result: dict[str, Any] = {"model": name, "latent": list(x.shape), "params": sum(t.numel() for t in model.parameters()),
                              "sigma": sigma, "fields": {}}
    for field_name, field in fields(model, emb, sigma, args.guidance).items():
        cost = measure_product_cost(field, x, repeats=args.repeats)
        ests = estimators(p, c, chunk_size)
        row: dict[str, Any] = {"forward_ms": 1e3 * cost.forward_s, "jvp_nfe": cost.rates["jvp"], "vjp_nfe": cost.rates["vjp"],
                               "vjp_with_forward_nfe": (cost.vjp_forward_s + cost.vjp_s) / cost.forward_s, "estimates": {}, "mpc": []}
        for est_name, est in ests.items():
            runs = [measure_estimate(est, field, x, product_cost=cost) for _ in range(args.repeats)]
            e = runs[0].estimate
            row["estimates"][est_name] = {"structure": e.structure, "jvps": e.cost.get("jvp", 0.0),
                                          "nfe_equivalents": runs[0].nfe_equivalents,
                                          "wall_nfe": statistics.median(r.wall_nfe for r in runs)}
            if est_name.startswith(("patch", "coloured")):
                row["mpc"].append(mpc_step(e, field, x, args.step, args.horizon, args.repeats, cost.forward_s))
        if name == "tiny" and args.error_latent:
            for est_name, err in errors(field, ests, like, c, args.error_latent).items():
                row["estimates"][est_name].update(err)
        result["fields"][field_name] = row
    return result


def _fmt(v: float, digits: int = 2) -> str:
    return f"{v:,.{digits}f}"


def print_tables(results: list[dict[str, Any]]) -> None:
    print("\n| model | field | latent | forward (ms) | JVP (NFE-eq) | VJP, backward (NFE-eq) | VJP with its forward (NFE-eq) |")
    print("|---|---|---|---:|---:|---:|---:|")
    for r in results:
        for f, row in r["fields"].items():
            print(f"| {r['model']} | {f} | {'x'.join(map(str, r['latent'][1:]))} | {_fmt(row['forward_ms'])} | "
                  f"{_fmt(row['jvp_nfe'])} | {_fmt(row['vjp_nfe'])} | {_fmt(row['vjp_with_forward_nfe'])} |")
    print("\n| model | field | estimate | JVPs | cost (NFE-eq) | wall (NFE-eq) | rel. error vs dense | |J| outside |")
    print("|---|---|---|---:|---:|---:|---:|---:|")
    for r in results:
        for f, row in r["fields"].items():
            for name, e in row["estimates"].items():
                err = f"{e['error']:.2e} ({'x'.join(map(str, e['latent'][1:]))})" if "error" in e else "-"
                outside = f"{e['outside_share']:.3f}" if "outside_share" in e else "-"
                print(f"| {r['model']} | {f} | {name} | {e['jvps']:.0f} | {_fmt(e['nfe_equivalents'], 1)} | "
                      f"{_fmt(e['wall_nfe'], 1)} | {err} | {outside} |")
    print("\n| model | field | linearisation | nx | block | horizon | build (ms) | StructuredBackend solve (ms) | solve (NFE-eq) |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|")
    for r in results:
        for f, row in r["fields"].items():
            for m in row["mpc"]:
                print(f"| {r['model']} | {f} | {m['structure']} | {m['nx']:,} | {m['block_size']} | {m['horizon']} | "
                      f"{_fmt(m['linearise_ms'])} | {_fmt(m['solve_ms'])} | {_fmt(m['solve_nfe'])} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--full", action="store_true", help="also the SD3-medium-sized transformer (random weights)")
    parser.add_argument("--full-layers", type=int, default=SD3_MEDIUM["num_layers"], help="layers of the full config (24; fewer only to check the script)")
    parser.add_argument("--full-latent", type=int, default=128, help="latent side of the full model (128 for 1024 px)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16", "float64"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--horizon", type=int, default=5, help="MPC horizon Np")
    parser.add_argument("--step", type=int, default=10, help="grid step k of the linearisation point (28-step grid)")
    parser.add_argument("--guidance", type=float, default=7.0, help="classifier-free guidance scale of the guided field")
    parser.add_argument("--chunk-size", type=int, default=16, help="JVPs per vmap call, tiny model")
    parser.add_argument("--full-chunk-size", type=int, default=2, help="JVPs per vmap call, full model (MATH attention holds "
                        "the (tokens x tokens) scores per head and per JVP: about 2 GB each at 128x128 in float16)")
    parser.add_argument("--error-latent", type=int, default=16, help="latent side for the dense-Jacobian error (tiny model; 0: skip)")
    parser.add_argument("--out", default=str(ROOT / "results" / "sd3.json"))
    args = parser.parse_args()
    like = {"device": torch.device(args.device), "dtype": getattr(torch, args.dtype)}
    started = time.perf_counter()
    results = [run_model(*tiny_model(like), args.chunk_size, args, like)]
    if args.full:
        results.append(run_model(*full_model(like, args.full_layers, args.full_latent), args.full_chunk_size, args, like))
    print_tables(results)
    meta = {"python": platform.python_version(), "torch": torch.__version__, "diffusers": diffusers.__version__,
            "machine": platform.machine(), "processor": platform.processor(), "threads": torch.get_num_threads(),
            "device": torch.cuda.get_device_name(like["device"]) if like["device"].type == "cuda" else "cpu",
            "args": vars(args), "seconds": time.perf_counter() - started}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    print(f"\n{meta['seconds']:.1f} s; wrote {out}")


if __name__ == "__main__":
    main()
