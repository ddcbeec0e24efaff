"""The FLUX.1 adapter on a tiny, randomly initialised FluxTransformer2DModel: offline, CPU.

The golden reference is diffusers' own ``FluxPipeline`` (no VAE, no text encoders: embeddings are
passed, ``output_type="latent"``, which returns packed latents): the adapter's loop on unpacked
latents must return them bit for bit (``torch.equal`` after packing), with the embedded guidance
(FLUX.1-dev-like) and without (schnell-like), with true CFG, and a resume at any step must equal
the uninterrupted run bit for bit. ``CachedFluxPipeline``: a miss is the pipeline's own call bit
for bit, a hit makes fewer transformer calls.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")

from flowctl.adapters.flux import (  # noqa: E402
    FluxCondition,
    FluxDynamics,
    MissingTextEncoderError,
    UnsupportedSchedulerError,
    denoise,
    flux_grid,
    latent_image_ids,
    latent_shape,
    math_attention,
    noise_latents,
    pack_latents,
    pipeline_grid,
    unpack_latents,
)
from flowctl.errors import InvalidArgumentError, NonFiniteError, ShapeError  # noqa: E402
from flowctl.sampling import SigmaGrid, resume  # noqa: E402

STEPS = 5
TOKENS, JOINT, POOLED = 7, 32, 16
VAE_SCALE = 8  # FluxPipeline's vae_scale_factor without a VAE

# The tiny transformer: in_channels = 4 x 4 latent channels (2x2 patches); rope axes sum to the head dim.
TINY = dict(
    patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16, num_attention_heads=2,
    joint_attention_dim=JOINT, pooled_projection_dim=POOLED, axes_dims_rope=(4, 4, 8),
)
# FLUX.1-dev's scheduler config (dynamic shifting) and FLUX.1-schnell's (static shift 1).
DEV = dict(guidance_embeds=True, scheduler=dict(shift=3.0, use_dynamic_shifting=True))
SCHNELL = dict(guidance_embeds=False, scheduler=dict(shift=1.0, use_dynamic_shifting=False))
CONFIGS = {"dev": DEV, "schnell": SCHNELL}
_PIPES: dict[str, object] = {}


def tiny_transformer(guidance_embeds: bool, seed: int = 0):
    from diffusers import FluxTransformer2DModel

    torch.manual_seed(seed)
    return FluxTransformer2DModel(**TINY, guidance_embeds=guidance_embeds).eval()


def tiny_pipeline(config: str, **parts):
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline

    spec = CONFIGS[config]
    scheduler = FlowMatchEulerDiscreteScheduler(
        **spec["scheduler"], base_shift=0.5, max_shift=1.15, base_image_seq_len=256, max_image_seq_len=4096,
    )
    modules = dict(vae=None, text_encoder=None, tokenizer=None, text_encoder_2=None, tokenizer_2=None)
    pipe = FluxPipeline(scheduler=scheduler, transformer=tiny_transformer(spec["guidance_embeds"]), **{**modules, **parts})
    pipe.set_progress_bar_config(disable=True)
    return pipe


def pipe_for(config: str):
    if config not in _PIPES:
        _PIPES[config] = tiny_pipeline(config)
    return _PIPES[config]


def latents(batch: int = 1, height: int = 8, width: int = 8, seed: int = 1, dtype=torch.float32) -> torch.Tensor:
    return torch.randn(batch, 4, height, width, generator=torch.Generator().manual_seed(seed)).to(dtype)


def embeddings(batch: int = 1, seed: int = 0, dtype=torch.float32) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    e = {
        "prompt_embeds": torch.randn(batch, TOKENS, JOINT, generator=g),
        "pooled_prompt_embeds": torch.randn(batch, POOLED, generator=g),
        "negative_prompt_embeds": torch.randn(batch, TOKENS, JOINT, generator=g),
        "negative_pooled_prompt_embeds": torch.randn(batch, POOLED, generator=g),
    }
    return {k: v.to(dtype) for k, v in e.items()}


def positive(e: dict) -> dict:
    return {k: v for k, v in e.items() if not k.startswith("negative")}


def pipe_run(pipe, x: torch.Tensor, e: dict, *, steps: int = STEPS, **kwargs) -> torch.Tensor:
    """The pipeline's packed latents from the unpacked ``x``."""
    h, w = x.shape[2] * VAE_SCALE, x.shape[3] * VAE_SCALE
    return pipe(**e, latents=pack_latents(x), num_inference_steps=steps, output_type="latent", height=h, width=w, **kwargs).images


