"""The SD3 adapter on tiny, randomly initialised SD3 parts (tests/sd3_tiny.py): offline, CPU.

The golden reference is diffusers' own ``StableDiffusion3Pipeline``: the adapter's loop must
return its latents bit for bit (``torch.equal``), and a resume at any step must equal the
uninterrupted run bit for bit.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")

from flowctl.adapters.sd3 import (  # noqa: E402
    CheckpointError,
    CheckpointNotFoundError,
    DeviceMemoryError,
    MissingTextEncoderError,
    NotSD3CheckpointError,
    SD3Condition,
    SD3Dynamics,
    SD3PooledEncoder,
    UnsupportedSchedulerError,
    decode,
    denoise,
    load_pipeline,
    make_strategy,
    math_attention,
    noise_latents,
    pipeline_grid,
    scheduler_grid,
    to_uint8,
)
from flowctl.cache import CachedGenerator, CacheStore, DiskStore  # noqa: E402
from flowctl.dynamics import CountedDynamics, derivative_mode  # noqa: E402
from flowctl.errors import InvalidArgumentError, NonFiniteError, ShapeError, UnknownNameError  # noqa: E402
from flowctl.jacobians import ColouredJacobian  # noqa: E402
from flowctl.ocp import LeastSquaresOptions  # noqa: E402
from flowctl.sampling import resume  # noqa: E402
from flowctl.text import HashingEncoder  # noqa: E402
from flowctl.transitions import (  # noqa: E402
    Blend, ClosedFormController, DirectSwitch, SecantCorrection, Shooting, ShootingMPC, TransitionRequest,
)

sys.path.insert(0, str(Path(__file__).parent))
from sd3_tiny import tiny_embeddings, tiny_pipeline, tiny_text_pipeline  # noqa: E402

SIZE = 16  # latent side; images are 2x (the tiny VAE's scale factor)
STEPS = 6

SD35 = dict(dual_attention_layers=(0,), qk_norm="rms_norm")
CONFIGS = {
    "shift1": dict(shift=1.0),
    "shift3": dict(shift=3.0),
    "dynamic": dict(shift=3.0, dynamic=True),
    "sd35": dict(shift=3.0, **SD35),
}
_PIPES: dict[str, object] = {}


def pipe_for(config: str):
    if config not in _PIPES:
        pipe = tiny_pipeline(**CONFIGS[config])
        pipe.set_progress_bar_config(disable=True)
        _PIPES[config] = pipe
    return _PIPES[config]


@pytest.fixture(scope="module")
def text_pipe():
    pipe = tiny_text_pipeline()
    pipe.set_progress_bar_config(disable=True)
    return pipe


def latents(seed: int = 1, size: int = SIZE, dtype=torch.float32) -> torch.Tensor:
    return torch.randn(1, 4, size, size, generator=torch.Generator().manual_seed(seed)).to(dtype)


def condition(guidance: float, seed: int = 0, dtype=torch.float32) -> tuple[SD3Condition, dict]:
    e = {k: v.to(dtype) for k, v in tiny_embeddings(seed=seed).items()}
    if guidance <= 1:
        return SD3Condition(e["prompt_embeds"], e["pooled_prompt_embeds"], guidance_scale=guidance), e
    return SD3Condition(**e, guidance_scale=guidance), e


def pipe_latents(pipe, x: torch.Tensor, e: dict, guidance: float, steps: int = STEPS) -> torch.Tensor:
    side = x.shape[-1] * pipe.vae_scale_factor
    return pipe(**e, latents=x, num_inference_steps=steps, guidance_scale=guidance, output_type="latent", height=side, width=side).images


# --- the loop equals the pipeline ---------------------------------------------------------------

@pytest.mark.parametrize("guidance", [1.0, 5.0])
@pytest.mark.parametrize("config", list(CONFIGS))
def test_loop_equals_pipeline_bit_for_bit(config, guidance):
    pipe = pipe_for(config)
    x = latents()
    cond, e = condition(guidance)
    run = denoise(SD3Dynamics.from_pipeline(pipe), x, cond, pipeline_grid(pipe, STEPS, x))
    reference = pipe_latents(pipe, x, e, guidance)
    assert torch.equal(run.final, reference)
    assert not torch.equal(run.final, x)


def test_loop_equals_pipeline_in_bfloat16():
    pipe = tiny_pipeline(shift=3.0)
    pipe.set_progress_bar_config(disable=True)
    torch.nn.Module.to(pipe.transformer, torch.bfloat16)
    x = latents(dtype=torch.bfloat16)
    cond, e = condition(5.0, dtype=torch.bfloat16)
    run = denoise(SD3Dynamics(pipe.transformer), x, cond, pipeline_grid(pipe, STEPS, x))
    assert run.final.dtype == torch.bfloat16
    assert torch.equal(run.final, pipe_latents(pipe, x, e, 5.0))


def test_dynamic_shift_is_the_pipelines_mu():
    pipe = pipe_for("dynamic")
    x = latents()
    grid = pipeline_grid(pipe, STEPS, x)
    # the pipeline's mu for a 16 x 16 patch grid: base 0.5 + (256 - 256) * slope
    assert grid.mu == pytest.approx(0.5)
    pipe.scheduler.set_timesteps(STEPS, mu=grid.mu)
    assert torch.equal(grid.sigmas, pipe.scheduler.sigmas)
    bigger = pipeline_grid(pipe, STEPS, latents(size=2 * SIZE))
    assert bigger.mu > grid.mu and not torch.equal(bigger.sigmas, grid.sigmas)


def test_prompt_condition_equals_pipeline_with_prompts(text_pipe):
    dynamics = SD3Dynamics.from_pipeline(text_pipe, guidance_scale=4.0, negative_prompt="blurry", max_sequence_length=8)
    x = latents()
    run = denoise(dynamics, x, dynamics.condition("a red circle"), pipeline_grid(text_pipe, STEPS, x))
    reference = text_pipe(
        prompt="a red circle", negative_prompt="blurry", latents=x, num_inference_steps=STEPS, guidance_scale=4.0,
        output_type="latent", height=2 * SIZE, width=2 * SIZE, max_sequence_length=8,
    ).images
    assert torch.equal(run.final, reference)


def test_noise_is_the_pipelines_generator_draw(text_pipe):
    x, state = noise_latents((1, 4, SIZE, SIZE), 7, dtype=torch.float32, device="cpu")
    g = torch.Generator().manual_seed(7)
    assert torch.equal(state, g.get_state())
    reference = text_pipe(
        prompt="a square", generator=g, num_inference_steps=2, guidance_scale=1.0, output_type="latent",
        height=2 * SIZE, width=2 * SIZE, max_sequence_length=8,
    ).images
    dynamics = SD3Dynamics.from_pipeline(text_pipe, guidance_scale=1.0, max_sequence_length=8)
    assert torch.equal(denoise(dynamics, x, dynamics.condition("a square"), pipeline_grid(text_pipe, 2, x)).final, reference)


# --- resume ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("guidance", [1.0, 5.0])
def test_resume_at_every_step_equals_the_uninterrupted_run(guidance):
    pipe = pipe_for("shift3")
    dynamics = SD3Dynamics.from_pipeline(pipe)
    x = latents()
    cond, _ = condition(guidance)
    run = denoise(dynamics, x, cond, pipeline_grid(pipe, STEPS, x), keep="all")
    for k in range(STEPS + 1):
        resumed = resume(dynamics, run.resume_point(k), cond, keep="all")
        assert all(torch.equal(resumed.states[i], run.states[i]) for i in range(k, STEPS + 1)), k


# --- decoding -------------------------------------------------------------------------------------

def test_decode_gives_the_pipelines_images():
    pipe = pipe_for("shift3")
    x = latents()
    cond, e = condition(5.0)
    final = denoise(SD3Dynamics.from_pipeline(pipe), x, cond, pipeline_grid(pipe, STEPS, x)).final
    images = decode(pipe.vae, final)
    assert images.shape == (1, 3, 2 * SIZE, 2 * SIZE)
    assert float(images.min()) >= -1.0 and float(images.max()) <= 1.0
    pil = pipe(**e, latents=x, num_inference_steps=STEPS, guidance_scale=5.0, output_type="pil", height=2 * SIZE, width=2 * SIZE).images
    assert np.array_equal(to_uint8(images)[0], np.asarray(pil[0]))


# --- the cache ------------------------------------------------------------------------------------

class Precomputed:
    """SD3Dynamics as the cache's PromptModel, with embeddings looked up by prompt."""

    def __init__(self, dynamics: SD3Dynamics, conditions: dict[str, SD3Condition]):
        self.dynamics, self.conditions = dynamics, conditions

    @property
    def fingerprint(self) -> str:
        return self.dynamics.fingerprint

    def velocity(self, x, t, cond):
        return self.dynamics.velocity(x, t, cond)

    def condition(self, prompt: str) -> SD3Condition:
        return self.conditions[prompt]


