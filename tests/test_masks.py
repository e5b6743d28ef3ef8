"""One mask reading (bundle/data/masks.py) for training, the data check and the planner, on every mask format; the
fingerprint's label values; and the bad masks that the data check names in one line each (docs/reliability.md)."""

import logging

import numpy as np
import pytest
import tifffile
from bundle.data.check import COLOUR_CODED, NO_FOREGROUND, SIZE_MISMATCH, check_pairs, require_valid_data
from bundle.data.datasets import find_image_mask_pairs
from bundle.data.masks import mask_colours, mask_threshold, read_binary_mask, read_mask_array
from bundle.data.planning import fingerprint
from bundle.errors import DatasetError
from monai.bundle import ConfigParser
from monai.transforms import Compose
from PIL import Image
from scripts import plan as plan_script
from scripts.check_data import main as check_data_main

from tests.helpers import CONFIGS, write_pair

SHAPE = (48, 64)


def two_objects() -> np.ndarray:
    """(48, 64) bool truth: two rectangles."""
    truth = np.zeros(SHAPE, bool)
    truth[6:22, 8:30] = True
    truth[28:42, 38:58] = True
    return truth


def instance_ids(truth: np.ndarray, count: int, dtype) -> np.ndarray:
    """``truth`` tiled into 2x4-pixel objects with ids 1..``count`` (repeating), background 0."""
    rows, columns = np.indices(SHAPE)
    ids = ((rows // 2) * (SHAPE[1] // 4) + columns // 4) % count + 1
    return np.where(truth, ids, 0).astype(dtype)


def write_mask(path, array):
    if path.suffix == ".tif":
        tifffile.imwrite(path, array)
    else:
        Image.fromarray(array).save(path, **({"quality": 90} if path.suffix == ".jpg" else {}))
    return path


TRUTH = two_objects()
GREY = (TRUTH * 255).astype(np.uint8)
FORMATS = {  # name: (file name, stored array, the threshold it reads with)
    "0/255 PNG": ("m.png", GREY, 127),
    "0/255 JPEG (compression noise)": ("m.jpg", GREY, 127),
    "0/1": ("m.png", TRUTH.astype(np.uint8), 0),
    "instance ids 0..7": ("m.png", instance_ids(TRUTH, 7, np.uint8), 0),
    "16-bit instance ids 0..300": ("m.png", instance_ids(TRUTH, 300, np.uint16), 0),
    "16-bit instance ids 0..300, TIFF": ("m.tif", instance_ids(TRUTH, 300, np.uint16), 0),
    "8-bit instance ids 0..200": ("m.png", instance_ids(TRUTH, 200, np.uint8), 0),
    "RGB-saved 0/255": ("m.png", np.stack([GREY] * 3, axis=-1), 127),
    "RGB-saved 0/255 JPEG": ("m.jpg", np.stack([GREY] * 3, axis=-1), 127),
    "RGB-saved instance ids": ("m.png", np.stack([instance_ids(TRUTH, 7, np.uint8)] * 3, axis=-1), 0),
    "16-bit 0/65535": ("m.png", (TRUTH * 65535).astype(np.uint16), 32767),
    "16-bit 0/1000": ("m.tif", (TRUTH * 1000).astype(np.uint16), 500),
}


@pytest.fixture(scope="module")
def load_label():
    """train.json's load_transforms (LoadImaged ... BinarizeMaskd): training's and evaluation's mask reading."""
    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "train.json"))
    return Compose(parser.get_parsed_content("load_transforms"))


@pytest.mark.parametrize("name", FORMATS)
def test_every_format_reads_as_its_foreground_in_training_the_check_and_the_planner(tmp_path, load_label, name):
    file_name, array, threshold = FORMATS[name]
    image = write_mask(tmp_path / "image.png", np.stack([GREY] * 3, axis=-1))
    mask = write_mask(tmp_path / file_name, array)
    stored = read_mask_array(mask)
    assert mask_threshold(stored.max(axis=-1) if stored.ndim == 3 else stored, mask) == threshold
    assert np.array_equal(read_binary_mask(mask), TRUTH)
    trained = load_label({"image": str(image), "label": str(mask)})["label"]
    assert trained.shape == (1, *SHAPE) and np.array_equal(trained[0].numpy() > 0, TRUTH)
    report = check_pairs([{"image": str(image), "label": str(mask)}], tmp_path)
    assert report.ok and not report.empty_masks, str(report)
    found = fingerprint([str(mask)])
    assert found["foreground_fraction"] == pytest.approx(TRUTH.mean(), abs=1e-4)
    assert found["objects_per_image"] == 2 and found["masks_with_foreground"] == 1


def test_a_soft_map_and_noise_are_not_taken_for_instance_ids(tmp_path):
    """Values spread over 0..255 in flat regions are ids; a smooth ramp or noise is no mask (the check refuses it)."""
    ramp = np.tile(np.linspace(0, 255, SHAPE[1]).astype(np.uint8), (SHAPE[0], 1))
    noise = np.random.default_rng(0).integers(0, 256, SHAPE, dtype=np.uint8)
    for values in (ramp, noise):
        assert mask_threshold(values, "m.png") == 127
    image = write_mask(tmp_path / "image.png", GREY)
    mask = write_mask(tmp_path / "soft.png", ramp)
    assert not check_pairs([{"image": str(image), "label": str(mask)}], tmp_path).ok


def write_dataset(folder, masks: dict[str, np.ndarray]):
    """images/<name>.png (grey RGB) + masks/<name>.png for each mask."""
    for name, mask in masks.items():
        write_pair(folder, name, np.zeros((*mask.shape[:2], 3), np.uint8) + 40, mask)
    return folder


