"""Leave one centre out: every candidate score fitted on the other centres' sets and measured on the held-out one,
the temperature fitted on the fit sets' pixels only; then the choice of the score to ship, fitted on all sets.

A candidate is one feature alone, measured as it is (oriented by its documented direction; shipped as a calibrated,
monotone logistic map of it, which ranks the images alike), or several features combined by a logistic model fitted
on the other sets (:mod:`.fitting`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from bundle.inference.quality import FEATURES
from scipy.stats import spearmanr

from .candidates import BASE, DIRECTION, ROUTING, TEMPERED, CachedSet, fit_temperature
from .fitting import FAILURE_DICE, FLAGGED_SHARE, auroc, caught, fit_model, model_score, review_quantiles, threshold_at

BASELINE = "mean_foreground_probability"
FEATURES_0_8_0 = FEATURES[:8]  # the features of model 0.8.0's score (FEATURES then gained expected_dice)
PROBABILITY_FEATURES = ("mean_foreground_probability_tempered", "expected_dice_tempered", "member_agreement")


def candidates() -> dict[str, tuple[str, ...]]:
    """Candidate name -> its features: each feature alone, then the logistic combinations."""
    singles = {name: (name,) for name in (*BASE, *(f"{name}_tempered" for name in TEMPERED))}
    return {
        **singles,
        "logistic: release 0.8.0's 8 features": FEATURES_0_8_0,
        "logistic: the same + expected_dice": FEATURES,
        "logistic: tempered probabilities + member agreement": PROBABILITY_FEATURES,
        "logistic: the same + gate routing": (*PROBABILITY_FEATURES, *ROUTING),
        "logistic: all": tuple(DIRECTION),
    }


@dataclass
class SetFeatures:
    """A cached set's Dice (N,) and every candidate feature (N,) at one temperature."""

    dice: np.ndarray
    features: dict[str, np.ndarray]

    @staticmethod
    def of(cached: CachedSet, temperature: float) -> "SetFeatures":
        return SetFeatures(cached.dice, {**cached.features, **cached.tempered_features(temperature)})

    @staticmethod
    def pooled(parts: list["SetFeatures"]) -> "SetFeatures":
        names = parts[0].features
        return SetFeatures(
            np.concatenate([p.dice for p in parts]),
            {name: np.concatenate([p.features[name] for p in parts]) for name in names},
        )

    def usable(self, names: tuple[str, ...]) -> bool:
        return all(np.isfinite(self.features[name]).all() for name in names)


@dataclass
class HeldOut:
    """One candidate's figures on one held-out set: AUROC, failures caught at FLAGGED_SHARE of it flagged,
    Spearman with Dice; and with the review threshold calibrated on the other sets (FLAGGED_SHARE of their images),
    the share of this set it flags and the failures among them."""

    auroc: float
    caught: float
    spearman: float
    flagged: float
    flagged_caught: float
    score: np.ndarray = field(repr=False)
    failed: np.ndarray = field(repr=False)


def measure(score: np.ndarray, dice: np.ndarray, threshold: float = float("nan")) -> HeldOut:
    failed, flagged = dice < FAILURE_DICE, score < threshold
    rho = float(spearmanr(score, dice).statistic) if np.ptp(score) > 0 else float("nan")
    shares = (float(flagged.mean()), float(flagged[failed].mean()) if failed.any() else float("nan"))
    if np.isnan(threshold):
        shares = (float("nan"), float("nan"))
    return HeldOut(auroc(score, failed), caught(score, failed), rho, *shares, score, failed)


def scorer(fit_parts: list[SetFeatures], names: tuple[str, ...]) -> Callable[[dict[str, np.ndarray]], np.ndarray]:
    """A feature alone as it is (oriented), or the logistic model of ``names`` fitted on the pooled parts."""
    if len(names) == 1:
        return lambda features: DIRECTION[names[0]] * features[names[0]]
    pooled = SetFeatures.pooled(fit_parts)
    model = fit_model(pooled.features, pooled.dice, names)
    return lambda features: model_score(model, features)