def test_cache_refuses_entries_of_another_model_step_count_shift_or_guidance():
    a, b = "a red circle on a blue background", "a big red circle on a blue background"
    conditions = {a: condition(5.0, seed=0)[0], b: condition(5.0, seed=1)[0]}
    encoder = HashingEncoder()
    store = CacheStore("cpu")
    x = latents(size=8)

    def generator(config="shift3", steps=STEPS, guidance=5.0, seed=0):
        pipe = pipe_for(config) if seed == 0 else tiny_pipeline(shift=3.0, seed=seed)
        model = Precomputed(SD3Dynamics.from_pipeline(pipe), conditions)
        return CachedGenerator(model, encoder, store, pipeline_grid(pipe, steps, x), guidance=guidance)

    first = generator().generate(a, x)
    assert not first.hit and first.entry_id in store
    assert generator().lookup(b, x).hit  # same model and settings: resumed
    assert not generator(seed=1).lookup(b, x).hit  # other weights
    assert not generator(steps=STEPS + 2).lookup(b, x).hit  # other step count
    assert not generator(config="shift1").lookup(b, x).hit  # other shift
    assert not generator(guidance=3.0).lookup(b, x).hit  # other guidance
    hit = generator().generate(b, x)
    assert hit.hit and torch.isfinite(hit.final).all()


