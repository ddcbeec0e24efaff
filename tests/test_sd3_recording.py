"""Caching through an unmodified StableDiffusion3Pipeline (tiny, random, CPU): the recorder keeps
the run's latents as flowctl's loop does, and resuming the pipeline inside identity_shift is
bit-exact; without it, it is not (the double-shift trap)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("diffusers")

from flowctl.adapters.sd3 import SD3Condition, SD3Dynamics, denoise, pipeline_grid  # noqa: E402
from flowctl.adapters.sd3.recording import TrajectoryRecorder, identity_shift, resume_kwargs  # noqa: E402
from flowctl.errors import InvalidArgumentError, ShapeError  # noqa: E402
from flowctl.transitions import DirectSwitch, TransitionRequest  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from sd3_tiny import tiny_embeddings, tiny_pipeline  # noqa: E402

SIZE, STEPS = 16, 6


def run_pipe(pipe, e, guidance, **kwargs):
    side = SIZE * pipe.vae_scale_factor
    kwargs.setdefault("num_inference_steps", STEPS)
    return pipe(**e, guidance_scale=guidance, output_type="latent", height=side, width=side, **kwargs).images


def condition(e, guidance):
    if guidance <= 1:
        return SD3Condition(e["prompt_embeds"], e["pooled_prompt_embeds"], guidance_scale=guidance)
    return SD3Condition(**e, guidance_scale=guidance)


@pytest.mark.parametrize("dynamic, guidance", [(False, 4.0), (True, 1.0)])
def test_record_then_resume_through_the_pipeline_is_bit_exact(dynamic, guidance):
    pipe = tiny_pipeline(shift=3.0, dynamic=dynamic)
    pipe.set_progress_bar_config(disable=True)
    noise = torch.randn(1, 4, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    a, b = tiny_embeddings(seed=0), tiny_embeddings(seed=5)
    recorder = TrajectoryRecorder([0, 2, 4])
    full = run_pipe(pipe, a, guidance, latents=noise, callback_on_step_end=recorder)
    entry = recorder.entry(prompt="a", embedding=torch.ones(8), noise=noise)

    dynamics = SD3Dynamics(pipe.transformer)
    run = denoise(dynamics, noise, condition(a, guidance), pipeline_grid(pipe, STEPS, noise), keep=[0, 2, 4])
    assert all(torch.equal(entry.states[k], run.states[k]) for k in (0, 2, 4))
    assert entry.key.guidance == guidance and entry.key.model == dynamics.fingerprint and not entry.velocities

    scheduler = pipe.scheduler
    with identity_shift(pipe):
        same = run_pipe(pipe, a, guidance, **resume_kwargs(entry, 2))
        switched = run_pipe(pipe, b, guidance, **resume_kwargs(entry, 4))
    assert pipe.scheduler is scheduler  # restored
    assert torch.equal(same, full)  # the uninterrupted run, bit for bit
    direct = DirectSwitch().run(TransitionRequest(dynamics, entry.resume_point(4), condition(a, guidance), condition(b, guidance)))
    assert torch.equal(switched, direct.final)  # flowctl's direct switch, bit for bit

    trap = run_pipe(pipe, a, guidance, **resume_kwargs(entry, 2))  # the pipeline's own scheduler shifts again
    assert not torch.allclose(trap, full, atol=1e-3)


def test_bad_use_is_a_typed_error():
    pipe = tiny_pipeline()
    pipe.set_progress_bar_config(disable=True)
    recorder = TrajectoryRecorder([2])
    with pytest.raises(InvalidArgumentError, match="has not seen a run"):
        recorder.entry(prompt="a", embedding=torch.ones(8), noise=torch.zeros(1, 4, SIZE, SIZE))
    noise = torch.randn(1, 4, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    run_pipe(pipe, tiny_embeddings(), 1.0, latents=noise, callback_on_step_end=recorder)
    with pytest.raises(ShapeError):
        recorder.entry(prompt="a", embedding=torch.ones(8), noise=noise[..., :8])
    entry = recorder.entry(prompt="a", embedding=torch.ones(8), noise=noise)
    with pytest.raises(InvalidArgumentError, match="not cached"):
        resume_kwargs(entry, 3)
    with pytest.raises(InvalidArgumentError):
        resume_kwargs("an entry", 2)
    with pytest.raises(InvalidArgumentError):
        TrajectoryRecorder([])
    with pytest.raises(InvalidArgumentError, match="steps"):
        late = TrajectoryRecorder([9])
        run_pipe(pipe, tiny_embeddings(), 1.0, latents=noise, callback_on_step_end=late)
        late.entry(prompt="a", embedding=torch.ones(8), noise=noise)