# --- the loop equals the pipeline -----------------------------------------------------------------

@pytest.mark.parametrize("true_cfg", [1.0, 4.0])
@pytest.mark.parametrize("config", list(CONFIGS))
def test_loop_equals_pipeline_bit_for_bit(config, true_cfg):
    pipe = pipe_for(config)
    x, e = latents(), embeddings()
    dynamics = FluxDynamics(pipe.transformer, guidance_scale=5.0, true_cfg_scale=true_cfg)
    run = denoise(dynamics, x, FluxCondition(**e), pipeline_grid(pipe, STEPS, x))
    reference = pipe_run(pipe, x, e, guidance_scale=5.0, true_cfg_scale=true_cfg)
    assert torch.equal(pack_latents(run.final), reference)
    assert torch.equal(run.final, unpack_latents(reference, 8, 8))
    assert not torch.equal(run.final, x)


def test_loop_equals_pipeline_on_a_batch_of_non_square_latents():
    pipe = pipe_for("dev")
    x, e = latents(batch=2, height=8, width=12), embeddings(batch=2)
    run = denoise(FluxDynamics(pipe.transformer, true_cfg_scale=2.5), x, FluxCondition(**e), pipeline_grid(pipe, STEPS, x))
    assert torch.equal(pack_latents(run.final), pipe_run(pipe, x, e, true_cfg_scale=2.5))


def test_loop_equals_pipeline_in_bfloat16():
    pipe = tiny_pipeline("dev")
    torch.nn.Module.to(pipe.transformer, torch.bfloat16)
    x, e = latents(dtype=torch.bfloat16), embeddings(dtype=torch.bfloat16)
    run = denoise(FluxDynamics(pipe.transformer, true_cfg_scale=3.0), x, FluxCondition(**e), pipeline_grid(pipe, STEPS, x))
    assert run.final.dtype == torch.bfloat16
    assert torch.equal(pack_latents(run.final), pipe_run(pipe, x, e, true_cfg_scale=3.0))


def test_the_embedded_guidance_is_used_only_by_a_model_that_has_it():
    x, cond = latents(), FluxCondition(**positive(embeddings()))
    dev, schnell = pipe_for("dev").transformer, pipe_for("schnell").transformer
    assert not torch.equal(FluxDynamics(dev, guidance_scale=2.0).velocity(x, 0.5, cond), FluxDynamics(dev, guidance_scale=6.0).velocity(x, 0.5, cond))
    assert torch.equal(FluxDynamics(schnell, guidance_scale=2.0).velocity(x, 0.5, cond), FluxDynamics(schnell, guidance_scale=6.0).velocity(x, 0.5, cond))


def test_true_cfg_needs_a_scale_above_one_and_negatives():
    dynamics = FluxDynamics(pipe_for("dev").transformer, true_cfg_scale=4.0)
    x, e = latents(), embeddings()
    plain = FluxDynamics(pipe_for("dev").transformer).velocity(x, 0.7, FluxCondition(**e))  # scale 1: negatives unused
    assert torch.equal(dynamics.velocity(x, 0.7, FluxCondition(**positive(e))), plain)
    assert not torch.equal(dynamics.velocity(x, 0.7, FluxCondition(**e)), plain)
    assert torch.equal(dynamics.velocity(x, torch.tensor(0.7), FluxCondition(**e)), dynamics.velocity(x, 0.7, FluxCondition(**e)))


# --- the grid and the noise -----------------------------------------------------------------------

