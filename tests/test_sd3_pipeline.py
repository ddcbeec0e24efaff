"""CachedStableDiffusion3Pipeline on a tiny random SD3 pipeline with CLIP encoders (CPU): a miss is
the pipeline's own call bit for bit, a hit makes fewer transformer calls, bad input is a typed
error before any model work."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")

from flowctl.adapters.common import MissingTextEncoderError  # noqa: E402
from flowctl.adapters.sd3.pipeline import CachedStableDiffusion3Pipeline  # noqa: E402
from flowctl.cache import CacheStore, DiskStore  # noqa: E402
from flowctl.errors import InvalidArgumentError  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from sd3_tiny import tiny_pipeline, tiny_text_pipeline  # noqa: E402

A = "a large red circle on a blue background"
CALL = dict(num_inference_steps=6, height=32, width=32, max_sequence_length=8)


@pytest.fixture(scope="module")
def pipe():
    pipe = tiny_text_pipeline()
    pipe.set_progress_bar_config(disable=True)
    calls = []
    pipe.transformer.register_forward_hook(lambda *args: calls.append(1))
    pipe.calls = calls
    return pipe


def cached(pipe, **kwargs):
    return CachedStableDiffusion3Pipeline.from_pipe(pipe, cache=CacheStore(device_bytes=1 << 26, host_bytes=0), **kwargs)


@pytest.mark.parametrize("guidance, output_type, images", [(4.0, "latent", 1), (1.0, "np", 2), (4.0, "pt", 1)])
def test_a_miss_is_the_pipelines_own_call(pipe, guidance, output_type, images):
    out = cached(pipe)(A, guidance_scale=guidance, output_type=output_type, num_images_per_prompt=images,
                       generator=torch.Generator().manual_seed(3), **CALL)
    reference = pipe(A, guidance_scale=guidance, output_type=output_type, num_images_per_prompt=images,
                     generator=torch.Generator().manual_seed(3), **CALL).images
    same = np.array_equal(out.images, reference) if output_type == "np" else torch.equal(out.images, reference)
    assert same and len(out.cache) == images and not any(c.hit for c in out.cache)
    assert all(c.entry_id is not None and c.model_evaluations == 6 for c in out.cache)


def test_a_generator_list_and_pil_output(pipe):
    generators = [torch.Generator().manual_seed(s) for s in (1, 2)]
    out = cached(pipe)([A, "a zebra"], guidance_scale=1.0, generator=generators, **CALL)
    reference = pipe([A, "a zebra"], guidance_scale=1.0, generator=[torch.Generator().manual_seed(s) for s in (1, 2)], **CALL).images
    assert [np.asarray(i).tobytes() for i in out.images] == [np.asarray(i).tobytes() for i in reference]


def test_a_hit_continues_the_cached_run_with_fewer_model_calls(pipe, tmp_path):
    store = DiskStore(tmp_path)
    first = CachedStableDiffusion3Pipeline.from_pipe(pipe, cache=store)
    first(A, guidance_scale=4.0, output_type="latent", generator=torch.Generator().manual_seed(0), **CALL)
    again = CachedStableDiffusion3Pipeline.from_pipe(pipe, cache=store, strategy="secant")  # another worker
    before = len(pipe.calls)
    out = again([A, A], guidance_scale=4.0, output_type="latent", generator=torch.Generator().manual_seed(9), **CALL)
    info = out.cache
    assert all(c.hit and c.cached_prompt == A and c.similarity == pytest.approx(1.0) and c.strategy == "secant correction" for c in info)
    assert len(pipe.calls) - before == sum(c.model_evaluations for c in info) < 2 * 6
    assert out.images.shape == (2, 4, 16, 16) and torch.isfinite(out.images).all()


def test_bad_input_is_typed_before_any_model_work(pipe):
    c = cached(pipe)
    before = len(pipe.calls)
    cases = [
        (dict(prompt=A, generator=[torch.Generator()] * 3), "generator"),
        (dict(prompt=A, sigmas=[1.0, 0.5]), "sigmas"),
        (dict(prompt=None), "prompt"),
        (dict(prompt="   "), "prompt"),
        (dict(prompt=A, output_type="jpeg"), "output_type"),
        (dict(prompt=A, cache_strategy="teleport"), "cache_strategy"),
        (dict(prompt=A, num_images_per_prompt=0), "num_images_per_prompt"),
    ]
    for kwargs, argument in cases:
        with pytest.raises(InvalidArgumentError) as info:
            c(**kwargs, **CALL)
        assert info.value.argument == argument
    assert len(pipe.calls) == before
    with pytest.raises(InvalidArgumentError, match="StableDiffusion3Pipeline"):
        CachedStableDiffusion3Pipeline.from_pipe(object(), cache=CacheStore())
    with pytest.raises(MissingTextEncoderError):
        CachedStableDiffusion3Pipeline.from_pipe(tiny_pipeline(), cache=CacheStore())