def test_the_fingerprint_records_the_label_values_and_plan_py_prints_them(tmp_path, caplog):
    ids = instance_ids(TRUTH, 7, np.uint8)
    folder = write_dataset(tmp_path / "ids", {f"case_{i}": ids for i in range(5)} | {"negative": ids * 0})
    with caplog.at_level(logging.INFO):
        overlay = plan_script.main(
            ["--dataset_dir", str(folder), "--output", str(tmp_path / "p.json"), "--device", "cpu"]
        )
    found = overlay["plan"]["fingerprint"]
    assert found["label_values"] == list(range(8)) and found["distinct_label_values"] == 8
    assert found["mask_formats"] == {"instance ids 0..7": 5, "all background": 1}
    assert found["masks_with_foreground"] == 5 and found["objects_per_image"] == 2
    assert "label values: 0, 1, 2, 3, 4, 5, 6, 7 (8 distinct); mask formats: instance ids 0..7: 5" in caplog.text


def test_no_foreground_in_any_mask_stops_planning_in_one_line_naming_the_values(tmp_path):
    folder = write_dataset(tmp_path / "empty", {f"case_{i}": np.full(SHAPE, 0, np.uint8) for i in range(4)})
    with pytest.raises(DatasetError) as error:
        plan_script.main(["--dataset_dir", str(folder), "--output", str(tmp_path / "p.json"), "--device", "cpu"])
    message = str(error.value)
    assert "\n" not in message and "no foreground in any mask of" in message and str(folder / "masks") in message
    assert "label values 0 (1 distinct)" in message and "all background: 4" in message
    assert not (tmp_path / "p.json").exists()


def test_colour_coded_masks_are_told_from_grey_saved_as_rgb():
    colours = np.zeros((*SHAPE, 3), np.uint8)
    colours[6:22, 8:30] = (255, 0, 0)
    colours[28:42, 38:58] = (0, 128, 0)
    assert mask_colours(colours, "m.png") == [(255, 0, 0), (0, 128, 0)]  # most pixels first
    assert mask_colours(np.stack([GREY] * 3, axis=-1), "m.png") == [(255, 255, 255)]
    assert mask_colours(GREY, "m.png") == []
    red = np.zeros_like(colours)
    red[TRUTH] = (200, 10, 0)
    assert len(mask_colours(red, "m.png")) == 1  # one colour is one foreground


def make_bad_masks_dataset(root):
    """Good pairs, a negative frame, and one of each bad mask: another size, colour-coded, no image."""
    good = GREY
    colour = np.zeros((*SHAPE, 3), np.uint8)
    colour[6:22, 8:30], colour[28:42, 38:58] = (255, 0, 0), (0, 255, 0)
    masks = {"good_0": good, "good_1": good, "negative": good * 0, "smaller": good[:40], "colour": colour}
    write_dataset(root, masks)
    write_mask(root / "images" / "smaller.png", np.zeros((*SHAPE, 3), np.uint8))  # the image keeps 48x64
    write_mask(root / "masks" / "extra.png", good)  # a mask without an image
    return root


def report_lines(text: str, heading: str) -> list[str]:
    """The file lines listed under ``heading`` in a check report."""
    block = text.split(heading, 1)[1].split("\n")[1:]
    return [line.strip() for line in block[: next(i for i, line in enumerate(block) if not line.startswith("    "))]]


def test_check_data_names_each_bad_mask_in_one_line(tmp_path, capsys):
    root = make_bad_masks_dataset(tmp_path / "bad")
    assert check_data_main([str(root)]) == 1
    report = capsys.readouterr().out
    assert report_lines(report, "mask(s) without an image") == ["extra.png"]
    assert report_lines(report, SIZE_MISMATCH) == ["images/smaller.png (48x64) vs masks/smaller.png (40x64)"]
    [colour] = report_lines(report, COLOUR_CODED)
    assert colour.startswith("masks/colour.png: 2 colours (RGB(255, 0, 0), RGB(0, 255, 0))")
    assert report_lines(report, "all-background mask(s), allowed") == ["masks/negative.png"]
    assert "FAILED: 3 hard error(s), 1 all-background mask(s)" in report
    assert "label values 0, 255 (2 distinct)" in report
    with pytest.raises(DatasetError, match="mask\\(s\\) without an image"):
        find_image_mask_pairs(root)  # what training's datalist does: nothing trains on the extra mask


def test_training_starts_on_some_negative_frames_with_a_warning_but_refuses_only_background(tmp_path, caplog):
    root = write_dataset(tmp_path / "some", {"a": GREY, "b": GREY * 0, "c": GREY * 0})
    with caplog.at_level(logging.WARNING):
        assert require_valid_data(find_image_mask_pairs(root), root).ok
    [warning] = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert warning == "2 of 3 masks are all background and train as negative frames: masks/b.png, masks/c.png"
    for name in ("b", "c"):
        (root / "masks" / f"{name}.png").unlink()
        (root / "images" / f"{name}.png").unlink()
    write_mask(root / "masks" / "a.png", GREY * 0)
    with pytest.raises(DatasetError) as error:
        require_valid_data(find_image_mask_pairs(root), root)
    assert f"1 {NO_FOREGROUND}:\n    no foreground in any of the 1 mask(s) read: label values 0" in str(error.value)
    assert "Training refuses to start" in str(error.value)


def test_training_refuses_a_colour_coded_mask(tmp_path):
    colour = np.zeros((*SHAPE, 3), np.uint8)
    colour[6:22, 8:30], colour[28:42, 38:58] = (255, 0, 0), (0, 0, 255)
    root = write_dataset(tmp_path / "colour", {"a": GREY, "b": colour})
    with pytest.raises(DatasetError, match="masks/b.png: 2 colours"):
        require_valid_data(find_image_mask_pairs(root), root)
