"""The benchmark's outputs: the seed's two tables, the goals, JSON, a plot and an image grid.

Every figure printed here is computed from a :class:`BenchResult`; nothing is typed in.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Iterable
from dataclasses import asdict
from pathlib import Path

from .figures import image_grid, speedup_psnr_svg, write_png, write_text
from .pairs import BUCKET_NAMES
from .runner import FEWER, MISS, NOOP, BenchResult, Run

SEED_GOAL_SPEEDUP, SEED_GOAL_PSNR = 2.3, 39.5
DIRECT_MARGIN_DB = 3.0
NEAR_DIRECT_NFE = 1.0 + 1e-9  # "within one evaluation of the direct switch"
BASELINES = (NOOP, MISS)


def _mean(xs: Iterable[float]) -> float:
    xs = list(xs)
    return statistics.fmean(xs) if xs else math.nan


def _median(xs: Iterable[float]) -> float:
    xs = list(xs)
    return statistics.median(xs) if xs else math.nan


def _db(x: float | None) -> str:
    if x is None or math.isnan(x):
        return "-"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return f"{x:.2f}"


def _is_fewer(method: str) -> bool:
    return method.startswith(FEWER)


def aggregate(runs: Iterable[Run], steps: int) -> list[dict]:
    """Per method (in first-seen order): means of the quality figures, medians of times and
    speedups over the runs given."""
    groups: dict[str, list[Run]] = {}
    for r in runs:
        groups.setdefault(FEWER if _is_fewer(r.method) else r.method, []).append(r)
    rows = []
    for method, rs in groups.items():
        kinds = sorted({k for r in rs for k in r.nfe})
        rows.append({
            "method": method,
            "runs": len(rs),
            "resume_step": _mean(r.resume_step for r in rs if r.resume_step is not None),
            "horizon": _mean(r.horizon for r in rs if r.horizon is not None),
            "nfe": {k: _mean(r.nfe.get(k, 0.0) for r in rs) for k in kinds},
            "nfe_equivalents": _mean(r.nfe_equivalents for r in rs),
            "planning_ms": 1e3 * _median(r.planning for r in rs),
            "time_ms": 1e3 * _median(r.lookup + r.seconds for r in rs),
            "speedup": _median(r.speedup for r in rs) if method != NOOP else math.nan,
            "speedup_nfe": _median(r.speedup_nfe(steps) for r in rs) if method != NOOP else math.nan,
            "psnr": _mean(r.psnr for r in rs),
            "ssim": _mean(r.ssim for r in rs),
            "adherence": _mean(r.adherence for r in rs if not math.isnan(r.adherence)),
            "fewer_steps_psnr": _mean(r.fewer_steps_psnr for r in rs if r.fewer_steps_psnr is not None),
            "direct_psnr": _mean(r.direct_psnr for r in rs if r.direct_psnr is not None),
            "equal_cost_psnr": _mean(r.equal_cost_psnr for r in rs if r.equal_cost_psnr is not None),
            "fallbacks": sum(r.fallbacks for r in rs),
            "statuses": sorted({r.status for r in rs}),
        })
    return rows


def summary(result: BenchResult) -> dict:
    """Table 1 rows per bucket, table 2 rows, the sweep points and the goals, as plain data."""
    n = result.config.steps
    policy_runs = [r for r in result.runs if not r.sweep]
    table1 = {b: aggregate([r for r in policy_runs if r.bucket == b], n) for b in BUCKET_NAMES}
    table2 = [_bucket_row(b, table1[b], [r for r in policy_runs if r.bucket == b]) for b in BUCKET_NAMES if table1[b]]
    sweep = {}
    for k in sorted({r.resume_step for r in result.runs if r.sweep}):
        sweep[k] = aggregate([r for r in result.runs if r.sweep and r.resume_step == k], n)
    return {"table1": table1, "table2": table2, "sweep": sweep, "goals": _goals(result, table1, sweep)}


def _methods(rows: list[dict]) -> list[dict]:
    return [r for r in rows if r["method"] not in BASELINES and not _is_fewer(r["method"])]


def _bucket_row(bucket: str, rows: list[dict], runs: list[Run]) -> dict:
    by = {r["method"]: r for r in rows}
    methods = _methods(rows)
    best = max(methods, key=lambda r: r["psnr"], default=None)
    faster = [r for r in methods if r["speedup"] > 1.0]
    best_fast = max(faster, key=lambda r: r["psnr"], default=None)
    pick = lambda r: None if r is None else {k: r[k] for k in ("method", "psnr", "speedup", "speedup_nfe")}  # noqa: E731
    return {
        "bucket": bucket,
        "pairs": len({r.pair for r in runs}),
        "similarity": _mean(r.similarity for r in runs),
        "lookup_similarity": _mean(r.lookup_similarity for r in runs),
        "resume_step": _mean(r.resume_step for r in runs if r.resume_step is not None),
        "horizon": _mean(r.horizon for r in runs if r.horizon is not None),
        "noop_psnr": by.get(NOOP, {}).get("psnr", math.nan),
        "direct": pick(by.get("direct switch")),
        "fewer": pick(by.get(FEWER)),
        "best": pick(best),
        "best_faster_than_scratch": pick(best_fast),
    }


def _goals(result: BenchResult, table1: dict, sweep: dict) -> dict:
    """The benchmark's goals (docs/cache.md), judged on the measured figures."""
    top = [r for rows in [table1.get(BUCKET_NAMES[0], [])] + list(sweep.values()) for r in _methods(rows)]
    reach = [r for r in top if r["speedup"] >= SEED_GOAL_SPEEDUP]
    best_at_speed = max(reach, key=lambda r: r["psnr"], default=None)
    verdicts = {}
    for method in dict.fromkeys(r["method"] for r in top):
        points = [r for r in top if r["method"] == method]
        verdicts[method] = {
            "points": len(points),
            "min_margin_over_direct_db": min(r["psnr"] - r["direct_psnr"] for r in points),
            "min_margin_over_fewer_steps_db": min(r["psnr"] - r["fewer_steps_psnr"] for r in points),
        }
        v = verdicts[method]
        v["beats_direct_by_3db_everywhere"] = v["min_margin_over_direct_db"] >= DIRECT_MARGIN_DB
        v["beats_fewer_steps_everywhere"] = v["min_margin_over_fewer_steps_db"] > 0
    return {
        "near_direct_cost": _near_direct(table1, [r for r in result.runs if not r.sweep]),
        "largest_speedup_at_seed_psnr": _largest_speedup(top),
        "seed_claim": {"speedup": SEED_GOAL_SPEEDUP, "psnr": SEED_GOAL_PSNR},
        "best_psnr_at_or_above_seed_speedup": None if best_at_speed is None else {k: best_at_speed[k] for k in ("method", "psnr", "speedup")},
        "seed_claim_met": best_at_speed is not None and best_at_speed["psnr"] >= SEED_GOAL_PSNR,
        "per_method": verdicts,
    }