@pytest.mark.parametrize("config", list(CONFIGS))
def test_grid_is_the_schedulers_for_the_pipelines_sigmas(config):
    pipe = tiny_pipeline(config)
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    for steps, seq_len in ((1, 16), (4, 16), (28, 1024), (50, 4096), (7, 10000)):
        grid = flux_grid(pipe, steps, seq_len)
        mu = calculate_shift(seq_len, 256, 4096, 0.5, 1.15)
        pipe.scheduler.set_timesteps(sigmas=np.linspace(1.0, 1 / steps, steps), mu=mu)
        assert torch.equal(grid.values, pipe.scheduler.sigmas), (steps, seq_len)
        assert torch.equal(grid.timesteps, pipe.scheduler.timesteps)
        assert grid.mu == (mu if config == "dev" else None) and grid.steps == steps
    custom = [1.0, 0.9, 0.5, 0.2]
    pipe.scheduler.set_timesteps(sigmas=custom, mu=calculate_shift(16, 256, 4096, 0.5, 1.15))
    assert torch.equal(flux_grid(pipe.scheduler, 4, 16, sigmas=custom).values, pipe.scheduler.sigmas)


def test_flux_grid_is_not_sigmagrid_create():
    """FLUX's custom sigmas end at 1/N, not at the training grid's 1/1000: another grid."""
    grid = flux_grid(pipe_for("dev"), STEPS, 16)
    assert isinstance(grid, SigmaGrid)
    assert not torch.equal(grid.values, SigmaGrid.create(STEPS, 3.0, mu=grid.mu).values)


def test_noise_is_the_pipelines_generator_draw():
    pipe = pipe_for("dev")
    shape = latent_shape(pipe, 64, 96)
    assert shape == (1, 4, 8, 12)
    x, state = noise_latents(shape, 7, dtype=torch.float32, device="cpu")
    g = torch.Generator().manual_seed(7)
    assert torch.equal(state, g.get_state())
    e = embeddings()
    reference = pipe(**e, generator=g, num_inference_steps=2, true_cfg_scale=2.0, output_type="latent", height=64, width=96).images
    run = denoise(FluxDynamics(pipe.transformer, true_cfg_scale=2.0), x, FluxCondition(**e), pipeline_grid(pipe, 2, x))
    assert torch.equal(pack_latents(run.final), reference)


def test_layouts_are_the_pipelines():
    from diffusers import FluxPipeline

    x = latents(batch=2, height=6, width=10)
    packed = pack_latents(x)
    assert torch.equal(packed, FluxPipeline._pack_latents(x, 2, 4, 6, 10))
    assert torch.equal(unpack_latents(packed, 6, 10), x)
    assert torch.equal(unpack_latents(packed, 6, 10), FluxPipeline._unpack_latents(packed, 6 * VAE_SCALE, 10 * VAE_SCALE, VAE_SCALE))
    ids = latent_image_ids(3, 5, device="cpu", dtype=torch.bfloat16)
    assert torch.equal(ids, FluxPipeline._prepare_latent_image_ids(2, 3, 5, "cpu", torch.bfloat16))


# --- resume ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("config", list(CONFIGS))
def test_resume_at_every_step_equals_the_uninterrupted_run(config):
    pipe = pipe_for(config)
    dynamics = FluxDynamics(pipe.transformer, guidance_scale=4.0, true_cfg_scale=3.0)
    x, cond = latents(), FluxCondition(**embeddings())
    run = denoise(dynamics, x, cond, pipeline_grid(pipe, STEPS, x), keep="all")
    assert torch.equal(pack_latents(run.final), pipe_run(pipe, x, embeddings(), guidance_scale=4.0, true_cfg_scale=3.0))
    for k in range(STEPS + 1):
        resumed = resume(dynamics, run.resume_point(k), cond, keep="all")
        assert all(torch.equal(resumed.states[i], run.states[i]) for i in range(k, STEPS + 1)), k


# --- derivatives, identity, prompts ---------------------------------------------------------------

def test_forward_ad_through_the_transformer_under_math_attention():
    dynamics = FluxDynamics(pipe_for("dev").transformer)
    x, cond = latents(), FluxCondition(**positive(embeddings()))
    with math_attention():
        _, tangent = torch.func.jvp(lambda y: dynamics.velocity(y, 0.5, cond), (x,), (torch.ones_like(x),))
    assert tangent.shape == x.shape and torch.isfinite(tangent).all() and tangent.abs().sum() > 0


