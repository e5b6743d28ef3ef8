"""Candidate per-image features of the quality study, from one set's cache (:mod:`.cache`).

Each feature is oriented by :data:`DIRECTION` (+1: a higher value means a better mask). The mask is the default TTA's
(:data:`.cache.DEFAULT_MEMBERS` members), thresholded at 0.5 at the network's size, as
:class:`bundle.inference.quality.QualityScored` sees it. Besides :data:`bundle.inference.quality.FEATURES` (which
:class:`bundle.inference.quality.QualityScored` computes, so a score of them can ship):

- ``*_tempered``: ``mean_foreground_probability``, ``expected_dice``, ``uncertain_fraction`` and ``boundary_entropy``
  of ``sigmoid(logit(p) / T)``, T fitted on the fit set's pixels (:func:`fit_temperature`);
- ``tta_spread_16``: the shipped ``tta_spread`` over all 16 cached members (the default TTA has 8);
  ``member_agreement`` / ``member_agreement_16``: the mean Dice of each member's own mask with the mask;
- ``routing_kl``: ``Σ_gates KL(gate softmax || the training images' mean gate softmax)``;
  ``routing_mahalanobis``: the Mahalanobis distance of the (G·E,) gate softmax from the training images';
  ``gate_input_mahalanobis``: the same for the (C,) pooled features every gate reads. Each distance is divided by
  the median of the training images' own distances, so that one scale serves any model.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from bundle.inference.quality import FEATURES, expected_dice, quality_features

from .cache import DEFAULT_MEMBERS, read_dice

TEMPERED = ("mean_foreground_probability", "expected_dice", "uncertain_fraction", "boundary_entropy")
ROUTING = ("routing_kl", "routing_mahalanobis", "gate_input_mahalanobis")
BASE = (*FEATURES, "tta_spread_16", "member_agreement", "member_agreement_16", *ROUTING)
DIRECTION = {
    "mean_foreground_probability": 1,
    "tta_spread": -1,
    "uncertain_fraction": -1,
    "boundary_entropy": -1,
    "foreground_fraction": 1,
    "components": -1,
    "largest_component_share": 1,
    "solidity": 1,
    "expected_dice": 1,
    "tta_spread_16": -1,
    "member_agreement": 1,
    "member_agreement_16": 1,
    **{name: -1 for name in ROUTING},
    **{f"{name}_tempered": direction for name, direction in (("mean_foreground_probability", 1), ("expected_dice", 1))},
    "uncertain_fraction_tempered": -1,
    "boundary_entropy_tempered": -1,
}


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def member_agreement(members: np.ndarray, mask: np.ndarray) -> float:
    """Mean Dice of each (M, H, W) member probability map's own 0.5 mask with the (H, W) mask (1 when both are empty)."""
    own = members >= 0.5
    overlap = (own & mask).sum(axis=(1, 2))
    sizes = own.sum(axis=(1, 2)) + mask.sum()
    return float(np.mean(np.where(sizes > 0, 2 * overlap / np.maximum(sizes, 1), 1.0)))


def spread(members: np.ndarray) -> float:
    """Mean |member - mean| over (M, H, W) member probabilities (``TTAInferer``'s ``tta_spread``)."""
    return float(np.abs(members - members.mean(axis=0)).mean())


def mahalanobis(x: np.ndarray, reference: np.ndarray, shrinkage: float = 0.1) -> np.ndarray:
    """(N,) distances of (N, D) ``x`` from (R, D) ``reference``'s mean under its covariance shrunk towards the
    diagonal by ``shrinkage``, each divided by the median of the reference's own distances."""
    mean = reference.mean(axis=0)
    covariance = np.cov(reference, rowvar=False)
    covariance = (1 - shrinkage) * covariance + shrinkage * np.diag(np.diag(covariance)) + 1e-9 * np.eye(len(mean))
    inverse = np.linalg.inv(covariance)

    def distance(v: np.ndarray) -> np.ndarray:
        centred = v - mean
        return np.sqrt(np.einsum("nd,de,ne->n", centred, inverse, centred))

    return distance(x) / np.median(distance(reference))


