"""Fitting and measuring a quality score: a logistic model of standardised features (each of its documented sign),
leave-one-centre-out, and the table that maps a review fraction to a ``needs_review`` threshold.

A model is the dict bundle/inference/quality_model.json holds: ``features``, ``mean``, ``std``, ``intercept``,
``weights`` (and, written by the study, ``temperature`` and ``review_quantiles``).
"""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata

from .candidates import DIRECTION

FAILURE_DICE, FLAGGED_SHARE = 0.5, 0.2
QUANTILE_LEVELS = np.round(np.linspace(0.0, 1.0, 101), 2)


def auroc(score: np.ndarray, failed: np.ndarray) -> float:
    """Area under the ROC curve of ``-score`` (a low score flags) for detecting ``failed``; NaN without both."""
    if failed.all() or not failed.any():
        return float("nan")
    ranks = rankdata(-score)
    positives = failed.sum()
    return float((ranks[failed].sum() - positives * (positives + 1) / 2) / (positives * (~failed).sum()))


def auroc_difference_interval(
    score: np.ndarray, baseline: np.ndarray, failed: np.ndarray, resamples: int = 1000, seed: int = 0
) -> tuple[float, float]:
    """95% interval of ``auroc(score) - auroc(baseline)`` over bootstrap resamples of the images (paired)."""
    rng = np.random.default_rng(seed)
    differences = []
    for _ in range(resamples):
        pick = rng.integers(0, len(score), len(score))
        differences.append(auroc(score[pick], failed[pick]) - auroc(baseline[pick], failed[pick]))
    low, high = np.nanpercentile(differences, [2.5, 97.5])
    return float(low), float(high)


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


def fit_monotone(x: np.ndarray, good: np.ndarray, names: tuple[str, ...]) -> np.ndarray:
    """:func:`fit_logistic` that keeps each feature's documented direction (DIRECTION): a feature whose weight
    comes out with the other sign (collinear with others) is left out and the rest refitted, until none does."""
    signs = np.array([DIRECTION[name] for name in names])
    kept = np.ones(len(names), bool)
    while True:
        weights = np.zeros(len(names) + 1)
        weights[np.r_[True, kept]] = fit_logistic(x[:, kept], good)
        wrong = kept & (weights[1:] * signs < 0)
        if not wrong.any():
            return weights
        kept &= ~wrong


def matrix(features: dict[str, np.ndarray], names: tuple[str, ...]) -> np.ndarray:
    return np.stack([features[name] for name in names], axis=1)


def fit_model(features: dict[str, np.ndarray], dice: np.ndarray, names: tuple[str, ...]) -> dict:
    """The logistic model of ``names`` predicting Dice >= FAILURE_DICE, standardised on these images."""
    x = matrix(features, names)
    mean, std = x.mean(axis=0), x.std(axis=0) + 1e-6
    weights = fit_monotone(standardise(x, mean, std), (dice >= FAILURE_DICE).astype(float), names)
    return {
        "features": list(names),
        "mean": mean.tolist(),
        "std": std.tolist(),
        "intercept": float(weights[0]),
        "weights": weights[1:].tolist(),
    }


def model_score(model: dict, features: dict[str, np.ndarray]) -> np.ndarray:
    """(N,) scores in [0, 1] of ``model`` (:func:`fit_model`)."""
    x = standardise(matrix(features, tuple(model["features"])), np.array(model["mean"]), np.array(model["std"]))
    return 1 / (1 + np.exp(-(model["intercept"] + x @ np.array(model["weights"]))))


def review_quantiles(scores: list[np.ndarray]) -> dict[str, list[float]]:
    """The score's quantiles at :data:`QUANTILE_LEVELS`, averaged over centres (one (N_i,) array each), so that
    each centre counts once: the table bundle.inference.quality.review_threshold interpolates."""
    table = np.mean([np.quantile(score, QUANTILE_LEVELS) for score in scores], axis=0)
    return {"levels": QUANTILE_LEVELS.tolist(), "scores": np.maximum.accumulate(table).tolist()}


def threshold_at(table: dict[str, list[float]], fraction: float) -> float:
    """The score below which ``fraction`` of the images fall, interpolated in a :func:`review_quantiles` table."""
    return float(np.interp(fraction, table["levels"], table["scores"]))
