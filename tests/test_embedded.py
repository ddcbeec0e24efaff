"""The embedded shapes model (adapters/sd3/embedded.py): the shipped weights, deterministic
generation, prompts it shows, its MiniLM conditioning, and the commands that run it."""

import json
import math

import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("sentence_transformers")

from flowctl.adapters.sd3.embedded import (  # noqa: E402
    WEIGHTS,
    ClassifierAdherence,
    embedded_grid,
    embedded_noise,
    load_embedded,
)
from flowctl.adapters.sd3.encoding import MiniLMPromptEncoder  # noqa: E402
from flowctl.cli import main  # noqa: E402
from flowctl.data.attributes import AttributeClassifier  # noqa: E402
from flowctl.data.prompts import parse_prompt  # noqa: E402
from flowctl.data.shapes_dataset import render_attributes  # noqa: E402
from flowctl.errors import InvalidArgumentError  # noqa: E402
from flowctl.sampling import integrate  # noqa: E402
from flowctl.text import MiniLMEncoder  # noqa: E402

A = "a large red circle on a blue background"
B = "a big red circle on a blue background"
# Mean classifier adherence of the default-guidance images of the benchmark's B prompts, a few
# points under what benchmarks/embedded.py measured for the shipped weights (MODEL_CARD.md).
ADHERENCE_FLOOR = 0.90


@pytest.fixture(scope="module")
def encoder():
    return MiniLMEncoder()


@pytest.fixture(scope="module")
def model(encoder):
    return load_embedded(encoder=encoder)


def test_the_shipped_weights_are_the_recorded_model(model):
    record = json.loads((WEIGHTS / "train.json").read_text())
    config = model.transformer.config
    assert {k: config[k] for k in record["model_config"]} == record["model_config"]
    assert sum(p.numel() for p in model.transformer.parameters()) == record["params"]
    assert (WEIGHTS / "diffusion_pytorch_model.safetensors").stat().st_size <= 20 * 2**20
    assert (WEIGHTS / "MODEL_CARD.md").is_file()
    assert not model.transformer.training and not any(p.requires_grad for p in model.transformer.parameters())


def test_generation_is_deterministic_for_a_seed(model, encoder):
    grid = embedded_grid(8)
    first = integrate(model, embedded_noise(3, model)[0], grid, model.condition(A), keep="final").final
    again = load_embedded(encoder=encoder)
    second = integrate(again, embedded_noise(3, again)[0], grid, again.condition(A), keep="final").final
    other = integrate(model, embedded_noise(4, model)[0], grid, model.condition(A), keep="final").final
    assert torch.isfinite(first).all() and first.shape == (1, 3, 32, 32)
    assert torch.equal(first, second) and again.fingerprint == model.fingerprint
    assert not torch.equal(first, other)


def test_generated_images_show_their_prompts(model):
    from flowctl.bench.pairs import PROMPT_PAIRS

    prompts = [p for p in dict.fromkeys(pair.b for pair in PROMPT_PAIRS) if parse_prompt(p) is not None]
    noise = torch.cat([embedded_noise(s, model)[0] for s in range(len(prompts))])
    images = integrate(model, noise, embedded_grid(28), model.prompts.encode_many(prompts), keep="final").final
    adherence = AttributeClassifier.load().adherence(images.clamp(-1, 1), [parse_prompt(p) for p in prompts])
    assert float(adherence.mean()) >= ADHERENCE_FLOOR


def test_minilm_prompt_encoder_builds_guided_conditions(encoder):
    guided = MiniLMPromptEncoder(encoder, tokens=21, guidance_scale=4.0)
    cond = guided.encode(A)
    tok, pooled = encoder.encode_tokens([A, ""], 21)
    assert cond.guided and cond.prompt_embeds.shape == (1, 21, 384)
    # a batch pads its prompts together: the same embeddings up to float rounding
    assert torch.allclose(cond.prompt_embeds[0], tok[0], atol=1e-5) and torch.allclose(cond.negative_prompt_embeds[0], tok[1], atol=1e-5)
    assert torch.allclose(cond.encoder_hidden_states, torch.stack([tok[1], tok[0]]), atol=1e-5)
    assert torch.allclose(pooled[0], encoder.encode([A])[0], atol=1e-5)
    many = guided.encode_many([A, B])
    assert torch.allclose(many.prompt_embeds[1], guided.encode(B).prompt_embeds[0], atol=1e-5)
    assert many.negative_prompt_embeds.shape == (2, 21, 384)
    plain = MiniLMPromptEncoder(encoder, tokens=21, guidance_scale=1.0).encode(A)
    assert not plain.guided and plain.negative_prompt_embeds is None
    with pytest.raises(InvalidArgumentError):
        guided.encode("  ")