def routing_kl(gates: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """(N,) ``Σ_g KL(gates[n, g] || mean reference gate g)`` of (N, G, E) softmaxes, over the reference's median."""
    mean = reference.mean(axis=0)

    def kl(g: np.ndarray) -> np.ndarray:
        g = np.clip(g, 1e-9, 1)
        return (g * (np.log(g) - np.log(np.clip(mean, 1e-9, 1)))).sum(axis=(1, 2))

    return kl(gates) / np.median(kl(reference))


def routing_features(folder: Path) -> dict[str, np.ndarray]:
    """:data:`ROUTING` of a cached set; NaN for a network without an MoE."""
    gates, reference = np.load(folder / "gates.npy"), np.load(folder / "reference_gates.npy")
    if np.isnan(gates).any() or gates.size == 0:
        return {name: np.full(len(gates), np.nan) for name in ROUTING}
    pooled, reference_pooled = np.load(folder / "pooled.npy"), np.load(folder / "reference_pooled.npy")
    return {
        "routing_kl": routing_kl(gates, reference),
        "routing_mahalanobis": mahalanobis(gates.reshape(len(gates), -1), reference.reshape(len(reference), -1)),
        "gate_input_mahalanobis": mahalanobis(pooled, reference_pooled),
    }


class CachedSet:
    """One cached set: ``dice`` (N,), the :data:`BASE` features (N,) each, and the tempered ones on demand; images
    with an empty reference (NaN Dice) are left out."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        dice = read_dice(folder)
        self.keep = ~np.isnan(dice)
        self.dice = dice[self.keep]
        self.members = np.load(folder / "members.npy", mmap_mode="r")
        self.features = self.base_features()

    def default_probabilities(self, index: int, temperature: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
        """(members (M, H, W) probabilities at ``temperature``, the default TTA's (H, W) mean of them)."""
        members = sigmoid(self.members[index].astype(np.float32) / temperature)
        return members, members[:DEFAULT_MEMBERS].mean(axis=0)

    def base_features(self) -> dict[str, np.ndarray]:
        rows = []
        for index in np.flatnonzero(self.keep):
            members, mean = self.default_probabilities(index)
            mask = mean >= 0.5
            row = quality_features(mean, mask, spread(members[:DEFAULT_MEMBERS]))
            row["tta_spread_16"] = spread(members)
            row["member_agreement"] = member_agreement(members[:DEFAULT_MEMBERS], mask)
            row["member_agreement_16"] = member_agreement(members, mask)
            rows.append(row)
        features = {name: np.array([row[name] for row in rows]) for name in rows[0]}
        routing = routing_features(self.folder)
        return {**features, **{name: values[self.keep] for name, values in routing.items()}}

    def tempered_features(self, temperature: float) -> dict[str, np.ndarray]:
        """:data:`TEMPERED` of ``sigmoid(logit(p) / temperature)``, p the default TTA's mean probability; the mask is
        the untempered one (the mask the user gets)."""
        rows = []
        for index in np.flatnonzero(self.keep):
            _, mean = self.default_probabilities(index)
            mask = mean >= 0.5
            logits = np.log(np.clip(mean, 1e-6, 1 - 1e-6) / np.clip(1 - mean, 1e-6, 1))
            tempered = sigmoid(logits / temperature)
            row = quality_features(tempered, mask)
            rows.append([row["mean_foreground_probability"], expected_dice(tempered, mask)])
            rows[-1] += [row["uncertain_fraction"], row["boundary_entropy"]]
        values = np.array(rows)
        return {f"{name}_tempered": values[:, i] for i, name in enumerate(TEMPERED)}

    def pixel_sample(self, step: int = 4) -> tuple[np.ndarray, np.ndarray]:
        """(logits of the default TTA's mean probability, reference share) of every ``step``-th pixel in each
        direction of every kept image: the sample :func:`fit_temperature` fits on."""
        labels = np.load(self.folder / "labels.npy", mmap_mode="r")
        logits, targets = [], []
        for index in np.flatnonzero(self.keep):
            _, mean = self.default_probabilities(index)
            mean = np.clip(mean[::step, ::step], 1e-6, 1 - 1e-6)
            logits.append(np.log(mean / (1 - mean)).ravel())
            targets.append(labels[index, ::step, ::step].ravel() / 255.0)
        return np.concatenate(logits), np.concatenate(targets)


def fit_temperature(logits: np.ndarray, targets: np.ndarray) -> float:
    """The temperature T (0.25 to 8, on a log grid, then refined) minimising the pixels' binary cross-entropy of
    ``sigmoid(logits / T)`` against ``targets`` in [0, 1]."""

    def nll(t: float) -> float:
        p = np.clip(sigmoid(logits / t), 1e-7, 1 - 1e-7)
        return float(-np.mean(targets * np.log(p) + (1 - targets) * np.log(1 - p)))

    grid = np.exp(np.linspace(np.log(0.25), np.log(8.0), 41))
    best = grid[int(np.argmin([nll(t) for t in grid]))]
    fine = best * np.exp(np.linspace(-0.05, 0.05, 21))
    return float(fine[int(np.argmin([nll(t) for t in fine]))])
