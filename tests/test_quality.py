"""The per-image quality score: lower for a noisy prediction than for a clean one, never higher for TTA members that
disagree more, and present in folder inference's predictions.csv and evaluation's metrics_per_image.csv."""

import csv

import numpy as np
import pytest
import torch
from bundle.inference.quality import FEATURES, QualityScored, quality_model
from bundle.inference.tta import TTA_SPREAD
from monai.data import MetaTensor
from PIL import Image

from tests.helpers import FAST, make_rectangles_dataset, run_bundle, save_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")


def score(logits: torch.Tensor, spread: float = 0.0) -> dict:
    pred = MetaTensor(logits)
    pred.meta[TTA_SPREAD] = spread
    out = QualityScored("pred")({"pred": pred})
    assert set(out["quality"]) == set(FEATURES)
    return out["result"]


def test_noise_and_tta_disagreement_lower_the_score():
    rows, columns = np.mgrid[0:96, 0:96]
    blob = torch.from_numpy(((rows - 48) ** 2 + (columns - 44) ** 2 < 20**2).astype(np.float32))
    clean = (blob * 16 - 8)[None]  # a confident disc
    noisy = clean * 0.15 + torch.randn(clean.shape, generator=torch.Generator().manual_seed(0)) * 1.5
    results = {"clean": score(clean), "noisy": score(noisy), "disagreeing": score(clean, spread=0.2)}
    assert all(0.0 <= r["qc_score"] <= 1.0 and r["needs_review"] in (0, 1) for r in results.values())
    assert results["clean"]["qc_score"] > results["noisy"]["qc_score"]
    assert results["clean"]["qc_score"] >= results["disagreeing"]["qc_score"]  # more disagreement never raises it
    assert results["clean"]["needs_review"] == 0 and results["noisy"]["needs_review"] == 1
    assert quality_model()["features"] == list(FEATURES)  # the fitted model scores these features


def read_rows(path):
    with open(path, newline="") as stream:
        return list(csv.DictReader(stream))


def test_both_reports_carry_the_score(tmp_path):
    data = make_rectangles_dataset(tmp_path / "data", count=6)
    ckpt = save_checkpoint(tmp_path / "model.pt", all_foreground=False)
    settings = {**FAST, "ckpt_path": str(ckpt), "backend": "torch"}
    run_bundle(
        ["inference.json"], "infer", dataset_dir=str(data / "images"), output_dir=str(tmp_path / "out"), **settings
    )
    run_bundle(
        ["train.json", "evaluate.json"], "infer", dataset_dir=str(data), output_dir=str(tmp_path / "eval"), **settings
    )
    for path in (tmp_path / "out" / "predictions.csv", tmp_path / "eval" / "metrics_per_image.csv"):
        rows = read_rows(path)
        assert rows and all(0.0 <= float(r["qc_score"]) <= 1.0 and r["needs_review"] in ("0", "1") for r in rows)
    assert Image.open(next((tmp_path / "out").glob("*_mask.png"))).mode == "L"