def _near_direct(table1: dict, runs: list[Run]) -> dict:
    """Per bucket, the methods spending at most one NFE-equivalent more than the direct switch,
    with their mean margin over it at its own cost and at theirs (the direct switch resumed
    earlier), and their worst pair's margin."""
    out = {}
    for bucket, rows in table1.items():
        direct = next((r for r in rows if r["method"] == "direct switch"), None)
        if direct is None:
            continue
        worst = lambda m: min((r.psnr - r.direct_psnr for r in runs if r.bucket == bucket and r.method == m and r.direct_psnr is not None),  # noqa: E731
                              default=math.nan)
        direct_time = {r.pair: r.seconds for r in runs if r.bucket == bucket and r.method == "direct switch"}
        overhead = lambda m: _median(100 * (r.seconds - direct_time[r.pair]) / r.scratch  # noqa: E731
                                     for r in runs if r.bucket == bucket and r.method == m and r.pair in direct_time)
        out[bucket] = {
            r["method"]: {"extra_nfe": r["nfe_equivalents"] - direct["nfe_equivalents"],
                          "margin_db": r["psnr"] - direct["psnr"], "equal_cost_margin_db": r["psnr"] - r["equal_cost_psnr"],
                          "worst_pair_margin_db": worst(r["method"]), "fallbacks": r["fallbacks"],
                          "time_over_direct_pct": overhead(r["method"])}
            for r in _methods(rows) if r["method"] != "direct switch" and r["nfe_equivalents"] <= direct["nfe_equivalents"] + NEAR_DIRECT_NFE
        }
    return out


def _largest_speedup(points: list[dict]) -> dict:
    """Per method, the largest speedup (wall time, and in NFE) among its points with PSNR >= the
    seed's quality; None where no point reaches it."""
    out = {}
    for method in dict.fromkeys(r["method"] for r in points):
        good = [r for r in points if r["method"] == method and r["psnr"] >= SEED_GOAL_PSNR]
        out[method] = None if not good else {
            "speedup": max(r["speedup"] for r in good), "speedup_nfe": max(r["speedup_nfe"] for r in good)}
    return out


def _x(x: float) -> str:
    return "-" if math.isnan(x) else f"{x:.2f}x"


def _nfe_text(nfe: dict) -> str:
    return " / ".join(f"{v:.0f} {k}" for k, v in nfe.items()) or "0"