def test_fingerprint_names_weights_dtype_and_settings():
    dev, schnell = pipe_for("dev").transformer, pipe_for("schnell").transformer
    base = FluxDynamics(dev).fingerprint
    assert base == FluxDynamics(dev, name="other").fingerprint == FluxDynamics(dev, true_cfg_scale=1.0).fingerprint
    assert base.startswith("flux-dit-float32-")
    assert len({base, FluxDynamics(dev, guidance_scale=5.0).fingerprint, FluxDynamics(dev, true_cfg_scale=4.0).fingerprint,
                FluxDynamics(tiny_transformer(True, seed=1)).fingerprint}) == 4
    # schnell has no guidance input: its scale does not change the field, nor the fingerprint
    assert FluxDynamics(schnell, guidance_scale=1.0).fingerprint == FluxDynamics(schnell, guidance_scale=9.0).fingerprint


def tiny_text_parts(seed: int = 0) -> dict:
    """Tiny CLIP (pooled 16) and T5 (d_model 32) encoders, one character-level tokenizer for both."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer, T5Config, T5EncoderModel

    chars = [chr(i) for i in range(33, 127)]
    vocab = {token: i for i, token in enumerate(chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"])}
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)
    torch.manual_seed(seed)
    clip = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(vocab), hidden_size=POOLED, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        max_position_embeddings=77, bos_token_id=vocab["<|startoftext|>"], eos_token_id=vocab["<|endoftext|>"],
        pad_token_id=vocab["<|endoftext|>"],
    )).eval()
    t5 = T5EncoderModel(T5Config(vocab_size=len(vocab), d_model=JOINT, d_kv=8, d_ff=32, num_layers=1, num_heads=2)).eval()
    return dict(text_encoder=clip, tokenizer=tokenizer, text_encoder_2=t5, tokenizer_2=tokenizer)


def test_prompt_condition_equals_pipeline_with_prompts():
    pipe = tiny_pipeline("dev", **tiny_text_parts())
    dynamics = FluxDynamics.from_pipeline(pipe, guidance_scale=4.0, true_cfg_scale=2.0, negative_prompt="blurry", max_sequence_length=8)
    cond = dynamics.condition("a red circle")
    assert cond.prompt_embeds.shape == (1, 8, JOINT) and cond.has_negative
    x = latents()
    reference = pipe(
        prompt="a red circle", negative_prompt="blurry", true_cfg_scale=2.0, guidance_scale=4.0, latents=pack_latents(x),
        num_inference_steps=STEPS, output_type="latent", height=64, width=64, max_sequence_length=8,
    ).images
    assert torch.equal(pack_latents(denoise(dynamics, x, cond, pipeline_grid(pipe, STEPS, x)).final), reference)
    assert not FluxDynamics.from_pipeline(pipe, negative_prompt="blurry", max_sequence_length=8).condition("a").has_negative


def test_prompts_without_text_encoders_are_a_typed_error():
    dynamics = FluxDynamics.from_pipeline(pipe_for("dev"))
    with pytest.raises(MissingTextEncoderError, match="FluxCondition"):
        dynamics.condition("a cat")


# --- bad input: typed errors before any model work ------------------------------------------------

@pytest.fixture
def forward_calls():
    """The dev transformer's forward calls, counted."""
    transformer = pipe_for("dev").transformer
    calls = []
    handle = transformer.register_forward_pre_hook(lambda module, args: calls.append(1))
    yield calls
    handle.remove()