def test_fingerprint_names_weights_and_dtype():
    d0 = SD3Dynamics(pipe_for("shift3").transformer)
    assert d0.fingerprint == SD3Dynamics(pipe_for("shift1").transformer).fingerprint  # same seed, same weights
    assert d0.fingerprint != SD3Dynamics(pipe_for("sd35").transformer).fingerprint  # another config
    other = tiny_pipeline(seed=1).transformer
    assert d0.fingerprint != SD3Dynamics(other).fingerprint
    torch.nn.Module.to(other, torch.bfloat16)
    assert "bfloat16" in SD3Dynamics(other).fingerprint


# --- transition strategies ------------------------------------------------------------------------

STRATEGIES = [
    DirectSwitch(),
    Blend("linear"),
    Blend("sigmoid"),
    ClosedFormController(),
    SecantCorrection(),
    Shooting(solver=LeastSquaresOptions(max_iterations=1), segments=2),
    ShootingMPC(Shooting(solver=LeastSquaresOptions(max_iterations=1), segments=2)),
    Shooting(solver=LeastSquaresOptions(max_iterations=1), segments=2, budget=1e9, model="exact"),
    ShootingMPC(Shooting(solver=LeastSquaresOptions(max_iterations=1), segments=2, budget=1e9, model="exact"), max_replans=0),
]


@pytest.mark.parametrize("strategy", STRATEGIES, ids=lambda s: s.name)
def test_prompt_switch_with_each_strategy_is_finite(strategy):
    pipe = pipe_for("shift3")
    dynamics = SD3Dynamics.from_pipeline(pipe)
    x = latents(size=8)
    cond_a, cond_b = condition(5.0, seed=0)[0], condition(5.0, seed=1)[0]
    steps = 4
    run = denoise(dynamics, x, cond_a, pipeline_grid(pipe, steps, x), keep="all")
    request = TransitionRequest(dynamics, run.resume_point(1), cond_a, cond_b, horizon=2, similarity=0.95)
    result = strategy.run(request)
    assert result.final.shape == x.shape and result.final.dtype == x.dtype
    assert torch.isfinite(result.final).all()
    assert result.nfe["forward"] >= steps - 1
    if getattr(strategy, "differentiates", False):  # under SD3Dynamics.derivatives(), entered by the planner
        assert result.nfe["jvp"] > 0 and result.nfe["vjp"] > 0
    elif isinstance(strategy, (SecantCorrection, Shooting, ShootingMPC)):  # the direct switch's calls and one more
        assert result.nfe == {"forward": steps - 1 + 1}


def test_forward_ad_through_the_mmdit_needs_math_attention():
    dynamics = SD3Dynamics(pipe_for("shift3").transformer)
    x, cond = latents(size=8), condition(5.0)[0]
    f = lambda y: dynamics.velocity(y, 0.5, cond)  # noqa: E731
    with pytest.raises((NotImplementedError, RuntimeError)):
        torch.func.jvp(f, (x,), (torch.ones_like(x),))
    with math_attention():
        _, tangent = torch.func.jvp(f, (x,), (torch.ones_like(x),))
    assert torch.isfinite(tangent).all() and tangent.abs().sum() > 0


