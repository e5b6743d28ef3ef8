"""Stage-1 bundle: train.json trains, evaluate.json reports per-image metrics at original size, transforms, metadata."""

import csv
import json
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
import tifffile
import torch
from bundle.data.demo import make_demo_dataset
from bundle.networks import LightweightHierarchicalUTANet
from monai.bundle import ConfigParser
from PIL import Image

from tests.helpers import CONFIGS, FAST, REPO_ROOT, fast_network_settings, make_rectangles_dataset, run_bundle


def test_train_two_epochs_writes_checkpoint_and_metrics(tmp_path):
    dataset = make_demo_dataset(tmp_path / "demo", num_images=12, size=64)
    workflow = run_bundle(["train.json"], bundle_root=str(tmp_path), dataset_dir=dataset, epochs=2, **FAST)
    checkpoint = tmp_path / "models" / "stage1" / "model.pt"
    assert checkpoint.is_file()
    state = torch.load(checkpoint, weights_only=True)
    LightweightHierarchicalUTANet(encoder="mobilenetv2", norm="group").load_state_dict(state["model"])  # strict
    assert state["network_settings"] == fast_network_settings()  # what inference rebuilds the network from
    evaluator = workflow.parser.get_parsed_content("validate#evaluator")
    assert evaluator.state.epoch == 2
    for name in ("val_mean_dice", "val_iou", "val_precision", "val_recall", "val_hd95"):
        assert name in evaluator.state.metrics
    assert 0.0 <= evaluator.state.metrics["val_mean_dice"] <= 1.0
    assert evaluator.state.best_metric_epoch in (1, 2)
    assert list((tmp_path / "eval").glob("events.out.tfevents.*"))


def test_transforms_keep_orientation_and_binarise(tmp_path):
    """A marker in the top-left of a non-square image stays top-left in (C, H, W), for every reader."""
    image = np.zeros((40, 60, 3), np.uint8)
    image[:10, :20] = 255
    mask = np.zeros((40, 60), np.uint8)
    mask[:10, :20] = 255
    jpeg_noise_mask = np.where(mask > 0, 250, 6).astype(np.uint8)
    paths = {}
    for ext in (".png", ".bmp", ".tif"):
        paths[ext] = tmp_path / f"img{ext}"
        Image.fromarray(image).save(paths[ext])
    tifffile.imwrite(tmp_path / "img16.tif", image.astype(np.uint16) * 257)
    paths[".tif16"] = tmp_path / "img16.tif"
    Image.fromarray(image[..., 0]).save(tmp_path / "grey.png")
    paths["grey"] = tmp_path / "grey.png"
    Image.fromarray(jpeg_noise_mask).save(tmp_path / "noisy_mask.png")
    Image.fromarray(np.where(mask > 0, 1, 0).astype(np.uint8)).save(tmp_path / "label_map.png")

    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "train.json"))
    parser["image_size"] = [64, 96]
    transform = parser.get_parsed_content("validate#preprocessing")
    for label in ("noisy_mask.png", "label_map.png"):
        for name, path in paths.items():
            out = transform({"image": str(path), "label": str(tmp_path / label)})
            assert out["image"].shape == (3, 64, 96), name
            assert out["label"].shape == (1, 64, 96)
            assert set(out["label"].unique().tolist()) == {0.0, 1.0}
            top_left, bottom_right = out["image"][:, :8, :16].mean(), out["image"][:, -8:, -16:].mean()
            assert top_left > bottom_right, f"{name}: marker moved"
            assert out["label"][0, :8, :16].all() and not out["label"][0, -8:, -16:].any()
    nifti = tmp_path / "vol.nii.gz"
    nib.save(nib.Nifti1Image(mask[..., None].astype(np.int16), np.eye(4)), nifti)
    out = transform({"image": str(nifti), "label": str(nifti)})
    assert out["image"].shape == (3, 64, 96) and set(out["label"].unique().tolist()) == {0.0, 1.0}


def test_evaluate_reports_per_image_metrics_at_original_size(tmp_path):
    """A network that predicts foreground everywhere has Dice 2|L| / (|L| + H·W) on each image."""
    dataset = make_rectangles_dataset(tmp_path / "data", count=4, shape=(50, 70))
    (tmp_path / "data" / "datalist.json").write_text(
        json.dumps(
            {
                "training": [],
                "validation": [],
                "test": [{"image": f"images/case_{i:02d}.png", "label": f"masks/case_{i:02d}.png"} for i in range(4)],
            }
        )
    )
    network = LightweightHierarchicalUTANet(encoder="mobilenetv2")
    torch.nn.init.zeros_(network.head.weight)
    torch.nn.init.constant_(network.head.bias, 10.0)
    (tmp_path / "models" / "stage1").mkdir(parents=True)
    torch.save(network.state_dict(), tmp_path / "models" / "stage1" / "model.pt")

    overrides = dict(bundle_root=str(tmp_path), dataset_dir=str(dataset), save_predictions=True, **FAST)
    run_bundle(["train.json", "evaluate.json"], workflow_type="eval", **overrides)
    for index in range(4):  # saved masks: original (H, W), not transposed, all foreground
        mask = np.asarray(Image.open(tmp_path / "eval" / "predictions" / "images" / f"case_{index:02d}_mask.png"))
        assert mask.shape == (50, 70) and mask.min() == 255
    with open(tmp_path / "eval" / "metrics_per_image.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4
    for row in rows:
        label = np.asarray(Image.open(dataset / "masks" / (row["image"].split("/")[-1]))) > 127
        expected = 2 * label.sum() / (label.sum() + label.size)
        assert float(row["dice"]) == pytest.approx(expected, abs=1e-6)
        assert float(row["recall"]) == pytest.approx(1.0)
    summary = json.loads((tmp_path / "eval" / "metrics_summary.json").read_text())
    assert summary["images"] == 4
    assert summary["metrics"]["dice"]["mean"] == pytest.approx(np.mean([float(r["dice"]) for r in rows]))
    assert {"mean", "median", "std"} <= set(summary["metrics"]["hd95"])
    with pytest.raises(Exception) as error:  # never overwrites an earlier report
        run_bundle(["train.json", "evaluate.json"], workflow_type="eval", **overrides)
    assert isinstance(error.value.__cause__ or error.value, FileExistsError), repr(error.value)


def test_metadata_and_network_io_verify_offline():
    for command in (
        [
            "verify_metadata",
            "--meta_file",
            "configs/metadata.json",
            "--filepath",
            "docs/schema/meta_schema_20240725.json",
        ],
        [
            "verify_net_in_out",
            "network_def",
            "--meta_file",
            "configs/metadata.json",
            "--config_file",
            "configs/inference.json",
        ],
    ):
        result = subprocess.run(
            [sys.executable, "-m", "monai.bundle", *command], cwd=REPO_ROOT, capture_output=True, text=True
        )
        assert result.returncode == 0, result.stdout + result.stderr
        assert "verified with no error" in result.stdout + result.stderr
