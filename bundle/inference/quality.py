"""Per-image quality score: how far to trust a predicted mask, from the probabilities and the test-time-augmentation
members' disagreement alone (no reference mask).

``qc_score`` is in [0, 1]; higher is better: it estimates the probability that the mask reaches a Dice of 0.5 with
the (unseen) reference. It is a logistic model of standardised :data:`FEATURES` (those quality_model.json names),
chosen and fitted by ``scripts/quality_study.py`` leaving one centre out (docs/quality.md) into ``quality_model.json``
beside this module. ``needs_review`` is 1 below the score's ``review_fraction`` quantile on centres the masks' model
never saw (the model's ``review_quantiles``), so that it flags about that share of a new centre's images.
"""

from __future__ import annotations

import json
import math
from collections.abc import Hashable, Mapping
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform
from scipy import ndimage
from skimage.measure import regionprops

from ..errors import SettingError
from .tta import TTA_SPREAD

FEATURES: tuple[str, ...] = (
    "mean_foreground_probability",  # mean probability inside the mask; 0 for an empty mask
    "tta_spread",  # mean |TTA member - mean| probability over the image; 0 without TTA
    "uncertain_fraction",  # pixels with 0.1 < p < 0.9, over the mask's pixels plus them
    "boundary_entropy",  # mean binary entropy (bits) in a band around the mask's outline; 1 for an empty mask
    "foreground_fraction",  # the mask's share of the image
    "components",  # connected components of the mask
    "largest_component_share",  # the largest component's share of the mask; 0 for an empty mask
    "solidity",  # the largest component's area over its convex hull's; 0 for an empty mask
    "expected_dice",  # 2 Σ p·mask / (Σ p + Σ mask): the Dice if each pixel were foreground with its p; 0 if empty
)
MODEL_PATH = Path(__file__).with_name("quality_model.json")  # written by scripts/quality_study.py --write-model
REVIEW_FRACTION = 0.2  # configs/inference.json's review_fraction: the share of a new centre's images to flag


@lru_cache(maxsize=1)
def quality_model() -> dict:
    """The fitted score: ``features`` and their ``mean`` and ``std`` (standardisation), ``intercept``, ``weights``, and
    ``review_quantiles`` (``levels`` in [0, 1] and the score's quantiles at them)."""
    return json.loads(MODEL_PATH.read_text(encoding="utf-8"))


def quality_features(probabilities: np.ndarray, mask: np.ndarray, tta_spread: float | None = None) -> dict[str, float]:
    """:data:`FEATURES` of one image: (H, W) foreground probabilities in [0, 1] and the (H, W) bool mask."""
    probabilities = np.asarray(probabilities, dtype=np.float32)
    mask = np.asarray(mask, dtype=bool)
    uncertain = int(((probabilities > 0.1) & (probabilities < 0.9)).sum())
    band = outline_band(mask)
    p = np.clip(probabilities[band], 1e-6, 1 - 1e-6)
    entropy = float(np.mean(-(p * np.log2(p) + (1 - p) * np.log2(1 - p)))) if p.size else 1.0
    components, count = ndimage.label(mask)
    largest = np.zeros_like(mask)
    if count:
        largest = components == 1 + int(np.argmax(np.bincount(components.ravel())[1:]))
    return {
        "mean_foreground_probability": float(probabilities[mask].mean()) if mask.any() else 0.0,
        "tta_spread": float(0.0 if tta_spread is None else tta_spread),
        "uncertain_fraction": uncertain / max(1, int(mask.sum()) + uncertain),
        "boundary_entropy": entropy,
        "foreground_fraction": float(mask.mean()),
        "components": float(count),
        "largest_component_share": float(largest.sum() / max(1, mask.sum())),
        "solidity": float(regionprops(largest.astype(np.uint8))[0].solidity) if count else 0.0,
        "expected_dice": expected_dice(probabilities, mask),
    }


def expected_dice(probabilities: np.ndarray, mask: np.ndarray) -> float:
    """``2 Σ p·mask / (Σ p + Σ mask)`` of (H, W) probabilities and bool mask; 0 for an empty mask."""
    if not mask.any():
        return 0.0
    return float(2 * probabilities[mask].sum() / (probabilities.sum() + mask.sum()))