def test_make_strategy_names():
    assert {make_strategy(n, patch_size=2).name for n in ("direct", "linear", "sigmoid", "closed-form")} == {
        "direct switch", "linear blend", "sigmoid blend", "closed-form controller (eta 0.9)"}
    assert isinstance(make_strategy("shooting", patch_size=2), Shooting) and isinstance(make_strategy("mpc", patch_size=2), ShootingMPC)
    jacobian = make_strategy("mpc", patch_size=2).jacobian
    assert isinstance(jacobian, ColouredJacobian) and jacobian.block == (2, 2) and jacobian.radius == 0
    with pytest.raises(UnknownNameError):
        make_strategy("teleport", patch_size=2)


def test_the_dynamics_say_how_they_are_differentiated():
    dynamics = SD3Dynamics(pipe_for("shift3").transformer)
    x, cond = latents(size=8), condition(5.0)[0]
    f = lambda y: dynamics.velocity(y, 0.5, cond)  # noqa: E731
    with derivative_mode(CountedDynamics(dynamics)):  # wrappers forward the model's mode
        _, tangent = torch.func.jvp(f, (x,), (torch.ones_like(x),))
    assert torch.isfinite(tangent).all()


# --- typed errors ---------------------------------------------------------------------------------

def test_velocity_rejects_bad_inputs():
    dynamics = SD3Dynamics(pipe_for("shift3").transformer)
    cond = condition(5.0)[0]
    x = latents(size=8)
    with pytest.raises(ShapeError, match="^x"):
        dynamics.velocity(torch.randn(1, 3, 8, 8), 0.5, cond)  # channels
    with pytest.raises(ShapeError, match="^x"):
        dynamics.velocity(torch.randn(4, 8, 8), 0.5, cond)  # no batch axis
    with pytest.raises(InvalidArgumentError, match="^x"):
        dynamics.velocity(x.double(), 0.5, cond)  # dtype
    with pytest.raises(NonFiniteError, match="^latents"):  # finiteness at the loop's boundary, not per call
        denoise(dynamics, torch.full_like(x, float("nan")), cond, pipeline_grid(pipe_for("shift3"), 2, x))
    with pytest.raises(ShapeError, match="^cond"):
        dynamics.velocity(torch.cat([x, x]), 0.5, cond)  # one prompt, two latents
    with pytest.raises(InvalidArgumentError, match="^cond"):
        dynamics.velocity(x, 0.5, tiny_embeddings())
    with pytest.raises(InvalidArgumentError, match="^cond"):
        dynamics.velocity(x, 0.5, condition(5.0, dtype=torch.float64)[0])
    with pytest.raises(NonFiniteError, match="^t"):
        dynamics.velocity(x, float("inf"), cond)
    with pytest.raises(InvalidArgumentError, match="^transformer"):
        SD3Dynamics(torch.nn.Linear(2, 2))


def test_condition_is_validated():
    e = tiny_embeddings()
    with pytest.raises(InvalidArgumentError, match="^negative_prompt_embeds"):
        SD3Condition(e["prompt_embeds"], e["pooled_prompt_embeds"], guidance_scale=7.0)
    with pytest.raises(InvalidArgumentError, match="^negative_prompt_embeds"):
        SD3Condition(e["prompt_embeds"], e["pooled_prompt_embeds"], e["negative_prompt_embeds"], None, 7.0)
    with pytest.raises(ShapeError, match="^negative_prompt_embeds"):
        SD3Condition(**{**e, "negative_prompt_embeds": e["negative_prompt_embeds"][:, :5]}, guidance_scale=7.0)
    with pytest.raises(ShapeError, match="^pooled_prompt_embeds"):
        SD3Condition(e["prompt_embeds"], e["pooled_prompt_embeds"][0])
    with pytest.raises(NonFiniteError, match="^prompt_embeds"):
        SD3Condition(torch.full_like(e["prompt_embeds"], float("nan")), e["pooled_prompt_embeds"])
    guided = SD3Condition(**e, guidance_scale=7.0)
    assert guided.guided and guided.encoder_hidden_states.shape[0] == 2
    assert torch.equal(guided.encoder_hidden_states[0], e["negative_prompt_embeds"][0])  # [negative, positive]
    assert not SD3Condition(**e, guidance_scale=1.0).guided