def markdown(result: BenchResult) -> str:
    """The report: settings, table 1 per bucket, table 2, the goals and the sweep."""
    c, s = result.config, summary(result)
    cost = result.cost["relative"]
    lines = [
        "# Cross-prompt caching benchmark",
        "",
        f"Model `{result.model}`; text encoder {result.encoder}; {c.steps} Euler steps, shift {c.shift:g}; "
        f"policy `{c.policy}`; {c.seeds} seeds per pair; {len(result.pairs)} prompt pairs. PSNR and SSIM to B "
        f"from scratch from the same noise (data range 2); {result.adherence_note or 'no adherence measure'}. "
        f"Cost of a model call relative to a forward one: "
        + ", ".join(f"{k} {v:.2f}" for k, v in cost.items())
        + f". Times are medians; speedup = B from scratch / (look-up + planning + continuation). "
        f"Benchmark wall time {result.seconds:.0f} s.",
        "",
        "## Table 1: methods at the policy's resume step",
    ]
    head = ("| method | k / H | planning (ms) | NFE by kind | NFE-eq. | time (ms) | speedup | speedup (NFE) "
            "| PSNR (dB) | SSIM | adherence | fewer steps, same NFE-eq. (dB) | direct switch, same NFE-eq. (dB) "
            "| margin at equal cost (dB) | fallbacks | status |")
    for bucket, rows in s["table1"].items():
        if not rows:
            continue
        lines += ["", f"### similarity {bucket}", "", head, "|---" * 16 + "|"]
        for r in rows:
            kh = "-" if math.isnan(r["horizon"]) else f"{r['resume_step']:.3g} / {r['horizon']:.3g}"
            lines.append(
                f"| {r['method']} | {kh} | {r['planning_ms']:.1f} | {_nfe_text(r['nfe'])} | {r['nfe_equivalents']:.1f} "
                f"| {r['time_ms']:.1f} | {_x(r['speedup'])} | {_x(r['speedup_nfe'])} | {_db(r['psnr'])} | {r['ssim']:.4f} "
                f"| {_db(r['adherence'])} | {_db(r['fewer_steps_psnr'])} | {_db(r['equal_cost_psnr'])} "
                f"| {_db(r['psnr'] - r['equal_cost_psnr'])} | {r['fallbacks']} | {', '.join(r['statuses'])} |"
            )
    lines += [
        "",
        "## Table 2: by similarity",
        "",
        "| similarity | pairs | cosine A-B | cosine of match | k / H | no-op floor (dB) | direct switch (dB, speedup) "
        "| fewer steps, same NFE (dB) | best method (dB, speedup) | best with speedup > 1 (dB, speedup) |",
        "|---" * 10 + "|",
    ]
    cell = lambda r: "-" if r is None else f"{r['method']}: {_db(r['psnr'])}, {r['speedup']:.2f}x"  # noqa: E731
    for r in s["table2"]:
        lines.append(
            f"| {r['bucket']} | {r['pairs']} | {r['similarity']:.3f} | {r['lookup_similarity']:.3f} "
            f"| {r['resume_step']:.3g} / {r['horizon']:.3g} | {_db(r['noop_psnr'])} "
            f"| {cell(r['direct'])} | {cell(r['fewer'])} | {cell(r['best'])} | {cell(r['best_faster_than_scratch'])} |"
        )
    g = s["goals"]
    best = g["best_psnr_at_or_above_seed_speedup"]
    lines += [
        "",
        "## Goals (similarity > 0.95, policy step and sweep)",
        "",
        f"- Seed's claim {SEED_GOAL_SPEEDUP}x at {SEED_GOAL_PSNR} dB: "
        + ("no method reached the speedup." if best is None else
           f"best PSNR at >= {SEED_GOAL_SPEEDUP}x is {best['method']} with {_db(best['psnr'])} dB at {best['speedup']:.2f}x: "
           + ("met." if g["seed_claim_met"] else "not met.")),
        "",
        "| method | points | min margin over direct switch (dB) | >= 3 dB everywhere | min margin over fewer steps (dB) | beats fewer steps everywhere |",
        "|---|---:|---:|---|---:|---|",
    ]
    for method, v in g["per_method"].items():
        lines.append(
            f"| {method} | {v['points']} | {v['min_margin_over_direct_db']:.2f} | {'yes' if v['beats_direct_by_3db_everywhere'] else 'no'} "
            f"| {_db(v['min_margin_over_fewer_steps_db'])} | {'yes' if v['beats_fewer_steps_everywhere'] else 'no'} |"
        )
    lines += ["", f"Largest speedup at PSNR >= {SEED_GOAL_PSNR} dB (similarity > 0.95, policy step and sweep; wall time / NFE):", "",
              "| method | speedup | speedup (NFE) |", "|---|---:|---:|"]
    for method, v in g["largest_speedup_at_seed_psnr"].items():
        lines.append(f"| {method} | {'-' if v is None else _x(v['speedup'])} | {'-' if v is None else _x(v['speedup_nfe'])} |")
    lines += ["", "Within one NFE-equivalent of the direct switch, at the policy's step: mean margin over the direct switch "
              "at its own cost and at equal cost, the worst pair's margin (dB), samples fallen back, and the wall time "
              "spent beyond the direct switch's as a share of B from scratch (median over pairs):", "",
              "| similarity | method | extra NFE-eq. | margin (dB) | margin at equal cost (dB) | worst pair (dB) | fallbacks | extra time (% of a generation) |",
              "|---|---|---:|---:|---:|---:|---:|---:|"]
    for bucket, methods in g["near_direct_cost"].items():
        for method, v in methods.items():
            lines.append(f"| {bucket} | {method} | {v['extra_nfe']:.2f} | {v['margin_db']:.2f} | {_db(v['equal_cost_margin_db'])} "
                         f"| {_db(v['worst_pair_margin_db'])} | {v['fallbacks']} | {v['time_over_direct_pct']:.1f} |")
    if s["sweep"]:
        lines += ["", "## Sweep over the resume step (similarity > 0.95): PSNR (dB) / speedup", ""]
        steps = list(s["sweep"])
        lines += ["| method | " + " | ".join(f"k = {k}" for k in steps) + " |", "|---" * (len(steps) + 1) + "|"]
        methods = dict.fromkeys(r["method"] for rows in s["sweep"].values() for r in rows)
        for m in methods:
            cells = []
            for k in steps:
                r = next((r for r in s["sweep"][k] if r["method"] == m), None)
                cells.append("-" if r is None else f"{_db(r['psnr'])} / {_x(r['speedup'])}")
            lines.append(f"| {m} | " + " | ".join(cells) + " |")
    if result.images:
        lines += ["", "## Images", "", "`grid.png`, one row per bucket (seed 0 of its first pair), columns:", ""]
        labels = next(iter(result.images.values()))[0]
        lines.append(", ".join(f"{i + 1}. {label}" for i, label in enumerate(labels)))
    return "\n".join(lines) + "\n"