def outline_band(mask: np.ndarray) -> np.ndarray:
    """(H, W) bool: pixels within 1% of the image diagonal (at least 1 pixel) of the mask's outline."""
    width = max(1, int(round(0.01 * math.hypot(*mask.shape))))
    if not mask.any():
        return np.zeros_like(mask)
    structure = ndimage.generate_binary_structure(2, 1)
    dilated = ndimage.binary_dilation(mask, structure, iterations=width)
    eroded = ndimage.binary_erosion(mask, structure, iterations=width)
    return dilated & ~eroded


def standardised(value: float, mean: float, std: float, limit: float = 3.0) -> float:
    """``(value - mean) / std`` clipped to ±``limit``: an image far outside the fit set's range (a thousand
    components) counts as an extreme one, not as a thousand times one."""
    return max(-limit, min(limit, (value - mean) / std))


def qc_score(features: dict[str, float]) -> float:
    """The logistic quality score in [0, 1] of :func:`quality_features` (module docstring)."""
    model = quality_model()
    named = zip(model["features"], model["mean"], model["std"])
    values = [standardised(features[name], mean, std) for name, mean, std in named]
    logit = model["intercept"] + sum(weight * value for weight, value in zip(model["weights"], values))
    return float(1.0 / (1.0 + math.exp(-max(-60.0, min(60.0, logit)))))


def review_fraction_value(value: object) -> float:
    """``value`` as a share of images strictly between 0 and 1; a SettingError naming the id otherwise."""
    try:
        fraction = float(value)
    except (TypeError, ValueError):
        fraction = math.nan
    if not 0.0 < fraction < 1.0:
        raise SettingError(
            f"review_fraction is the share of images to flag for review, between 0 and 1 (exclusive), "
            f"e.g. --review_fraction 0.2; got {value!r}."
        )
    return fraction


def review_threshold(fraction: float = REVIEW_FRACTION) -> float:
    """The ``qc_score`` below which about ``fraction`` of a new centre's images fall: interpolated in the model's
    ``review_quantiles`` (the score's quantiles on centres its coefficients never saw, averaged over them)."""
    table = quality_model()["review_quantiles"]
    return float(np.interp(review_fraction_value(fraction), table["levels"], table["scores"]))


def quality_result(features: dict[str, float], review_below: float | None = None) -> dict[str, object]:
    """``{"qc_score": float in [0, 1], "needs_review": 0 or 1}`` of :func:`quality_features`; ``needs_review`` is 1
    below ``review_below`` (default: :func:`review_threshold` of :data:`REVIEW_FRACTION`)."""
    score = qc_score(features)
    below = review_threshold() if review_below is None else review_below
    return {"qc_score": round(score, 6), "needs_review": int(score < below)}


class QualityScored(MapTransform):
    """Post-processing transform: the quality of the mask that ``pred``'s (1, h, w) logits give at ``threshold``,
    at the network's resolution (before ``Invertd``), so that every image is judged at one scale.

    Adds ``result`` (:func:`quality_result`, ``needs_review`` for about ``review_fraction`` of a new centre's
    images; MONAI Label returns this dict with ``/infer``'s result) and
    ``quality`` (:func:`quality_features`). The TTA members' disagreement comes from the logits' meta
    ``tta_spread`` (:class:`bundle.inference.tta.TTAInferer`; 0 without TTA).
    """

    def __init__(
        self,
        keys: KeysCollection,
        threshold: float = 0.5,
        result_key: str = "result",
        review_fraction: float = REVIEW_FRACTION,
    ) -> None:
        super().__init__(keys)
        self.threshold, self.result_key = threshold, result_key
        self.review_below = review_threshold(review_fraction)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, object]:
        d = dict(data)
        for key in self.key_iterator(d):
            logits = d[key]
            spread = getattr(logits, "meta", {}).get(TTA_SPREAD)
            probabilities = torch.sigmoid(torch.as_tensor(logits).float())[0].detach().cpu().numpy()
            features = quality_features(probabilities, probabilities >= self.threshold, spread)
            d["quality"] = features
            d[self.result_key] = {**d.get(self.result_key, {}), **quality_result(features, self.review_below)}
        return d