def test_velocity_rejects_bad_inputs_before_the_model_runs(forward_calls):
    dynamics = FluxDynamics(pipe_for("dev").transformer, true_cfg_scale=2.0)
    x, e = latents(), embeddings()
    cond = FluxCondition(**e)
    with pytest.raises(ShapeError, match="^x.*even"):
        dynamics.velocity(latents(height=7, width=8), 0.5, cond)
    with pytest.raises(ShapeError, match="^x"):
        dynamics.velocity(torch.randn(1, 16, 8, 8), 0.5, cond)  # packed channels, not latent ones
    with pytest.raises(ShapeError, match="^x"):
        dynamics.velocity(pack_latents(x), 0.5, cond)
    with pytest.raises(ShapeError, match="^cond"):
        dynamics.velocity(latents(batch=2), 0.5, cond)
    with pytest.raises(ShapeError, match="^cond"):
        dynamics.velocity(x, 0.5, FluxCondition(torch.randn(1, TOKENS, JOINT + 1), e["pooled_prompt_embeds"]))
    with pytest.raises(InvalidArgumentError, match="^x"):
        dynamics.velocity(x.double(), 0.5, cond)
    with pytest.raises(InvalidArgumentError, match="^cond"):
        dynamics.velocity(x, 0.5, FluxCondition(**embeddings(dtype=torch.float64)))
    with pytest.raises(InvalidArgumentError, match="^cond"):
        dynamics.velocity(x, 0.5, e)
    with pytest.raises(ShapeError, match="^t"):
        dynamics.velocity(x, torch.tensor([0.5, 0.4]), cond)
    with pytest.raises(NonFiniteError, match="^t"):
        dynamics.velocity(x, float("nan"), cond)
    grid = pipeline_grid(pipe_for("dev"), STEPS, x)
    with pytest.raises(ShapeError, match="^latents"):
        denoise(dynamics, latents(height=7, width=8), cond, grid)
    with pytest.raises(ShapeError, match="^cond"):
        denoise(dynamics, latents(batch=3), cond, pipeline_grid(pipe_for("dev"), STEPS, latents(batch=3)))
    with pytest.raises(NonFiniteError, match="^latents"):
        denoise(dynamics, torch.full_like(x, float("nan")), cond, grid)
    with pytest.raises(ShapeError, match="^latents"):
        pipeline_grid(pipe_for("dev"), STEPS, latents(height=8, width=9))
    assert forward_calls == []
    with pytest.raises(InvalidArgumentError, match="^transformer"):
        FluxDynamics(torch.nn.Linear(2, 2))


def test_condition_is_validated():
    e = embeddings()
    with pytest.raises(InvalidArgumentError, match="^negative_prompt_embeds"):
        FluxCondition(e["prompt_embeds"], e["pooled_prompt_embeds"], negative_prompt_embeds=e["negative_prompt_embeds"])
    with pytest.raises(ShapeError, match="^negative_prompt_embeds"):
        FluxCondition(**{**e, "negative_prompt_embeds": torch.randn(1, TOKENS + 1, JOINT)})
    with pytest.raises(ShapeError, match="^pooled_prompt_embeds"):
        FluxCondition(e["prompt_embeds"], torch.randn(2, POOLED))
    with pytest.raises(ShapeError, match="^text_ids"):
        FluxCondition(e["prompt_embeds"], e["pooled_prompt_embeds"], text_ids=torch.zeros(TOKENS + 1, 3))
    with pytest.raises(NonFiniteError, match="^prompt_embeds"):
        FluxCondition(torch.full((1, TOKENS, JOINT), float("inf")), e["pooled_prompt_embeds"])
    cond = FluxCondition(**e)
    assert torch.equal(cond.text_ids, torch.zeros(TOKENS, 3)) and cond.repeat(3).batch == 3


