"""The photometric recipe (bundle.data.augmentations and train.json's ``photometric_transforms``)."""

import json

import pytest
import torch
from bundle.data.augmentations import RandJpegd, RandSaturationd
from monai.bundle import ConfigParser
from monai.data import MetaTensor
from scripts.comparison.recipes import CROSS_CENTRE_RECIPES

from tests.helpers import CONFIGS


def colour_image(seed=0, size=32):
    """(3, size, size) smooth colour gradients in [0, 1] with a little noise."""
    generator = torch.Generator().manual_seed(seed)
    ramp = torch.linspace(0, 1, size)
    image = torch.stack(
        [ramp[None].expand(size, size), ramp[:, None].expand(size, size), 1 - ramp[None].expand(size, size)]
    )
    return (0.8 * image + 0.2 * torch.rand(3, size, size, generator=generator)).clamp(0, 1)


def test_saturation_zero_gives_grey_and_one_keeps_the_image():
    image, label = colour_image(), torch.ones(1, 32, 32)
    grey = RandSaturationd(["image"], factors=(0.0, 0.0), prob=1.0)({"image": image, "label": label})
    assert torch.allclose(grey["image"][0], grey["image"][1]) and torch.allclose(grey["image"][1], grey["image"][2])
    assert torch.equal(grey["label"], label)
    same = RandSaturationd(["image"], factors=(1.0, 1.0), prob=1.0)({"image": image})
    assert torch.allclose(same["image"], image)
    never = RandSaturationd(["image"], factors=(0.0, 0.0), prob=0.0)({"image": image})
    assert torch.equal(never["image"], image)
    one_channel = image[:1]
    assert torch.equal(
        RandSaturationd(["image"], factors=(0.0, 0.0), prob=1.0)({"image": one_channel})["image"], one_channel
    )


@pytest.mark.parametrize("channels", [1, 3])
def test_jpeg_artefacts_keep_shape_range_and_metadata(channels):
    image = MetaTensor(colour_image()[:channels], meta={"filename_or_obj": "a.png"})
    out = RandJpegd(["image"], quality=(10, 10), prob=1.0)({"image": image})["image"]
    assert out.shape == image.shape and out.dtype == torch.float32
    assert isinstance(out, MetaTensor) and out.meta["filename_or_obj"] == "a.png"
    assert 0 <= float(out.min()) and float(out.max()) <= 1
    error = float((out - image).abs().mean())
    assert 0.002 < error < 0.1  # quality 10 changes the pixels, and keeps the picture
    high = RandJpegd(["image"], quality=(95, 95), prob=1.0)({"image": image})["image"]
    assert float((high - image).abs().mean()) < error


def test_train_json_trains_with_the_photometric_recipe_and_the_baseline_row_drops_it():
    config = json.loads((CONFIGS / "train.json").read_text())
    targets = [entry["_target_"] for entry in config["photometric_transforms"]]
    assert "bundle.data.augmentations.RandJpegd" in targets and "bundle.data.augmentations.RandSaturationd" in targets
    assert "@photometric_transforms" in config["train"]["preprocessing"]["transforms"]
    parser = ConfigParser(config)
    with_recipe = len(parser.get_parsed_content("train#preprocessing").transforms)
    parser = ConfigParser(config)
    parser.update(CROSS_CENTRE_RECIPES["baseline"][2])
    assert len(parser.get_parsed_content("train#preprocessing").transforms) == with_recipe - len(targets)
