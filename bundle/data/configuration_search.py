"""nnU-Net's "find best configuration" step. When the folds of several network configurations (encoder, input size,
full-resolution skip) fit the planner's time budget (``scripts/plan.py --minutes``), the plan names them
(``plan#cross_validation``); ``scripts/train_folds.py --choose PLAN`` cross-validates each and
:func:`choose_configuration` writes the one with the best cross-validation Dice into the plan, whose fold ensemble is
then the model (``--ckpt_dir`` of its folds). When only the default configuration's folds fit, the plan names those
alone (the fold ensemble without a choice); when they do not fit either, the plan trains one model as before.
docs/planning.md explains the rules."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path

from ..errors import SettingError
from ..networks import ENCODERS
from .folds import DEFAULT_NUM_FOLDS
from .planning import PlanRules

SEARCH_ENCODERS: tuple[str, ...] = ("mobilenetv2", "resnet34")
FULL_RESOLUTION_SKIPS: tuple[int, ...] = (0, 16)  # off, and the 16-channel skip of docs/small_data.md
LARGER_SIZE = 1.5  # the larger input size tried: 1.5x the planned one (a multiple of 32, within the device's bounds)
VALIDATION_OVERHEAD = 1.15  # as the planner's epoch cap: +15% for validation
CANDIDATE_IDS: tuple[str, ...] = ("encoder", "image_size", "full_resolution_skip", "learning_rate")
SEARCH_KEY = "cross_validation"  # the plan's section (``plan#cross_validation``)

Candidate = dict[str, object]  # {"name", *CANDIDATE_IDS, "minutes"}
StepTimer = Callable[[dict[str, object], Sequence[int], int], float]  # (network kwargs, size, batch) -> s per step


def candidate_name(encoder: str, size: int, skip: int) -> str:
    """E.g. ``mobilenetv2-128-fr0``: a candidate's name and its run folder under ``train_folds.py --work_dir``."""
    return f"{encoder}-{size}-fr{skip}"