def to_json(result: BenchResult) -> dict:
    """Every run and every summarised figure (inf and nan as strings)."""
    return _jsonable({
        "config": asdict(result.config),
        "encoder": result.encoder,
        "model": result.model,
        "adherence": result.adherence_note,
        "cost": result.cost,
        "seconds": result.seconds,
        "pairs": [asdict(p) for p in result.pairs],
        "runs": [asdict(r) | {"speedup": r.speedup, "speedup_nfe": r.speedup_nfe(result.config.steps)} for r in result.runs],
        "summary": summary(result),
    })


def _jsonable(x):
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    return x


def plot(result: BenchResult) -> str:
    """Speedup vs PSNR of every method over the sweep (and the policy's step) at similarity > 0.95."""
    series: dict[str, list[tuple[float, float]]] = {}
    top = [r for r in result.runs if r.bucket == BUCKET_NAMES[0] and r.method != NOOP]
    keys = sorted({(r.sweep, r.resume_step) for r in top}, key=str)
    for sweep, k in keys:
        for row in aggregate([r for r in top if r.sweep == sweep and r.resume_step == k], result.config.steps):
            series.setdefault(row["method"], []).append((row["speedup"], row["psnr"]))
    floor = _mean(r.psnr for r in result.runs if r.bucket == BUCKET_NAMES[0] and r.method == NOOP)
    lines = {"no-op floor": floor} if math.isfinite(floor) else {}  # A = B: the floor is the reference
    return speedup_psnr_svg(series, title=f"similarity {BUCKET_NAMES[0]}: speedup vs PSNR to the reference", reference_lines=lines)


def write_outputs(result: BenchResult, directory: str | Path) -> dict[str, Path]:
    """Write results.json, report.md, speedup_psnr.svg and grid.png into ``directory``."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    paths = {name: out / name for name in ("results.json", "report.md", "speedup_psnr.svg", "grid.png")}
    write_text(paths["results.json"], json.dumps(to_json(result), indent=1))
    write_text(paths["report.md"], markdown(result))
    write_text(paths["speedup_psnr.svg"], plot(result))
    if result.images:
        rows = [list(images) for _, images in result.images.values()]
        write_png(paths["grid.png"], image_grid(rows, scale=2))
    else:
        del paths["grid.png"]
    return paths