def test_grid_and_shape_errors():
    from diffusers import FlowMatchEulerDiscreteScheduler, FlowMatchHeunDiscreteScheduler

    pipe = pipe_for("dev")
    with pytest.raises(UnsupportedSchedulerError, match="use_karras_sigmas"):
        flux_grid(FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, use_karras_sigmas=True), STEPS, 16)
    with pytest.raises(UnsupportedSchedulerError, match="FlowMatchEulerDiscreteScheduler"):
        flux_grid(FlowMatchHeunDiscreteScheduler(), STEPS, 16)
    with pytest.raises(ShapeError, match="^sigmas"):
        flux_grid(pipe, STEPS, 16, sigmas=[1.0, 0.5])
    with pytest.raises(InvalidArgumentError, match="^height"):
        latent_shape(pipe, 72, 64)  # not a multiple of 2 x the VAE's scale factor
    with pytest.raises(InvalidArgumentError, match="^grid"):
        denoise(FluxDynamics(pipe.transformer), latents(), FluxCondition(**positive(embeddings())), torch.linspace(1, 0, 3))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_transformer_inputs_are_the_pipelines(dtype):
    """The timestep the transformer gets is ``(sigma * 1000).to(dtype) / 1000``, as the pipeline
    computes it, not ``sigma`` (in float32 they differ at one sigma of this 20-step grid): every input of
    every call, compared on a FLUX.1-dev-like model with true CFG."""
    pipe = tiny_pipeline("dev")
    torch.nn.Module.to(pipe.transformer, dtype)
    calls: list[dict] = []
    handle = pipe.transformer.register_forward_pre_hook(lambda module, args, kwargs: calls.append(kwargs), with_kwargs=True)
    x, e, steps = latents(height=12, width=12, dtype=dtype), embeddings(dtype=dtype), 20
    try:
        pipe_run(pipe, x, e, steps=steps, true_cfg_scale=2.0)
        reference, calls[:] = list(calls), []
        denoise(FluxDynamics(pipe.transformer, true_cfg_scale=2.0), x, FluxCondition(**e), pipeline_grid(pipe, steps, x))
    finally:
        handle.remove()
    assert len(calls) == len(reference) == 2 * steps
    for ours, theirs in zip(calls, reference):
        assert ours.keys() == theirs.keys()
        for name, value in theirs.items():
            if isinstance(value, torch.Tensor):
                assert value.dtype == ours[name].dtype and torch.equal(value, ours[name]), name
            else:
                assert value == ours[name], name
    sigmas = pipeline_grid(pipe, steps, x).values[:-1]
    assert any(not torch.equal(call["timestep"], sigmas[i // 2].expand(1).to(dtype)) for i, call in enumerate(calls))


def test_the_cache_and_the_strategies_run_on_flux(tmp_path):
    from flowctl.cache import CachedGenerator, CacheStore, DiskStore
    from flowctl.text import HashingEncoder
    from flowctl.transitions import SecantCorrection

    pipe = tiny_pipeline("dev", **tiny_text_parts())
    dynamics = FluxDynamics.from_pipeline(pipe, guidance_scale=4.0, max_sequence_length=8)
    x = latents()
    grid = pipeline_grid(pipe, STEPS, x)  # FLUX's own sigmas, which the cache key keeps
    store = CacheStore(device_bytes=1 << 24, host_bytes=0, persistent=DiskStore(tmp_path))
    cached = CachedGenerator(dynamics, HashingEncoder(), store, grid, guidance=4.0)
    first = cached.generate("a red circle", x)
    assert not first.hit and torch.equal(first.final, denoise(dynamics, x, dynamics.condition("a red circle"), grid).final)
    again = CachedGenerator(dynamics, HashingEncoder(), CacheStore(persistent=DiskStore(tmp_path)), grid, guidance=4.0)
    same = again.generate("a red circle", x)
    assert same.hit and torch.equal(same.final, first.final)  # resumed from disk, bit for bit
    other = again.generate("a red circle", x, strategy=SecantCorrection())
    assert other.hit and torch.isfinite(other.final).all()


# --- the cached pipeline --------------------------------------------------------------------------

PROMPT = "a large red circle on a blue background"
CALL = dict(num_inference_steps=STEPS, height=16, width=16, max_sequence_length=8)  # 8 x 8 latents with the tiny VAE


@pytest.fixture(scope="module")
def text_pipes():
    """dev- and schnell-like pipelines with a VAE and tiny text encoders; transformer calls counted."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from sd3_tiny import tiny_vae

    pipes = {}
    for config in CONFIGS:
        pipe = tiny_pipeline(config, vae=tiny_vae(), **tiny_text_parts())
        pipe.calls = []
        pipe.transformer.register_forward_hook(lambda *args, calls=pipe.calls: calls.append(1))
        pipes[config] = pipe
    return pipes


def cached_flux(pipe, **kwargs):
    from flowctl.adapters.flux.pipeline import CachedFluxPipeline
    from flowctl.cache import CacheStore

    return CachedFluxPipeline.from_pipe(pipe, cache=CacheStore(device_bytes=1 << 26, host_bytes=0), **kwargs)


@pytest.mark.parametrize("config, guidance, output_type, images", [
    ("dev", dict(guidance_scale=4.0), "latent", 1),
    ("schnell", dict(true_cfg_scale=2.5, negative_prompt="blurry"), "np", 2),
    ("dev", dict(guidance_scale=2.0), "pt", 1),
])
def test_a_cached_pipeline_miss_is_the_pipelines_own_call(text_pipes, config, guidance, output_type, images):
    pipe = text_pipes[config]
    out = cached_flux(pipe)(PROMPT, output_type=output_type, num_images_per_prompt=images, generator=torch.Generator().manual_seed(3), **guidance, **CALL)
    reference = pipe(PROMPT, output_type=output_type, num_images_per_prompt=images, generator=torch.Generator().manual_seed(3), **guidance, **CALL).images
    same = np.array_equal(out.images, reference) if output_type == "np" else torch.equal(out.images, reference)
    assert same and len(out.cache) == images and not any(c.hit for c in out.cache)
    assert all(c.entry_id is not None and c.model_evaluations == STEPS for c in out.cache)


def test_a_cached_pipeline_hit_makes_fewer_transformer_calls(text_pipes, tmp_path):
    from flowctl.adapters.flux.pipeline import CachedFluxPipeline
    from flowctl.cache import DiskStore

    from flowctl.text import HashingEncoder

    pipe, encoder = text_pipes["dev"], HashingEncoder()  # the tiny random CLIP's similarities are arbitrary
    store = DiskStore(tmp_path)
    CachedFluxPipeline.from_pipe(pipe, cache=store, encoder=encoder)(PROMPT, output_type="latent", generator=torch.Generator().manual_seed(0), **CALL)
    again = CachedFluxPipeline.from_pipe(pipe, cache=store, encoder=encoder, strategy="secant")  # another worker
    before = len(pipe.calls)
    generators = [torch.Generator().manual_seed(s) for s in (9, 4)]
    out = again([PROMPT, "a zebra"], output_type="latent", generator=generators, **CALL)
    hit, miss = out.cache
    assert hit.hit and hit.cached_prompt == PROMPT and hit.similarity == pytest.approx(1.0) and hit.strategy == "secant correction"
    assert not miss.hit and miss.entry_id is not None
    assert hit.model_evaluations < STEPS and len(pipe.calls) - before == hit.model_evaluations + STEPS
    assert out.images.shape == (2, 16, 16)  # packed, as the pipeline returns latents
    alone = pipe("a zebra", output_type="latent", generator=torch.Generator().manual_seed(4), **CALL).images
    assert torch.equal(out.images[1:], alone)  # the miss row is the pipeline's own run


def test_a_cached_pipeline_refuses_bad_input_before_any_model_work(text_pipes):
    from flowctl.adapters.flux.pipeline import CachedFluxPipeline
    from flowctl.cache import CacheStore

    pipe = text_pipes["dev"]
    cached = cached_flux(pipe)
    before = len(pipe.calls)
    for kwargs, argument in [
        (dict(prompt=PROMPT, prompt_embeds=torch.zeros(1, TOKENS, JOINT)), "prompt_embeds"),
        (dict(prompt=PROMPT, sigmas=[1.0, 0.5]), "sigmas"),
        (dict(prompt=None), "prompt"),
        (dict(prompt=PROMPT, output_type="jpeg"), "output_type"),
        (dict(prompt=PROMPT, cache_strategy="teleport"), "cache_strategy"),
        (dict(prompt=PROMPT, generator=[torch.Generator()] * 2), "generator"),
    ]:
        with pytest.raises(InvalidArgumentError) as info:
            cached(**kwargs, **CALL)
        assert info.value.argument == argument
    assert len(pipe.calls) == before
    with pytest.raises(InvalidArgumentError, match="FluxPipeline"):
        CachedFluxPipeline.from_pipe(object(), cache=CacheStore())
    with pytest.raises(MissingTextEncoderError):
        CachedFluxPipeline.from_pipe(pipe_for("dev"), cache=CacheStore())