def temperature_on(sets: list[CachedSet]) -> float:
    samples = [cached.pixel_sample() for cached in sets]
    return fit_temperature(np.concatenate([s[0] for s in samples]), np.concatenate([s[1] for s in samples]))


def leave_one_out(sets: dict[str, CachedSet]) -> tuple[dict[str, dict[str, HeldOut]], dict[str, float]]:
    """{held-out set: {candidate: HeldOut}} and {held-out set: the temperature fitted on the others}."""
    results, temperatures = {}, {}
    for held in sets:
        fit_sets = [cached for name, cached in sets.items() if name != held]
        temperature = temperatures[held] = temperature_on(fit_sets)
        fit_parts = [SetFeatures.of(cached, temperature) for cached in fit_sets]
        test = SetFeatures.of(sets[held], temperature)
        results[held] = {}
        for name, names in candidates().items():
            if all(part.usable(names) for part in fit_parts) and test.usable(names):
                score = scorer(fit_parts, names)
                table = review_quantiles([score(part.features) for part in fit_parts])
                results[held][name] = measure(score(test.features), test.dice, threshold_at(table, FLAGGED_SHARE))
    return results, temperatures


def shippable(names: tuple[str, ...]) -> bool:
    """Whether bundle.inference.quality.QualityScored computes these features (the others need the TTA members,
    a temperature or the MoE gates, which it does not see)."""
    return set(names) <= set(FEATURES)


def choose(results: dict[str, dict[str, HeldOut]]) -> tuple[str, str]:
    """The candidate to ship and why: of the shippable ones that beat the baseline's AUROC on every held-out set, the
    best mean held-out AUROC; the baseline itself when none does."""
    baseline = {held: figures[BASELINE].auroc for held, figures in results.items()}
    winners = {
        name: np.mean([results[held][name].auroc for held in results])
        for name, names in candidates().items()
        if name != BASELINE
        and shippable(names)
        and all(name in results[h] and results[h][name].auroc > baseline[h] for h in results)
    }
    if not winners:
        return BASELINE, "no candidate that `QualityScored` computes beat it on every held-out set: the baseline ships"
    best = max(winners, key=winners.get)
    return best, (
        f"of the candidates that `QualityScored` computes and that beat `{BASELINE}` on every held-out set, it has "
        "the best mean held-out AUROC"
    )


def final_model(sets: dict[str, CachedSet], chosen: str) -> tuple[dict, dict[str, SetFeatures], float]:
    """The chosen candidate fitted on every set, with its review-threshold table (the score's quantiles on each set,
    averaged over the sets); each set's features; and the temperature fitted on every set, which they use."""
    temperature = temperature_on(list(sets.values()))
    per_set = {name: SetFeatures.of(cached, temperature) for name, cached in sets.items()}
    pooled = SetFeatures.pooled(list(per_set.values()))
    model = fit_model(pooled.features, pooled.dice, candidates()[chosen])
    model["review_quantiles"] = review_quantiles([model_score(model, s.features) for s in per_set.values()])
    return model, per_set, temperature


def review_rows(model: dict, per_set: dict[str, SetFeatures], fraction: float = FLAGGED_SHARE) -> list[list[str]]:
    """Per set: images, mean Dice, failures, the share the ``fraction`` threshold flags and the failures it catches."""
    threshold = threshold_at(model["review_quantiles"], fraction)
    rows = []
    for name, data in per_set.items():
        flagged, failed = model_score(model, data.features) < threshold, data.dice < FAILURE_DICE
        caught_share = flagged[failed].mean() if failed.any() else float("nan")
        counts = [str(len(data.dice)), f"{data.dice.mean():.3f}", str(int(failed.sum()))]
        rows.append([name, *counts, f"{flagged.mean():.2f}", f"{caught_share:.2f}"])
    return rows
