"""The per-image quality score: lower for a noisy prediction than for a clean one, never higher for TTA members that
disagree more, and present in folder inference's predictions.csv and evaluation's metrics_per_image.csv;
``needs_review`` flags about ``review_fraction`` of a new centre's images, and an invalid fraction is one error line."""

import csv
import json

import numpy as np
import pytest
import torch
from bundle.inference import quality
from bundle.inference.quality import FEATURES, QualityScored, quality_model, review_threshold
from bundle.inference.tta import TTA_SPREAD
from monai.data import MetaTensor
from PIL import Image
from scripts.quality.fitting import review_quantiles

from tests.helpers import FAST, make_rectangles_dataset, run_bundle, save_checkpoint
from tests.test_faults import assert_one_line_error, cli

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
    assert set(quality_model()["features"]) <= set(FEATURES)  # the fitted model scores features QualityScored makes


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


@pytest.fixture
def model_file(tmp_path, monkeypatch):
    """Write a quality model to a temporary file and make the bundle read it (restored after the test)."""

    def use(model: dict):
        path = tmp_path / "quality_model.json"
        path.write_text(json.dumps({**quality_model(), **model}))
        monkeypatch.setattr(quality, "MODEL_PATH", path)
        quality.quality_model.cache_clear()

    yield use
    quality.quality_model.cache_clear()


def test_needs_review_flags_about_the_fraction_on_a_new_centre(model_file):
    """The threshold table comes from centres whose scores are distributed unlike [0, 1]'s uniform (a naive threshold
    equal to the fraction flags far fewer); a new centre drawn like them gets about the fraction flagged."""
    rng = np.random.default_rng(0)
    centres = [rng.beta(a, b, 2000) for a, b in ((6, 2), (4, 1.5), (8, 3))]
    model_file({"review_quantiles": review_quantiles(centres)})
    new_centre = rng.beta(5.5, 2, 5000)
    for fraction in (0.05, 0.2, 0.5):
        flagged = float(np.mean(new_centre < review_threshold(fraction)))
        assert abs(flagged - fraction) < 0.04 + 0.15 * fraction, (fraction, flagged)
        assert np.mean(new_centre < fraction) < flagged  # the table, not the fraction itself, sets the threshold
    assert review_threshold(0.1) < review_threshold(0.2) < review_threshold(0.3)


def test_review_fraction_reaches_both_reports(tmp_path, model_file):
    """A score of 0.5 for every image and quantiles 0..1: fraction 0.6 flags every image, 0.4 none."""
    levels = np.linspace(0, 1, 101).tolist()
    constant = {"features": ["mean_foreground_probability"], "mean": [0.5], "std": [1.0]}
    model_file(
        {**constant, "intercept": 0.0, "weights": [0.0], "review_quantiles": {"levels": levels, "scores": levels}}
    )
    data = make_rectangles_dataset(tmp_path / "data", count=4)
    ckpt = save_checkpoint(tmp_path / "model.pt", all_foreground=False)
    settings = {**FAST, "ckpt_path": str(ckpt), "backend": "torch"}
    for fraction, expected in ((0.6, "1"), (0.4, "0")):
        out, evaluation = tmp_path / f"out{fraction}", tmp_path / f"eval{fraction}"
        images = str(data / "images")
        run_bundle(
            ["inference.json"], "infer", dataset_dir=images, output_dir=str(out), review_fraction=fraction, **settings
        )
        run_bundle(
            ["train.json", "evaluate.json"],
            "infer",
            dataset_dir=str(data),
            output_dir=str(evaluation),
            review_fraction=fraction,
            **settings,
        )
        for path in (out / "predictions.csv", evaluation / "metrics_per_image.csv"):
            rows = read_rows(path)
            assert rows and {r["needs_review"] for r in rows} == {expected}, (path, fraction)


@pytest.mark.parametrize("config, fraction", [("inference.json", 0), ("evaluate.json", 1.5)])
def test_an_invalid_review_fraction_is_one_error_line(tmp_path, config, fraction):
    data = make_rectangles_dataset(tmp_path / "data", count=2)
    ckpt = save_checkpoint(tmp_path / "model.pt", all_foreground=False)
    configs = ["inference.json"] if config == "inference.json" else ["train.json", "evaluate.json"]
    dataset = data / "images" if config == "inference.json" else data
    overrides = {**FAST, "ckpt_path": str(ckpt), "backend": "torch", "output_dir": str(tmp_path / "out")}
    returncode, stderr = cli(configs, dataset_dir=str(dataset), review_fraction=fraction, **overrides)
    assert_one_line_error(returncode, stderr, "review_fraction", "between 0 and 1")
