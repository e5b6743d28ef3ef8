"""Choose and fit the per-image quality score (``qc_score``, bundle/inference/quality.py) on cross-centre proxies.

Each input is an evaluation's ``metrics_per_image.csv`` (configs/evaluate.json writes the score's features beside
each image's Dice): a model trained on one centre, evaluated on another centre's non-test images. For every
candidate (each feature alone, today's ``mean_foreground_probability`` as the baseline, and the logistic
combination fitted on the ``--fit`` set), and for every set, it reports the Spearman correlation with Dice, the
AUROC for detecting Dice < 0.5, and the share of those failures caught when 20% of images are flagged. With
``--write-model`` it writes the fitted model (standardisation, weights, review threshold) to
bundle/inference/quality_model.json, which bundle/inference/quality.py loads. Tables go to docs/quality.md, the plot of Dice against
the score to docs/figures/quality_dice_vs_score.png.

Usage (from the repository root; the commands that make the CSVs are in docs/quality.md):
    python scripts/quality_study.py --fit kvasir-model-on-clinicdb=RUN_A/metrics_per_image.csv \\
        --check clinicdb-model-on-kvasir=RUN_B/metrics_per_image.csv --write-model
"""

from __future__ import annotations

import argparse
import csv
import datetime
import platform
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from bundle.atomic_files import atomic_write_json, atomic_write_text
from bundle.errors import run_script
from bundle.inference.quality import FEATURES, MODEL_PATH
from scipy.stats import rankdata, spearmanr
from scripts.doc_command import relative_command

FAILURE_DICE, FLAGGED_SHARE = 0.5, 0.2
REPO_ROOT = Path(__file__).resolve().parents[1]
# orientation of each feature: +1 when a higher value means a better mask
DIRECTION = {
    "mean_foreground_probability": 1,
    "tta_spread": -1,
    "uncertain_fraction": -1,
    "boundary_entropy": -1,
    "foreground_fraction": 1,
    "components": -1,
    "largest_component_share": 1,
    "solidity": 1,
}


def read_set(path: str) -> tuple[np.ndarray, np.ndarray]:
    """(dice (N,), features (N, len(FEATURES))) of the images with a reference (NaN Dice: empty reference) left out."""
    with open(path, newline="") as stream:
        rows = [row for row in csv.DictReader(stream) if row["dice"] not in ("", "nan")]
    if not rows or "qc_score" not in rows[0]:
        raise SystemExit(f"error: {path} has no quality features; evaluate with a bundle that writes them.")
    return np.array([float(r["dice"]) for r in rows]), np.array([[float(r[f]) for f in FEATURES] for r in rows])


def auroc(score: np.ndarray, failed: np.ndarray) -> float:
    """Area under the ROC curve of ``-score`` (a low score flags) for detecting ``failed``; NaN without both."""
    if failed.all() or not failed.any():
        return float("nan")
    ranks = rankdata(-score)
    positives = failed.sum()
    return float((ranks[failed].sum() - positives * (positives + 1) / 2) / (positives * (~failed).sum()))


def caught(score: np.ndarray, failed: np.ndarray, share: float = FLAGGED_SHARE) -> float:
    """Share of the failures among the ``share`` of images with the lowest score."""
    flagged = np.argsort(score, kind="stable")[: int(round(share * len(score)))]
    return float(failed[flagged].sum() / max(1, failed.sum()))


def fit_logistic(x: np.ndarray, good: np.ndarray, l2: float = 1e-2, steps: int = 50) -> np.ndarray:
    """Weights (intercept first) of an L2-regularised logistic regression of ``good`` on ``x``, by Newton steps."""
    design = np.hstack([np.ones((len(x), 1)), x])
    weights = np.zeros(design.shape[1])
    penalty = l2 * np.eye(design.shape[1])
    penalty[0, 0] = 0
    for _ in range(steps):
        p = 1 / (1 + np.exp(-design @ weights))
        gradient = design.T @ (p - good) + penalty @ weights
        hessian = design.T @ (design * (p * (1 - p))[:, None]) + penalty
        weights -= np.linalg.solve(hessian, gradient)
    return weights


