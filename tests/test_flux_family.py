"""The ``flux`` model family on the command line: tiny random FLUX.1 pipelines (dev-like with a
guidance embedding, schnell-like without) saved to folders run ``flowctl generate``, ``continue``
and ``bench`` through :func:`flowctl.cli.main`; the generated PNG is ``FluxPipeline``'s own;
the SD3 and FLUX families refuse each other's folders with a typed error. Offline, CPU."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")

sys.path.insert(0, str(Path(__file__).parent))
from sd3_tiny import tiny_vae  # noqa: E402
from test_flux_adapter import tiny_pipeline, tiny_text_parts  # noqa: E402

from flowctl.adapters.flux import FluxPooledEncoder  # noqa: E402
from flowctl.adapters.flux.checkpoint import load_pipeline as load_flux  # noqa: E402
from flowctl.adapters.flux.errors import NotFluxCheckpointError  # noqa: E402
from flowctl.adapters.sd3.checkpoint import load_pipeline as load_sd3  # noqa: E402
from flowctl.adapters.sd3.errors import NotSD3CheckpointError  # noqa: E402
from flowctl.cache import DiskStore  # noqa: E402
from flowctl.cli import main  # noqa: E402
from flowctl.families import family_for  # noqa: E402

A, B = "a large red circle on a blue background", "a big red circle on a blue background"
STEPS, SIZE = 4, 16  # 16 pixels: 8 x 8 unpacked latents (the tiny VAE scales by 2), 16 tokens
COMMON = ["--steps", str(STEPS), "--height", str(SIZE), "--width", str(SIZE), "--max-sequence-length", "8", "--seed", "3"]
CALL = dict(num_inference_steps=STEPS, height=SIZE, width=SIZE, max_sequence_length=8)


def flux_folder(tmp_path_factory, config: str):
    """A tiny FLUX pipeline with a VAE and tiny CLIP and T5, saved; and the pipeline."""
    pipe = tiny_pipeline(config, vae=tiny_vae(), **tiny_text_parts())
    path = tmp_path_factory.mktemp(config) / f"tiny-flux-{config}"
    pipe.save_pretrained(path)
    return path, pipe


@pytest.fixture(scope="module")
def dev(tmp_path_factory):
    return flux_folder(tmp_path_factory, "dev")


@pytest.fixture(scope="module")
def sd3_folder(tmp_path_factory):
    """A folder that names the SD3 pipeline (the class check comes before any weight is read)."""
    path = tmp_path_factory.mktemp("sd3") / "tiny-sd3"
    path.mkdir()
    (path / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusion3Pipeline"}))
    return path


def png(path: Path) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(path))


def test_a_flux_folder_runs_generate_continue_and_bench(dev, tmp_path, capsys):
    folder, pipe = dev
    assert family_for(str(folder)).name == "flux"
    cache = ["--model", str(folder), "--cache", str(tmp_path / "cache"), *COMMON, "--guidance", "4", "--encoder", "minilm"]
    assert main(["generate", A, *cache, "--out", str(tmp_path / "a.png")]) == 0
    generated = json.loads(capsys.readouterr().out)
    assert generated["entry_id"] in DiskStore(tmp_path / "cache") and generated["guidance"] == 4.0
    assert generated["nfe"]["forward"] == STEPS and generated["model"].startswith("flux-dit-float32-")
    reference = pipe(A, guidance_scale=4.0, generator=torch.Generator().manual_seed(3), **CALL).images[0]
    assert np.array_equal(png(tmp_path / "a.png"), np.asarray(reference))  # the pipeline's own image

    assert main(["continue", B, *cache, "--strategy", "sigmoid", "--out", str(tmp_path / "b.png")]) == 0
    continued = json.loads(capsys.readouterr().out)
    assert continued["hit"] and continued["cached_prompt"] == A and continued["strategy"] == "sigmoid blend"
    assert 0 < continued["resume_step"] < STEPS and sum(continued["nfe"].values()) < STEPS
    assert png(tmp_path / "b.png").shape == (SIZE, SIZE, 3)

    bench = ["bench", "--model", str(folder), *COMMON[:-2], "--quick", "--methods", "direct,mpc", "--out", str(tmp_path / "bench")]
    assert main(bench) == 0
    assert "direct switch" in capsys.readouterr().out
    runs = json.loads((tmp_path / "bench" / "results.json").read_text())["runs"]
    methods = {r["method"] for r in runs}
    assert "direct switch" in methods and any(m.startswith("shooting + MPC") for m in methods)  # MPC on 2x2 patch blocks
    assert (tmp_path / "bench" / "grid.png").exists()


def test_on_a_model_without_guidance_embedding_guidance_is_true_cfg(tmp_path_factory, tmp_path, capsys):
    folder, pipe = flux_folder(tmp_path_factory, "schnell")
    argv = ["generate", A, "--model", str(folder), "--cache", str(tmp_path / "cache"), *COMMON, "--out", str(tmp_path / "a.png")]
    assert main([*argv, "--guidance", "2.5", "--negative-prompt", "blurry"]) == 0
    assert json.loads(capsys.readouterr().out)["guidance"] == 2.5
    reference = pipe(A, true_cfg_scale=2.5, negative_prompt="blurry", generator=torch.Generator().manual_seed(3), **CALL).images[0]
    assert np.array_equal(png(tmp_path / "a.png"), np.asarray(reference))


def test_the_families_refuse_each_others_folders(dev, sd3_folder, tmp_path, capsys, monkeypatch):
    folder, _ = dev
    with pytest.raises(NotSD3CheckpointError, match="FluxPipeline"):
        load_sd3(folder)
    with pytest.raises(NotFluxCheckpointError, match="StableDiffusion3Pipeline"):
        load_flux(sd3_folder)
    cache = ["--cache", str(tmp_path / "cache")]
    cases = ((family_for(str(sd3_folder)), folder, "StableDiffusion3Pipeline"), (family_for(str(folder)), sd3_folder, "FluxPipeline"))
    for family, other, expected in cases:  # each family handed the other's folder
        monkeypatch.setattr("flowctl.cli.family_for", lambda model, family=family: family)
        assert main(["generate", A, "--model", str(other), *cache]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("flowctl generate: error:") and f"not {expected!r}" in err
    assert not (tmp_path / "a.png").exists()


@pytest.mark.parametrize("option, argument", [
    (["--no-t5"], "--no-t5"), (["--encoder", "sd3"], "--encoder"), (["--negative-prompt", "blurry"], "--negative-prompt"),
])
def test_options_that_do_not_apply_to_flux_are_refused(dev, tmp_path, capsys, option, argument):
    folder, _ = dev
    assert main(["generate", A, "--model", str(folder), "--cache", str(tmp_path / "cache"), *option]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"error: {argument}:" in err


def test_pooled_encoder_is_the_pipelines_pooled_clip_embedding(dev):
    _, pipe = dev
    encoder = FluxPooledEncoder(pipe)
    pooled = pipe.encode_prompt(A, None, max_sequence_length=8)[1]
    assert encoder.dim == pooled.shape[1] and encoder.name.startswith("flux-pooled-clip:")
    assert torch.equal(encoder.encode([A])[0], torch.nn.functional.normalize(pooled, dim=1)[0])


def test_the_benchmark_view_has_one_noise_row_per_seed_and_2x2_patch_blocks(dev):
    from flowctl.adapters.flux import FluxDynamics, noise_latents
    from flowctl.adapters.flux.bench import flux_model

    _, pipe = dev
    model = flux_model(pipe, FluxDynamics.from_pipeline(pipe, guidance_scale=4.0, max_sequence_length=8), seeds=2, seed=5, height=SIZE, width=SIZE)
    assert torch.equal(model.noise[1:], noise_latents((1, 4, 8, 8), 6, dtype=torch.float32, device="cpu")[0])
    assert model.mpc_jacobian.block == (2, 2) and model.guidance == 4.0
    assert model.grid_for(STEPS).steps == STEPS and model.to_image(model.noise).shape == (2, 3, SIZE, SIZE)