def test_prompts_without_text_encoders_are_a_typed_error():
    dynamics = SD3Dynamics.from_pipeline(pipe_for("shift3"))
    assert dynamics.prompts is None
    with pytest.raises(MissingTextEncoderError, match="prompt_embeds"):
        dynamics.condition("a cat")
    with pytest.raises(MissingTextEncoderError):
        SD3PooledEncoder(pipe_for("shift3"))


def test_scheduler_options_the_grid_cannot_reproduce_are_refused():
    from diffusers import FlowMatchEulerDiscreteScheduler

    shape = (1, 4, 8, 8)
    with pytest.raises(UnsupportedSchedulerError, match="use_karras_sigmas"):
        scheduler_grid(FlowMatchEulerDiscreteScheduler(use_karras_sigmas=True), 4, latent_shape=shape, patch_size=1)
    with pytest.raises(UnsupportedSchedulerError, match="FlowMatchEulerDiscreteScheduler"):
        scheduler_grid(object(), 4, latent_shape=shape, patch_size=1)
    shifted = FlowMatchEulerDiscreteScheduler(shift=3.0)
    shifted.set_shift(2.0)
    with pytest.raises(UnsupportedSchedulerError, match="set_shift"):
        scheduler_grid(shifted, 4, latent_shape=shape, patch_size=1)
    with pytest.raises(InvalidArgumentError, match="^mu"):
        scheduler_grid(FlowMatchEulerDiscreteScheduler(shift=3.0), 4, latent_shape=shape, patch_size=1, mu=0.7)


# --- text encoders --------------------------------------------------------------------------------

def test_pooled_encoder_is_sd3s_pooled_clip_embedding(text_pipe):
    encoder = SD3PooledEncoder(text_pipe)
    rows = encoder.encode(["a red circle", "a blue square"])
    assert rows.shape == (2, encoder.dim) and encoder.dim == 64
    assert rows.dtype == torch.float32 and rows.device.type == "cpu"
    assert torch.allclose(rows.norm(dim=1), torch.ones(2))
    pooled = text_pipe.encode_prompt("a red circle", None, None, do_classifier_free_guidance=False)[2].detach()
    assert torch.equal(encoder.encode(["a red circle"])[0], torch.nn.functional.normalize(pooled, dim=1)[0])
    assert encoder.name.startswith("sd3-pooled-clip:")
    assert SD3PooledEncoder(text_pipe, name="tiny").name == "sd3-pooled-clip:tiny"
    with pytest.raises(InvalidArgumentError, match="^prompts"):
        encoder.encode([" "])


# --- checkpoints ----------------------------------------------------------------------------------