def standardise(features: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """(N, F) features standardised and clipped to ±3, as bundle.inference.quality.standardised does."""
    return np.clip((features - mean) / std, -3.0, 3.0)


def fit_monotone(x: np.ndarray, good: np.ndarray) -> np.ndarray:
    """:func:`fit_logistic` that keeps each feature's documented direction (DIRECTION): a feature whose weight
    comes out with the other sign (collinear with others) is left out and the rest refitted, until none does."""
    signs = np.array([DIRECTION[name] for name in FEATURES])
    kept = np.ones(len(FEATURES), bool)
    while True:
        weights = np.zeros(len(FEATURES) + 1)
        weights[np.r_[True, kept]] = fit_logistic(x[:, kept], good)
        wrong = kept & (weights[1:] * signs < 0)
        if not wrong.any():
            return weights
        kept &= ~wrong


def combined(features: np.ndarray, model: dict) -> np.ndarray:
    values = standardise(features, np.array(model["mean"]), np.array(model["std"]))
    return 1 / (1 + np.exp(-(model["intercept"] + values @ np.array(model["weights"]))))


def candidate_rows(name: str, dice: np.ndarray, features: np.ndarray, model: dict) -> list[list[str]]:
    failed = dice < FAILURE_DICE
    scores = {f: DIRECTION[f] * features[:, i] for i, f in enumerate(FEATURES)}
    scores["qc_score (logistic, shipped)"] = combined(features, model)
    rows = []
    for candidate, score in scores.items():
        rho = spearmanr(score, dice).statistic
        rows.append([name, candidate, f"{rho:.3f}", f"{auroc(score, failed):.3f}", f"{caught(score, failed):.2f}"])
    return rows


def plot(sets: dict[str, tuple[np.ndarray, np.ndarray]], model: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(sets), figsize=(5 * len(sets), 4), squeeze=False)
    for axis, (name, (dice, features)) in zip(axes[0], sets.items()):
        axis.scatter(combined(features, model), dice, s=6, alpha=0.5)
        axis.axvline(model["needs_review_below"], color="red", lw=1, label="needs_review below")
        axis.axhline(FAILURE_DICE, color="grey", lw=1, ls="--", label=f"Dice {FAILURE_DICE}")
        axis.set(xlabel="qc_score", ylabel="Dice", title=name)
        axis.legend(loc="lower right", fontsize=8)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=80)


def report_text(candidates: str, review: str, model: dict) -> str:
    """docs/quality.md: what the score is, the candidate table, the review threshold's effect, and the plot."""
    return f"""# Per-image quality score

Generated by `{model["fitted_by"]}` ({model["fitted_on"]}); do not edit by hand.

Every row of folder inference's `predictions.csv` and of evaluation's `metrics_per_image.csv` has a `qc_score` in
[0, 1] (higher is better: the estimated probability that the mask reaches Dice {FAILURE_DICE} with its reference)
and `needs_review` (1 when `qc_score` < {model["needs_review_below"]:.4f}). The score needs no reference mask: it is
a logistic model (bundle/inference/quality.py, coefficients in bundle/inference/quality_model.json; each feature
standardised on the fit set and clipped to ±3, and each weight of its documented sign: a feature that would enter
with the other sign is left out) of features of the predicted
probabilities: the mean probability inside the mask (the baseline), the disagreement of the test-time-augmentation
members (`tta_spread`, 0 without TTA), the share of uncertain pixels, the entropy along the mask's outline, the
mask's area, its number of components, its largest component's share and that component's solidity, all at the
network's input size (bundle.inference.quality.QualityScored, before the mask is resized to the image). Two candidates were
not measured: a temperature-scaled probability (a monotone rescaling of the baseline's pixels) and the distance of
an image's MoE gate routing from the training set's.

It is chosen on cross-centre proxies: a model trained on one centre, evaluated on another centre's non-test images
(its test images are never used). The fit set's rows are in-sample; the other sets are not.

The sets (run from the repository root; `D` is the data folder):

```bash
# the Kvasir-SEG-only model 0.7.0 on CVC-ClinicDB's 550 non-test frames (kvasir-model-on-clinicdb)
git show 6d2b45e:models/model.pt > runs/model-0.7.0.pt
python scripts/prepare_datalist.py D/kvasir-seg --test-names D/kvasir-seg/pranet_test_names.txt \\
    --test-from D/cvc-clinicdb --output runs/xc/kvasir-to-clinicdb/datalist.json
python -m monai.bundle run --config_file "['configs/train.json','configs/evaluate.json']" \\
    --dataset_dir runs/xc/kvasir-to-clinicdb --ckpt_path runs/model-0.7.0.pt --tta flips+scales --backend auto \\
    --output_dir runs/qc/kvasir-model-on-clinicdb
# a model trained on CVC-ClinicDB alone (the baseline row of the cross-centre recipe study, docs/results.md) on
# Kvasir-SEG's 900 non-test images (clinicdb-model-on-kvasir): the same with the two folders swapped
```

## Candidates

Spearman correlation with Dice, AUROC for detecting Dice < {FAILURE_DICE}, and the share of those failures caught
when the {FLAGGED_SHARE:.0%} lowest-scoring images are flagged. Each feature alone is oriented so that a higher value
means a better mask.

| set | candidate | Spearman | AUROC | caught at {FLAGGED_SHARE:.0%} flagged |
|---|---|---|---|---|
{candidates}

## needs_review

The threshold flags {FLAGGED_SHARE:.0%} of the fit set's images.

| set | images | failures (Dice < {FAILURE_DICE}) | share flagged | failures caught |
|---|---|---|---|---|
{review}

![Dice against qc_score](figures/quality_dice_vs_score.png)
"""


