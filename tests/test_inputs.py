"""Tests for ecaml.serve.inputs: the model's view of an image, and the check of an upload against the data set's look."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw
from torchvision import transforms as T

from ecaml.config import TrainConfig
from ecaml.eval.evaluate import eval_transform, split_for
from ecaml.runs import input_channels
from ecaml.serve import inputs


@pytest.fixture(scope="module", params=["digits", "glyphs"])
def data(request):
    config = TrainConfig(dataset=request.param).resolved()
    split = split_for(config)
    indices = split.indices("unseen")
    return config, split.dataset, indices, inputs.input_statistics(split.dataset, indices, config)


def drawing(size: int, ink: str, paper: str, seed: int) -> Image.Image:
    """A random thick-stroked scribble (a stand-in for a drawn character) on a plain background."""
    rng = np.random.default_rng(seed)
    image = Image.new("RGB", (size, size), paper)
    pen = ImageDraw.Draw(image)
    points = [tuple(int(v) for v in rng.integers(size // 5, 4 * size // 5, 2)) for _ in range(4)]
    pen.line(points, fill=ink, width=max(2, size // 10))
    return image


def test_the_model_view_is_exactly_what_the_transform_feeds_the_model(data):
    config = data[0]
    transform = eval_transform(config, input_channels(config))
    normalise = next(step for step in transform.transforms if isinstance(step, T.Normalize))
    for seed in range(20):
        image = drawing(int(np.random.default_rng(seed).integers(16, 300)), "white", "black", seed)
        view = inputs.model_view(image, config)
        assert view.size == (config.image_size, config.image_size)
        fed = transform(image.convert(view.mode))
        shown = normalise(T.ToTensor()(view))
        assert np.abs((fed - shown).numpy()).max() <= 1.01 / 255 / min(normalise.std) + 1e-6


def test_the_data_sets_own_images_pass_and_their_negatives_are_called_inverted(data):
    config, images, indices, statistics = data
    sample = np.random.default_rng(1).choice(indices, size=min(300, len(indices)), replace=False)
    own = [inputs.check_input(inputs.model_view(images.image(int(i)), config), statistics) for i in sample]
    negatives = [
        inputs.check_input(inputs.model_view(inputs.inverted(images.image(int(i))), config), statistics) for i in sample
    ]
    false_alarms = sum(any(f.kind == "inverted" for f in found) for found in own)
    caught = sum(any(f.kind == "inverted" and f.invert_helps for f in found) for found in negatives)
    assert false_alarms <= 0.02 * len(sample), false_alarms
    assert caught >= 0.95 * len(sample), caught


def test_a_dark_on_light_drawing_is_inverted_and_its_negative_fits(data):
    config, _, _, statistics = data
    assert statistics.background < 0.5  # both built-in sets are light strokes on a dark background
    for seed in range(30):
        drawn = drawing(200, "black", "white", seed)
        findings = inputs.check_input(inputs.model_view(drawn, config), statistics)
        assert [f.kind for f in findings] == ["inverted"], (seed, findings)
        assert "dark on light" in findings[0].message
        assert not inputs.check_input(inputs.model_view(inputs.inverted(drawn), config), statistics)


@pytest.mark.parametrize("tone", ["white", "black", "grey"])
def test_a_flat_image_is_called_flat(data, tone):
    config, _, _, statistics = data
    findings = inputs.check_input(inputs.model_view(Image.new("RGB", (64, 64), tone), config), statistics)
    assert "flat" in [f.kind for f in findings]
    assert not any(f.invert_helps for f in findings if f.kind == "flat")


def test_no_images_to_measure_is_a_clear_error(data):
    config, images, _, _ = data
    with pytest.raises(ValueError, match="no images"):
        inputs.input_statistics(images, np.array([], dtype=int), config)