def test_load_pipeline_errors(tmp_path, monkeypatch):
    with pytest.raises(CheckpointNotFoundError):
        load_pipeline(tmp_path / "missing")
    (tmp_path / "file").write_text("x")
    with pytest.raises(CheckpointNotFoundError, match="not a directory"):
        load_pipeline(tmp_path / "file")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(NotSD3CheckpointError, match="model_index.json"):
        load_pipeline(empty)
    (empty / "model_index.json").write_text("{not json")
    with pytest.raises(NotSD3CheckpointError, match="unreadable"):
        load_pipeline(empty)
    (empty / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionXLPipeline"}))
    with pytest.raises(NotSD3CheckpointError, match="StableDiffusionXLPipeline"):
        load_pipeline(empty)
    (empty / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusion3Pipeline"}))
    with pytest.raises(InvalidArgumentError, match="^dtype: float16"):
        load_pipeline(empty, dtype="float16")
    with pytest.raises(UnknownNameError):
        load_pipeline(empty, dtype="float64")
    with pytest.raises(InvalidArgumentError, match="^device"):
        load_pipeline(empty, device="not-a-device")
    with pytest.raises(CheckpointError, match="could not load"):
        load_pipeline(empty)  # components missing

    import diffusers

    for error in (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB"), RuntimeError("CUDA error: out of memory")):
        def boom(*args, error=error, **kwargs):
            raise error

        monkeypatch.setattr(diffusers.StableDiffusion3Pipeline, "from_pretrained", boom)
        with pytest.raises(DeviceMemoryError, match="out of memory"):
            load_pipeline(empty)
    monkeypatch.setattr(diffusers.StableDiffusion3Pipeline, "from_pretrained", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("other")))
    with pytest.raises(RuntimeError, match="other"):
        load_pipeline(empty)


@pytest.fixture(scope="module")
def saved(tmp_path_factory, text_pipe):
    path = tmp_path_factory.mktemp("sd3") / "tiny-sd3"
    text_pipe.save_pretrained(path)
    return path


def test_load_pipeline_round_trip(saved, text_pipe):
    loaded = load_pipeline(saved)
    loaded.set_progress_bar_config(disable=True)
    assert loaded.text_encoder_3 is None and not loaded.transformer.training
    assert not any(p.requires_grad for p in loaded.transformer.parameters())
    assert SD3Dynamics(loaded.transformer).fingerprint == SD3Dynamics(text_pipe.transformer).fingerprint
    x = latents()
    cond, e = condition(5.0)
    assert torch.equal(denoise(SD3Dynamics(loaded.transformer), x, cond, pipeline_grid(loaded, STEPS, x)).final, pipe_latents(text_pipe, x, e, 5.0))
    bf16 = load_pipeline(saved, dtype="bfloat16")
    assert bf16.transformer.dtype == bf16.vae.dtype == torch.bfloat16


# --- command line ---------------------------------------------------------------------------------

def test_cli_generate_continue_bench(saved, tmp_path, capsys, text_pipe):
    from flowctl.cli import main

    common = ["--model", str(saved), "--steps", "6", "--guidance", "4", "--height", "32", "--width", "32", "--max-sequence-length", "8", "--seed", "3"]
    cache = ["--cache", str(tmp_path / "cache")]
    a, b = "a large red circle on a blue background", "a big red circle on a blue background"
    assert main(["generate", a, *common, *cache, "--out", str(tmp_path / "a.png")]) == 0
    generated = json.loads(capsys.readouterr().out)
    assert generated["entry_id"] in DiskStore(tmp_path / "cache")
    reference = text_pipe(
        prompt=a, generator=torch.Generator().manual_seed(3), num_inference_steps=6, guidance_scale=4.0,
        height=32, width=32, max_sequence_length=8, output_type="pil",
    ).images[0]
    from PIL import Image

    assert np.array_equal(np.asarray(Image.open(tmp_path / "a.png")), np.asarray(reference))

    assert main(["continue", b, *common, *cache, "--strategy", "sigmoid", "--out", str(tmp_path / "b.png")]) == 0
    continued = json.loads(capsys.readouterr().out)
    assert continued["hit"] and continued["cached_prompt"] == a and continued["strategy"] == "sigmoid blend"
    assert 0 < continued["resume_step"] < 6 and (tmp_path / "b.png").exists()

    assert main(["bench", *common, "--methods", "direct", "--out", str(tmp_path / "bench")]) == 0
    table = capsys.readouterr().out
    assert "direct switch" in table and "no-op floor" in table
    runs = json.loads((tmp_path / "bench" / "results.json").read_text())["runs"]
    assert {r["bucket"] for r in runs} == {">0.95", "0.90-0.95", "0.85-0.90", "<0.85"}
    assert all(r["psnr"] == "inf" or r["psnr"] > 0 for r in runs)
    assert (tmp_path / "bench" / "grid.png").exists() and (tmp_path / "bench" / "report.md").exists()

    assert main(["generate", a, "--model", str(tmp_path / "nowhere"), *cache]) == 2
    assert "no such checkpoint" in capsys.readouterr().err


def test_the_command_line_imports_diffusers_only_for_an_mmdit():
    code = (
        "import sys, flowctl.cli as c; c._parser().parse_args(['bench', '--quick']); "
        "c._parser().parse_args(['generate', 'p', '--model', 'm', '--cache', 'c']); "
        "assert 'diffusers' not in sys.modules and 'transformers' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_benchmark_protocol_runs_on_a_batch_of_seeds(text_pipe):
    from flowctl.adapters.sd3.bench import sd3_model
    from flowctl.bench.pairs import PROMPT_PAIRS
    from flowctl.bench.runner import BenchConfig, run_benchmark
    from flowctl.text import HashingEncoder

    dynamics = SD3Dynamics.from_pipeline(text_pipe, guidance_scale=4.0, max_sequence_length=8)
    model = sd3_model(text_pipe, dynamics, seeds=2, height=32, width=32)
    config = BenchConfig(steps=6, seeds=2, policy="nirvana", pairs_per_bucket=1, sweep_pairs=0, repeats=1, strategies=("direct", "linear"))
    result = run_benchmark(config, model=model, encoder=HashingEncoder(), pairs=PROMPT_PAIRS[:1])
    direct = [r for r in result.runs if r.method == "direct switch"]
    assert model.noise.shape[0] == 2 and direct and all(r.nfe == {"forward": 6 - r.resume_step} for r in direct)
    assert result.images and next(iter(result.images.values()))[1].shape[1] == 3  # decoded RGB images