def candidate_sizes(
    fingerprint: dict[str, object], size: int, device: str, rules: PlanRules | None = None
) -> list[int]:
    """The planned input side ``size`` and, when the device's bounds and the median image side allow it, a
    ``LARGER_SIZE`` times larger one (rounded up to the encoders' stride)."""
    rules = rules or PlanRules()
    kind = "cuda" if str(device).startswith("cuda") else "cpu"
    multiple = rules.size_multiple
    ceiling = min(rules.max_size[kind], min(fingerprint["median_size"]) // multiple * multiple)
    larger = math.ceil(size * LARGER_SIZE / multiple) * multiple
    return [size] + ([larger] if size < larger <= ceiling else [])


def candidate_configurations(
    fingerprint: dict[str, object],
    plan: dict[str, object],
    device: str,
    encoder: str = "mobilenetv2",
    rules: PlanRules | None = None,
) -> list[Candidate]:
    """Every candidate: ``SEARCH_ENCODERS`` x :func:`candidate_sizes` x ``FULL_RESOLUTION_SKIPS``, the plan's own
    configuration (``encoder`` at the planned size, no skip) first. Each learns at the plan's rate scaled by its
    encoder's registry rate (MobileNetV2 3e-3, ResNet34 1e-3)."""
    size = int(plan["image_size"][0])
    encoders = [encoder] + [name for name in SEARCH_ENCODERS if name != encoder and name in ENCODERS]
    candidates = []
    for name in encoders:
        rate = float(plan["learning_rate"]) * ENCODERS[name].learning_rate / ENCODERS[encoder].learning_rate
        for side in candidate_sizes(fingerprint, size, device, rules):
            for skip in FULL_RESOLUTION_SKIPS:
                candidates.append(
                    {
                        "name": candidate_name(name, side, skip),
                        "encoder": name,
                        "image_size": [side, side],
                        "full_resolution_skip": skip,
                        "learning_rate": float(f"{rate:.3g}"),
                    }
                )
    return candidates


def cross_validation_minutes(
    candidate: Candidate, fingerprint: dict[str, object], plan: dict[str, object], seconds_per_step: float, folds: int
) -> float:
    """Training minutes of ``folds`` folds of ``candidate``: each trains the plan's epochs on (folds - 1) / folds of
    the training + validation images, at ``seconds_per_step`` (+15% for validation)."""
    fold_images = round(int(fingerprint["images"]) * (folds - 1) / folds)
    steps = math.ceil(fold_images / int(plan["batch_size"])) * int(plan["epochs"])
    return folds * steps * seconds_per_step * VALIDATION_OVERHEAD / 60


def cross_validation_plan(
    fingerprint: dict[str, object],
    plan: dict[str, object],
    device: str,
    minutes: float,
    time_step: StepTimer,
    encoder: str = "mobilenetv2",
    norm: str = "group",
    folds: int = DEFAULT_NUM_FOLDS,
    rules: PlanRules | None = None,
) -> tuple[dict[str, object] | None, str]:
    """``plan#cross_validation`` for a ``minutes`` budget, or None, and the reason.

    ``time_step(network kwargs, image size, batch)`` gives the seconds of one training step (e.g.
    ``bundle.data.planning.measure_seconds_per_step`` on the device). The plan's own configuration comes first: when
    its ``folds`` folds do not fit, None (one model). Then the other candidates, cheapest first, each while the total
    still fits. The section lists the candidates with their estimated minutes."""
    candidates = candidate_configurations(fingerprint, plan, device, encoder, rules)

    def cost(candidate: Candidate) -> float:
        network = {
            "encoder": candidate["encoder"],
            "norm": norm,
            "full_resolution_skip": candidate["full_resolution_skip"],
        }
        seconds = time_step(network, candidate["image_size"], int(plan["batch_size"]))
        return round(cross_validation_minutes(candidate, fingerprint, plan, seconds, folds), 1)

    default = {**candidates[0], "minutes": cost(candidates[0])}
    if default["minutes"] > minutes:
        return None, (
            f"{folds} folds of {default['name']} need about {default['minutes']:g} minutes, over the {minutes:g}-minute "
            "budget: one model on the train/validation split"
        )
    chosen, total = [default], default["minutes"]
    left_out = []
    for candidate in sorted(({**c, "minutes": cost(c)} for c in candidates[1:]), key=lambda c: c["minutes"]):
        if total + candidate["minutes"] <= minutes:
            chosen.append(candidate)
            total += candidate["minutes"]
        else:
            left_out.append(f"{candidate['name']} ({candidate['minutes']:g} min)")
    what = "the fold ensemble of the plan's configuration" if len(chosen) == 1 else "the best of them"
    reason = (
        f"{len(chosen)} configuration(s) x {folds} folds fit the {minutes:g}-minute budget (about {total:.1f} "
        f"minutes): cross-validation, then {what} predicts with its {folds} folds"
        + (f"; left out: {', '.join(left_out)}" if left_out else "")
    )
    section = {"num_folds": folds, "minutes": round(total, 1), "budget_minutes": minutes, "candidates": chosen}
    return section, reason


def search_command(plan_path: str | Path, dataset_dir: str | Path, train_images: int | None = None) -> str:
    """The command that trains a plan's cross-validation (``WORK_DIR``: the user's folder for the folds)."""
    subset = f" --train_images {train_images}" if train_images else ""
    return f"python scripts/train_folds.py --choose {plan_path} --work_dir WORK_DIR --dataset_dir {dataset_dir}{subset}"


def with_cross_validation(
    overlay: dict[str, object], section: dict[str, object] | None, reason: str, command: str = ""
) -> dict[str, object]:
    """The plan overlay with ``plan#cross_validation`` (when ``section``; with the ``command`` that trains it) and its
    reason in ``plan#reasons``."""
    plan = {**overlay["plan"], "reasons": {**overlay["plan"]["reasons"], SEARCH_KEY: reason}}
    if section is not None:
        plan[SEARCH_KEY] = {**section, **({"command": command} if command else {})}
    return {**overlay, "plan": plan}


def search_section(overlay: dict[str, object], plan_path: str | Path) -> dict[str, object]:
    """``plan#cross_validation`` of a plan overlay; SettingError naming ``plan_path`` when it has none."""
    section = overlay.get("plan", {}).get(SEARCH_KEY) if isinstance(overlay.get("plan"), dict) else None
    if not section or not section.get("candidates"):
        raise SettingError(
            f"{plan_path} names no cross-validation (plan#{SEARCH_KEY}): plan with scripts/plan.py --minutes M, "
            "a budget that fits the folds, or train the folds of one configuration with scripts/train_folds.py."
        )
    return section


def choose_configuration(
    overlay: dict[str, object], results: dict[str, float], work_dir: str | Path, plan_path: str | Path = "the plan"
) -> dict[str, object]:
    """The plan overlay with the candidate of the best cross-validation Dice (``results``: name -> pooled validation
    Dice of its folds; a tie goes to the earlier, cheaper candidate): its ids (encoder, image_size,
    full_resolution_skip, learning_rate) as the plan's, and ``plan#cross_validation`` with the results, the choice
    and ``ckpt_dir``, the folder of its folds (``--ckpt_dir`` for inference.json / evaluate.json)."""
    section = search_section(overlay, plan_path)
    candidates = section["candidates"]
    missing = [c["name"] for c in candidates if c["name"] not in results]
    if missing:
        raise SettingError(f"no cross-validation Dice for {', '.join(missing)}; run scripts/train_folds.py --choose.")
    best = max(candidates, key=lambda c: (results[c["name"]], -candidates.index(c)))
    ckpt_dir = str(Path(work_dir) / str(best["name"]))
    reason = (
        f"best {section['num_folds']}-fold cross-validation Dice {results[best['name']]:.4f} of "
        f"{len(candidates)} configuration(s); predict with its fold ensemble: --ckpt_dir {ckpt_dir}"
    )
    plan = {
        **overlay["plan"],
        SEARCH_KEY: {**section, "results": dict(results), "chosen": best["name"], "ckpt_dir": ckpt_dir},
        "reasons": {**overlay["plan"]["reasons"], "configuration": reason},
    }
    return {**overlay, **{key: best[key] for key in CANDIDATE_IDS}, "plan": plan}