def parse_sets(items: Sequence[str]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    return {item.split("=", 1)[0]: read_set(item.split("=", 1)[1]) for item in items}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fit", nargs="+", required=True, metavar="NAME=CSV", help="sets the score is fitted on")
    parser.add_argument("--check", nargs="*", default=[], metavar="NAME=CSV", help="sets it is only measured on")
    parser.add_argument("--write-model", action="store_true", help=f"write the fitted model to {MODEL_PATH}")
    parser.add_argument("--docs", default=str(REPO_ROOT / "docs"), help="folder for quality.md and figures/")
    args = parser.parse_args(argv)
    fit_sets, check_sets = parse_sets(args.fit), parse_sets(args.check)
    dice = np.concatenate([d for d, _ in fit_sets.values()])
    features = np.concatenate([f for _, f in fit_sets.values()])
    mean, std = features.mean(axis=0), features.std(axis=0) + 1e-6
    weights = fit_monotone(standardise(features, mean, std), (dice >= FAILURE_DICE).astype(float))
    model = {
        "intercept": float(weights[0]),
        "weights": weights[1:].tolist(),
        "mean": mean.tolist(),
        "std": std.tolist(),
    }
    model["needs_review_below"] = float(np.quantile(combined(features, model), FLAGGED_SHARE))
    model["features"] = list(FEATURES)
    model["fitted_by"] = relative_command(
        ["python", "scripts/quality_study.py"], argv if argv is not None else sys.argv[1:]
    )
    model["fitted_on"] = f"{datetime.date.today()}, {platform.machine()}, sets {', '.join(fit_sets)}"
    rows = [r for name, (d, f) in {**fit_sets, **check_sets}.items() for r in candidate_rows(name, d, f, model)]
    docs = Path(args.docs)
    plot({**fit_sets, **check_sets}, model, docs / "figures" / "quality_dice_vs_score.png")
    review = []
    for name, (d, f) in {**fit_sets, **check_sets}.items():
        flagged = combined(f, model) < model["needs_review_below"]
        failed = d < FAILURE_DICE
        review.append(f"| {name} | {len(d)} | {failed.sum()} | {flagged.mean():.2f} | {flagged[failed].mean():.2f} |")
    table = "\n".join("| " + " | ".join(row) + " |" for row in rows)
    atomic_write_text(docs / "quality.md", report_text(table, "\n".join(review), model))
    if args.write_model:
        atomic_write_json(MODEL_PATH, model)
    print(table)
    print("\n".join(review))
    return 0


if __name__ == "__main__":
    sys.exit(run_script(main))
