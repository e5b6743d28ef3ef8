"""The planner (bundle/data/planning.py, scripts/plan.py): fingerprints of synthetic datasets of different sizes and object
scales give the choices docs/planning.md documents, the plan file drives train.json, and an explicit id wins."""

import json

import numpy as np
import pytest
from bundle.data.planning import PlanRules, fingerprint, plan_training
from monai.bundle import ConfigParser
from scripts import plan as plan_script

from tests.helpers import CONFIGS, write_pair


def write_dots_dataset(folder, count, side, radius, per_image):
    """``count`` side×side images, each with ``per_image`` discs of ``radius`` px on a grid (their 0/255 mask)."""
    yy, xx = np.mgrid[:side, :side]
    cells = int(np.ceil(np.sqrt(per_image)))
    for index in range(count):
        mask = np.zeros((side, side), np.uint8)
        for k in range(per_image):
            cy, cx = (np.array(divmod(k, cells)) + 0.5) * side / cells
            mask[(yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2] = 255
        image = np.stack([mask // 2 + 40] * 3, axis=-1).astype(np.uint8)
        write_pair(folder, f"case_{index:03d}", image, mask)
    return folder


def fake_fingerprint(training_images, side=500, small=0.2):
    return {"training_images": training_images, "median_size": [side, side], "small_object_diameter": small}


def test_fingerprint_measures_object_count_and_size(tmp_path):
    folder = write_dots_dataset(tmp_path / "dots", count=5, side=200, radius=5, per_image=9)
    found = fingerprint(sorted(str(p) for p in (folder / "masks").iterdir()))
    assert found["images"] == 5 and found["median_size"] == [200, 200]
    assert found["objects_per_image"] == 9
    assert found["object_diameter"] == pytest.approx(2 * 5.1 / 200, rel=0.1)  # a disc of radius 5: ~81 px
    assert found["foreground_fraction"] == pytest.approx(9 * np.pi * 25 / 200**2, rel=0.15)


@pytest.mark.parametrize(
    "radius, side, device, size",
    [
        (60, 256, "cpu", 128),  # large objects: the smallest input side
        (3, 512, "cpu", 256),  # small objects: as large as the CPU allows
        (3, 512, "cuda", 512),  # ... and the GPU
        (3, 200, "cuda", 192),  # never above the image's own side
        (60, 400, "cuda", 256),  # a GPU's smallest input side
    ],
)
def test_input_size_follows_the_object_scale_and_the_device(tmp_path, radius, side, device, size):
    folder = write_dots_dataset(tmp_path / "set", count=4, side=side, radius=radius, per_image=4)
    found = fingerprint(sorted(str(p) for p in (folder / "masks").iterdir()))
    assert plan_training(found, device)["image_size"] == [size, size]


@pytest.mark.parametrize(
    "training_images, device, batch, epochs, learning_rate",
    [
        (24, "cpu", 4, 167, 1.5e-3),  # MoNuSeg-sized: batch 4 (>= 8 steps), lr scaled down from batch 8
        (68, "cpu", 8, 112, 3e-3),  # 85-image sets
        (720, "cpu", 16, 23, 3e-3),  # Kvasir-SEG: the CPU's largest batch
        (5000, "cuda", 32, 20, 3e-3),  # large sets: at least min_epochs
        (8, "cpu", 4, 200, 1.5e-3),  # tiny sets: at most max_epochs
    ],
)
def test_batch_epochs_and_learning_rate_follow_the_dataset_size(training_images, device, batch, epochs, learning_rate):
    plan = plan_training(fake_fingerprint(training_images), device, base_learning_rate=3e-3)
    assert (plan["batch_size"], plan["epochs"]) == (batch, epochs)
    assert plan["learning_rate"] == pytest.approx(learning_rate)
    assert set(plan["reasons"]) == {"image_size", "batch_size", "epochs", "learning_rate"}


def test_a_time_budget_caps_the_epochs():
    free = plan_training(fake_fingerprint(68), "cpu")
    budget = plan_training(fake_fingerprint(68), "cpu", minutes=2, seconds_per_step=0.5)
    assert free["epochs"] == 112 and budget["epochs"] == int(120 / (0.5 * 9 * 1.15))
    assert "2-minute budget" in budget["reasons"]["epochs"]
    rules = PlanRules(target_steps=90)
    assert plan_training(fake_fingerprint(68), "cpu", rules=rules)["epochs"] == rules.min_epochs


def test_the_plan_file_drives_train_json_and_an_explicit_id_wins(tmp_path):
    folder = write_dots_dataset(tmp_path / "data", count=10, side=160, radius=20, per_image=2)
    plan_file = tmp_path / "plan.json"
    overlay = plan_script.main(["--dataset_dir", str(folder), "--output", str(plan_file), "--device", "cpu"])
    written = json.loads(plan_file.read_text())
    assert written == overlay and written["plan"]["fingerprint"]["training_images"] == 8
    assert set(written["plan"]["reasons"]) == {"image_size", "batch_size", "epochs", "learning_rate"}

    def parsed(**overrides):
        parser = ConfigParser()
        parser.read_config([str(CONFIGS / "train.json"), str(plan_file)])
        parser.update({"dataset_dir": str(folder), "num_workers": 0, **overrides})
        return parser

    planned = parsed()
    assert planned.get_parsed_content("train#dataloader#batch_size") == written["batch_size"] == 4
    assert planned.get_parsed_content("train#trainer#max_epochs") == written["epochs"]
    assert planned.get_parsed_content("optimizer#lr") == written["learning_rate"]
    assert planned["image_size"] == written["image_size"] == [128, 128]
    overridden = parsed(batch_size=2, epochs=3, learning_rate=1e-4, image_size=[64, 64])
    assert overridden.get_parsed_content("train#dataloader#batch_size") == 2
    assert overridden.get_parsed_content("train#trainer#max_epochs") == 3
    assert overridden.get_parsed_content("optimizer#lr") == 1e-4
    assert overridden.get_parsed_content("resize_transforms#0#spatial_size") == [64, 64]
