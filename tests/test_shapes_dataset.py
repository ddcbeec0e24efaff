"""The procedural captioned dataset and the prompt parser (flowctl.data)."""

from __future__ import annotations

import random
import time

import pytest
import torch

from flowctl.bench.pairs import PROMPT_PAIRS
from flowctl.data.prompts import parse_prompt
from flowctl.data.shapes_dataset import (
    MODIFIERS,
    TEMPLATES,
    VOCABULARIES,
    Attributes,
    ShapesDataset,
    all_captions,
    draw_attributes,
    render_attributes,
)
from flowctl.errors import InvalidArgumentError, UnknownNameError
from flowctl.systems.shapes import Shape, caption, render


def test_deterministic_for_a_seed_and_different_across_seeds():
    a, b, c = ShapesDataset(64, seed=3), ShapesDataset(64, seed=3), ShapesDataset(64, seed=4)
    assert a.captions == b.captions and a.attributes == b.attributes
    assert torch.equal(a.images(), b.images())
    assert a.captions != c.captions


def test_items_are_images_in_range_with_caption_and_attributes():
    data = ShapesDataset(200, seed=0)
    image, text, attrs = data[5]
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32
    assert torch.equal(image, data.images(5, 6)[0])
    assert text == data.captions[5] and attrs == data.attributes[5]
    images = data.images()
    assert images.shape == (200, 3, 32, 32)
    assert images.min() >= -1 and images.max() <= 1
    assert images.amin(dim=(1, 2, 3)).lt(images.amax(dim=(1, 2, 3))).all()  # no blank image
    assert len(data) == 200


def test_matches_the_shapes_renderer_without_modifier():
    shape = Shape("star", "red", "large", "at the top left")
    attrs = Attributes("star", "red", "large", "at the top left", "blue")
    assert torch.allclose(render_attributes([attrs])[0], render("blue", (shape,)), atol=1e-6)
    assert attrs.caption() == caption("blue", (shape,))


def test_captions_are_varied_paraphrases():
    data = ShapesDataset(2000, seed=0)
    text = " | ".join(data.captions)
    for phrase in ("big", "little", "against a", "background with", "on a", "upper", "at sunset", "at night", "fog"):
        assert phrase in text, phrase
    assert len(set(data.captions)) > 1900
    assert {a.modifier for a in data.attributes} == set(MODIFIERS)
    for name, vocabulary in VOCABULARIES.items():
        assert {getattr(a, name) for a in data.attributes} == set(vocabulary), name


@pytest.mark.parametrize("modifier", MODIFIERS[1:])
def test_modifiers_change_the_whole_image(modifier):
    plain = Attributes("circle", "red", "small", "on the left", "white")
    changed = Attributes("circle", "red", "small", "on the left", "white", modifier)
    a, b = render_attributes([plain, changed])
    corner = (slice(None), slice(0, 4), slice(-4, None))  # far from the shape
    assert (a[corner] - b[corner]).abs().mean() > 0.15
    assert (a - b).abs().mean(0).gt(0.05).float().mean() > 0.95  # nearly every pixel changes


def test_modifiers_have_their_look():
    base = {"shape": "square", "colour": "green", "size": "large", "position": "", "background": "gray"}
    plain, sunset, night, fog = render_attributes([Attributes(**base, modifier=m) for m in MODIFIERS])
    red, _, blue = sunset.mean((1, 2))
    assert red > blue and sunset[:, :4].mean() > sunset[:, -4:].mean()  # warm, brighter sky at the top
    assert night.mean() < plain.mean() - 0.3 and night[2].mean() > night[0].mean()  # dark and blue
    assert fog.std() < 0.6 * plain.std() and fog.mean() > plain.mean()  # washed out and light


def test_fifty_thousand_images_are_fast():
    start = time.perf_counter()
    images = ShapesDataset(50_000, seed=1).images()
    assert images.shape == (50_000, 3, 32, 32)
    assert time.perf_counter() - start < 15


def test_bad_arguments_raise_typed_errors():
    with pytest.raises(UnknownNameError):
        Attributes("blob", "red", "large", "", "blue")
    with pytest.raises(UnknownNameError):
        Attributes("circle", "red", "large", "", "blue", "at noon")
    with pytest.raises(InvalidArgumentError):
        Attributes("circle", "red", "large", "", "red")
    with pytest.raises(InvalidArgumentError):
        ShapesDataset(0)
    with pytest.raises(InvalidArgumentError):
        ShapesDataset(10, seed=-1)
    with pytest.raises(InvalidArgumentError):
        ShapesDataset(10).images(10, 20)
    with pytest.raises(InvalidArgumentError):
        render_attributes([])


def test_parse_prompt_round_trips_every_template_and_paraphrase():
    rng = random.Random(0)
    for _ in range(200):
        attrs = draw_attributes(rng)
        captions = all_captions(attrs)
        assert len(captions) >= len(TEMPLATES)
        for text in captions:
            assert parse_prompt(text) == attrs, text


def test_parse_prompt_reads_the_benchmark_prompts():
    prompts = sorted({p for pair in PROMPT_PAIRS for p in (pair.a, pair.b)})
    parsed = {p: parse_prompt(p) for p in prompts}
    unparsed = [p for p, a in parsed.items() if a is None]
    assert unparsed == ["a large red circle and a small yellow star on a blue background"]  # two shapes
    assert parsed["a small black star in the upper right corner on a purple background"] == Attributes(
        "star", "black", "small", "at the top right", "purple")
    assert parsed["a big red circle on a blue background"] == parsed["a blue background with a large red circle"]


def test_parse_prompt_paraphrases_and_rejections():
    assert parse_prompt("A Little GREY ring, lower left, against a white background at dusk!") == Attributes(
        "ring", "gray", "small", "at the bottom left", "white", "at sunset")
    for text in (
        "a red circle on a blue background",  # no size
        "a large circle on a blue background",  # no colour
        "a large red circle",  # no background
        "a large red circle next to a dog on a blue background",  # a word from elsewhere
        "a large red circle on a red background",  # invisible
        "a large red circle in the middle at the top on a blue background",
        "a large red circle on a blue background at night in fog",
    ):
        assert parse_prompt(text) is None, text
    with pytest.raises(InvalidArgumentError):
        parse_prompt("   ")
    with pytest.raises(InvalidArgumentError):
        parse_prompt(42)