def test_classifier_adherence_reads_the_prompt_b():
    adherence = ClassifierAdherence()
    truth = render_attributes([parse_prompt(B)])
    assert adherence(truth, A, B).tolist() == [1.0]
    two_shapes = "a large red circle and a small yellow star on a blue background"
    assert math.isnan(adherence(truth, A, two_shapes)[0])


def test_load_embedded_rejects_a_folder_that_is_not_a_model(tmp_path):
    with pytest.raises(InvalidArgumentError, match="not an embedded-model folder"):
        load_embedded(tmp_path)


# --- command line -----------------------------------------------------------------------------


def test_generate_then_continue_from_the_cache(tmp_path, capsys):
    from PIL import Image

    cache = ["--cache", str(tmp_path / "cache"), "--steps", "6", "--seed", "2"]
    for name in ("a.png", "a2.png"):
        assert main(["generate", A, *cache, "--out", str(tmp_path / name)]) == 0
        generated = json.loads(capsys.readouterr().out)
    assert generated["prompt"] == A and generated["guidance"] == 4.0
    first, second = (Image.open(tmp_path / n) for n in ("a.png", "a2.png"))
    assert first.size == (32, 32) and first.tobytes() == second.tobytes()
    assert main(["continue", B, *cache, "--strategy", "linear", "--out", str(tmp_path / "b.png")]) == 0
    continued = json.loads(capsys.readouterr().out)
    assert continued["hit"] and continued["cached_prompt"] == A and continued["strategy"] == "linear blend"
    assert (tmp_path / "b.png").exists()


def test_bad_input_gives_a_clear_error(tmp_path, capsys):
    cache = str(tmp_path / "cache")
    cases = [
        (["generate", "   ", "--cache", cache], "prompt"),
        (["continue", B, "--cache", str(tmp_path / "nowhere")], "no cache directory"),
        (["generate", A, "--cache", cache, "--height", "64"], "32 x 32"),
        (["generate", A, "--cache", cache, "--encoder", "sd3"], "MiniLM"),
        (["bench", "--model", str(tmp_path / "no-checkpoint"), "--out", str(tmp_path / "b")], "no such checkpoint"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        assert message in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        main(["continue", B, "--cache", cache, "--strategy", "teleport"])
    assert exit_.value.code == 2 and "invalid choice: 'teleport'" in capsys.readouterr().err
    assert not (tmp_path / "cache").exists()  # nothing was created on the way to an error


def test_bench_quick_runs_the_protocol_on_the_embedded_model(tmp_path, capsys):
    assert main(["bench", "--quick", "--out", str(tmp_path)]) == 0
    assert "fraction of B's six attributes" in capsys.readouterr().out
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["model"] == load_embedded().fingerprint
    adherence = [r["adherence"] for r in results["runs"] if r["adherence"] != "nan"]
    assert adherence and all(0 <= a <= 1 for a in adherence)
    assert {p.name for p in tmp_path.iterdir()} == {"results.json", "report.md", "speedup_psnr.svg", "grid.png"}


def test_the_secant_correction_beats_the_direct_switch_on_the_embedded_model(model):
    from flowctl import metrics
    from flowctl.transitions import DirectSwitch, SecantCorrection, TransitionRequest

    noise = torch.cat([embedded_noise(s, model)[0] for s in range(2)])
    grid, cond_a, cond_b = embedded_grid(28), model.condition(A).repeat(2), model.condition(B).repeat(2)
    run_a = integrate(model, noise, grid, cond_a, keep=[16])
    reference = integrate(model, noise, grid, cond_b, keep="final").final
    req = TransitionRequest(model, run_a.resume_point(16), cond_a, cond_b)
    psnr = lambda x: float(metrics.psnr(x.clamp(-1, 1), reference.clamp(-1, 1), data_range=2.0).mean())  # noqa: E731
    direct, secant = DirectSwitch().run(req), SecantCorrection().run(req)
    assert secant.nfe["forward"] == direct.nfe["forward"] + 1 and secant.fallbacks == 0
    assert psnr(secant.final) > psnr(direct.final) + 3.0  # about 4 dB measured on this pair (docs/cache.md)


def test_the_embedded_model_loads_in_bfloat16(encoder):
    half = load_embedded(encoder=encoder, dtype=torch.bfloat16)
    assert half.dtype == torch.bfloat16 and half.transformer.dtype == torch.bfloat16
    noise = embedded_noise(0, half)[0]
    image = integrate(half, noise, embedded_grid(4), half.condition(A), keep="final").final
    assert image.dtype == torch.bfloat16 and torch.isfinite(image).all()
