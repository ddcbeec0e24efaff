"""The main job for now: a prompt switch on the exact Gaussian-mixture flow.

Two "prompts" are two weight vectors over the same image-valued components. Prompt A is
generated from noise; the reference for B is B generated from the same noise. Each method then
resumes A's trajectory at ``resume_step`` with prompt B, and is scored against the reference.
Later issues replace this with the full benchmark (docs/conventions.md has the protocol terms).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch

from . import metrics
from ._checks import check_int, check_real
from .dynamics import BlendedDynamics, CountedDynamics
from .errors import InvalidArgumentError
from .sampling import SigmaGrid, integrate, resume
from .schedules import LinearSchedule, CosineSchedule, Schedule, StepSchedule, adaptive_sigmoid
from .systems import GaussianMixtureFlow

DATA_RANGE = 2.0  # component means live in [-1, 1]


@dataclass(frozen=True)
class DemoConfig:
    """Settings of the demo run.

    Attributes:
        steps: sampler steps N on SD3's sigma grid.
        shift: the grid's shift (SD3: 3.0).
        resume_step: grid step k at which B continues from A's state.
        transition: transition length (grid steps) of the linear and cosine blends.
        similarity: prompt similarity fed to the adaptive sigmoid (picks 3 / 5 / 8 steps).
        components: mixture components K.
        channels, size: each component mean is a (channels, size, size) image.
        std: per-component standard deviation (data units).
        prompt_shift: how far B's weights move from A's (scale of the logit change).
        seeds: number of noise samples (one batch).
        seed: master seed for the mixture, prompts and noise.
    """

    steps: int = 28
    shift: float = 3.0
    resume_step: int = 8
    transition: int = 5
    similarity: float = 0.92
    components: int = 64
    channels: int = 3
    size: int = 16
    std: float = 0.5
    prompt_shift: float = 2.0
    seeds: int = 8
    seed: int = 0

    def __post_init__(self) -> None:
        check_int("steps", self.steps, minimum=1)
        check_real("shift", self.shift, positive=True)
        check_int("resume_step", self.resume_step, minimum=0)
        if self.resume_step >= self.steps:
            raise InvalidArgumentError("resume_step", f"must be < steps ({self.steps}), got {self.resume_step}")
        check_int("transition", self.transition, minimum=1)
        check_real("similarity", self.similarity, low=-1.0, high=1.0)
        check_int("components", self.components, minimum=1)
        check_int("channels", self.channels, minimum=1)
        check_int("size", self.size, minimum=7)
        check_real("std", self.std, positive=True)
        check_real("prompt_shift", self.prompt_shift, nonnegative=True)
        check_int("seeds", self.seeds, minimum=1)
        check_int("seed", self.seed, minimum=0)


@dataclass(frozen=True)
class DemoRow:
    """One method's figures, means over the seeds.

    Attributes:
        method: what continued from the resume step.
        nfe: model evaluations after the resume step (per sample batch).
        psnr_db: PSNR to B's reference, dB, data range 2.
        ssim: SSIM to B's reference.
        seconds: wall time of the continuation.
    """

    method: str
    nfe: float
    psnr_db: float
    ssim: float
    seconds: float


@dataclass(frozen=True)
class DemoResult:
    config: DemoConfig
    reference_nfe: float
    rows: tuple[DemoRow, ...]

    def table(self) -> str:
        """The rows as a markdown table."""
        c = self.config
        lines = [
            f"Prompt switch on the exact Gaussian-mixture flow: {c.components} components of "
            f"{c.channels}x{c.size}x{c.size}, {c.steps} Euler steps (shift {c.shift}), resume at step "
            f"{c.resume_step}, {c.seeds} seeds. Reference: B from scratch ({self.reference_nfe:g} NFE). "
            f"PSNR with data range {DATA_RANGE:g}.",
            "",
            "| method | NFE | PSNR to reference (dB) | SSIM | time (ms) |",
            "|---|---:|---:|---:|---:|",
        ]
        for r in self.rows:
            psnr = "inf" if math.isinf(r.psnr_db) else f"{r.psnr_db:.2f}"
            lines.append(f"| {r.method} | {r.nfe:g} | {psnr} | {r.ssim:.4f} | {1e3 * r.seconds:.1f} |")
        return "\n".join(lines)


def smooth_image_means(components: int, channels: int, size: int, generator: torch.Generator) -> torch.Tensor:
    """``components`` smooth random images in [-1, 1]: sums of a few low-frequency waves."""
    coords = torch.linspace(0, 1, size, dtype=torch.float64)
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    waves = 4
    freq = torch.rand(components, channels, waves, 2, generator=generator, dtype=torch.float64) * 3
    phase = torch.rand(components, channels, waves, generator=generator, dtype=torch.float64) * 2 * math.pi
    arg = freq[..., 0, None, None] * xx + freq[..., 1, None, None] * yy
    img = torch.cos(2 * math.pi * arg + phase[..., None, None]).mean(2)
    return img / img.abs().amax(dim=(-2, -1), keepdim=True)


def run_demo(config: DemoConfig = DemoConfig()) -> DemoResult:
    """Generate A and B's reference, then continue A with B under each method."""
    c = config
    gen = torch.Generator().manual_seed(c.seed)
    means = smooth_image_means(c.components, c.channels, c.size, gen).float()
    flow = GaussianMixtureFlow(means, c.std)
    logits = torch.randn(c.components, generator=gen)
    w_a = torch.softmax(logits, 0)
    w_b = torch.softmax(logits + c.prompt_shift * torch.randn(c.components, generator=gen), 0)
    grid = SigmaGrid.create(c.steps, c.shift)
    noise = torch.randn(c.seeds, c.channels, c.size, c.size, generator=gen)

    model = CountedDynamics(flow)
    run_a = integrate(model, noise, grid, w_a, keep=[c.resume_step])
    model.counter.reset()
    reference = integrate(model, noise, grid, w_b, keep="final").final
    reference_nfe = model.nfe
    point = run_a.resume_point(c.resume_step)

    def score(method: str, final: torch.Tensor, nfe: float, seconds: float) -> DemoRow:
        return DemoRow(
            method,
            nfe,
            float(metrics.psnr(final, reference, data_range=DATA_RANGE).mean()),
            float(metrics.ssim(final, reference, data_range=DATA_RANGE, window_size=7).mean()),
            seconds,
        )

    rows = [score("A as is (no-op floor)", run_a.final, 0, 0.0)]
    schedules: list[tuple[str, Schedule]] = [
        ("direct switch", StepSchedule()),
        (f"linear blend ({c.transition} steps)", LinearSchedule(c.transition)),
        (f"cosine blend ({c.transition} steps)", CosineSchedule(c.transition)),
    ]
    adaptive = adaptive_sigmoid(c.similarity)
    schedules.append((f"adaptive sigmoid (sim {c.similarity:g}: {adaptive.length} steps)", adaptive))
    for name, schedule in schedules:
        model.counter.reset()
        blended = BlendedDynamics(model, schedule, grid, switch_step=c.resume_step)
        t0 = time.perf_counter()
        final = resume(blended, point, (w_a, w_b), keep="final").final
        rows.append(score(name, final, model.nfe, time.perf_counter() - t0))

    # Baseline: B from scratch with as many steps as a direct switch spends.
    model.counter.reset()
    t0 = time.perf_counter()
    short = integrate(model, noise, SigmaGrid.create(c.steps - c.resume_step, c.shift), w_b, keep="final").final
    rows.append(score(f"B from scratch, {c.steps - c.resume_step} steps", short, model.nfe, time.perf_counter() - t0))
    return DemoResult(c, reference_nfe, tuple(rows))
