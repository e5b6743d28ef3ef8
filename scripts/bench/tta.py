"""The TTA suite (``python scripts/benchmark.py --suite tta``): test-time augmentation policies of the shipped model,
validation Dice against folder-inference images/s and the share of images that took the full TTA
(``docs/benchmark_tta.md``).

Dice: the 290 validation images of the PraNet protocol (never the test names), offline from a cache of each
member's probabilities (:mod:`scripts.bench.tta_cache`), at original size as ``evaluate.json`` scores them. An
adaptive policy's threshold is chosen there: the highest (fewest images averaged over every member) whose Dice is
within :data:`CHOICE_TOLERANCE` of "flips+scales". Images/s: ``inference.json`` on the 100 Kvasir-SEG test JPGs
with the shipped model and the policy's inferer (timing only; nothing is chosen on them).
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from bundle.atomic_files import atomic_write_text, sha256_of
from bundle.inference.quality import qc_score, quality_features
from bundle.inference.tta import SIGNALS, multiple_of

from . import throughput, tta_cache
from .latency import ROWS as NETWORK_ROWS
from .measure import Budget, Results, budget_table, markdown_table, rounds_cell, value_cell
from .tta_cache import MEMBERS, averaged_logits, dice_at_original_size, load_cache

REPO_ROOT = Path(__file__).resolve().parents[2]
CACHE_ROOT = REPO_ROOT / "runs" / "tta-cache"  # one folder per model, built on its first run (~10 min, 1 core)
FULL = tuple(range(len(MEMBERS)))  # "flips+scales": 4 flips at 1.0 and at 1.2
GOAL_TOLERANCE = 0.002  # the default's validation Dice may be this far below "flips+scales"
CHOICE_TOLERANCE = 0.0015  # thresholds are chosen this close: a margin for backend (torch / ONNX Runtime) rounding
SHIPPED_MODEL = REPO_ROOT / "models" / "model.pt"


def cache_dir() -> Path:
    """The member cache of the shipped model's current file (named by its sha256: a new model gets a new one)."""
    return CACHE_ROOT / sha256_of(SHIPPED_MODEL)[:16]


@dataclass(frozen=True)
class Policy:
    """Every image takes the ``first`` members (indices into :data:`MEMBERS`); those whose ``signal``
    (:data:`bundle.inference.tta.SIGNALS`) of them exceeds the chosen threshold also take ``second``."""

    label: str
    first: tuple[int, ...]
    second: tuple[int, ...] = ()
    signal: str = "uncertain_fraction"
    overrides: dict[str, Any] = field(default_factory=dict)  # inference.json ids
    shipped: bool = False  # inference.json's own inferer (tta, tta_adaptive_threshold); else this policy's

    def inferer(self, threshold: float) -> dict[str, Any]:
        """inference.json's ``inferer`` running this policy."""

        def members(indices: tuple[int, ...]) -> list:
            return [[MEMBERS[i][0], list(MEMBERS[i][1])] for i in indices]

        return {
            "_target_": "bundle.inference.tta.TTAInferer",
            "mode": "adaptive",
            "scales": list(tta_cache.SCALES),
            "first": members(self.first),
            "second": members(self.second),
            "adaptive_signal": self.signal,
            "adaptive_threshold": threshold,
        }


REST = tuple(range(1, len(MEMBERS)))
POLICIES: dict[str, Policy] = {
    "none": Policy("`--tta none` (1 pass)", (0,), overrides={"tta": "none"}),
    "hflip": Policy("identity + horizontal flip", (0, 1)),
    "scale": Policy("identity + scale 1.2", (0, 4)),
    "hflip-scale": Policy("identity + horizontal flip + scale 1.2", (0, 1, 4)),
    "flips": Policy("`--tta flips` (4 passes)", (0, 1, 2, 3), overrides={"tta": "flips"}),
    "full": Policy("`--tta flips+scales` (8 passes, 0.8.0's default)", FULL, overrides={"tta": "flips+scales"}),
    "small-mask-scale": Policy("flips; the flips at 1.2 too for small masks", (0, 1, 2, 3), (4, 5, 6, 7), "small_mask"),
    "adaptive-spread": Policy("identity + horizontal flip; full TTA by their `spread`", (0, 1), REST[1:], "spread"),
    "adaptive-scale": Policy("identity; the 4 flips at 1.2 too by `uncertain_fraction`", (0,), (4, 5, 6, 7)),
    "default": Policy("default: `inference.json` as shipped (`--tta adaptive`)", (0,), REST, shipped=True),
    "default-batch16": Policy(
        "the same, `batch_size` 16 (members batched with more images)",
        (0,),
        REST,
        overrides={"batch_size": 16},
        shipped=True,
    ),
}
ROWS = {key: NETWORK_ROWS["lh-mobilenetv2-moe"] for key in POLICIES}


def study_path() -> Path:
    return cache_dir() / "study.json"


def prepare_study() -> dict[str, Any]:
    """Per-image Dice of every policy's member sets and the signals of their first members, from the member cache
    (built when missing); kept in ``study.json`` beside it, extended when a policy needs more."""
    study = json.loads(study_path().read_text(encoding="utf-8")) if study_path().is_file() else {}
    firsts = {key_of(policy.first) for policy in POLICIES.values()}
    sets = firsts | {key_of(policy.first + policy.second) for policy in POLICIES.values()}
    if study and sets <= study["dice"].keys() and firsts <= study["signals"].keys():
        return study
    if not (cache_dir() / "logits.npy").is_file():
        tta_cache.write_cache(cache_dir())
    logits, labels, images = load_cache(cache_dir())
    study = study or {"images": images, "dice": {}, "signals": {}}
    for key in sorted(sets - study["dice"].keys()):
        members = [int(i) for i in key.split(",")]
        study["dice"][key] = [
            dice_at_original_size(averaged_logits(logits[i, members]), labels[i]) for i in range(len(labels))
        ]
    for key in sorted(firsts - study["signals"].keys()):
        members = [int(i) for i in key.split(",")]
        probs = torch.sigmoid(torch.from_numpy(np.asarray(logits[:, members])))[:, :, None]  # (N, M, 1, H, W)
        study["signals"][key] = {name: [float(signal(p[:, None])) for p in probs] for name, signal in SIGNALS.items()}
    if "quality" not in study:
        study["quality"] = [quality_signals(np.asarray(logits[i, 0])) for i in range(len(labels))]
    atomic_write_text(study_path(), json.dumps(study))
    return study


def quality_signals(logits: np.ndarray) -> dict[str, float]:
    """Candidate uncertainty signals of one pass's (H, W) logits from the quality score's features."""
    probs = 1 / (1 + np.exp(-logits))
    features = quality_features(probs, probs >= 0.5)
    return {
        "1 - mean_foreground_probability": 1 - features["mean_foreground_probability"],
        "boundary_entropy": features["boundary_entropy"],
        "1 - qc_score": 1 - qc_score(features),
    }


def key_of(members: tuple[int, ...]) -> str:
    return ",".join(map(str, members))


@dataclass(frozen=True)
class Choice:
    threshold: float | None  # None: a fixed policy
    dice: float
    share: float  # of the images that took ``second``


def outcome(first: np.ndarray, both: np.ndarray, signal: np.ndarray, threshold: float) -> Choice:
    """Mean Dice and share averaged over ``first`` + ``second`` of a threshold (images above it take both)."""
    chosen = signal > threshold
    return Choice(threshold, float(np.nanmean(np.where(chosen, both, first))), float(chosen.mean()))


def choose(first: np.ndarray, both: np.ndarray, signal: np.ndarray, target: float) -> Choice:
    """The highest threshold (midway between two signal values, 3 significant digits) whose mean Dice reaches
    ``target``."""
    values = np.unique(signal)[::-1]
    for high, low in zip(values, [*values[1:], values[-1] - 1]):
        threshold = float(f"{(high + low) / 2:.3g}") if high - low > 1e-3 else (high + low) / 2
        result = outcome(first, both, signal, threshold)
        if result.dice >= target:
            return result
    return outcome(first, both, signal, float("-inf"))


def policy_arrays(study: dict[str, Any], policy: Policy) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(first Dice, first + second Dice, signal) per validation image."""
    dice = study["dice"]
    signal = study["signals"][key_of(policy.first)][policy.signal]
    return np.array(dice[key_of(policy.first)]), np.array(dice[key_of(policy.first + policy.second)]), np.array(signal)


def full_dice(study: dict[str, Any], subset: np.ndarray | None = None) -> float:
    """Mean validation Dice of "flips+scales" (over ``subset``, a bool mask, when given)."""
    dice = np.array(study["dice"][key_of(FULL)])
    return float(np.nanmean(dice if subset is None else dice[subset]))


MODE_POLICIES = {"none": "none", "flips": "flips", "flips+scales": "full"}  # inference.json's tta -> policy key


def shipped_tta() -> tuple[str, float]:
    """inference.json's ``tta`` and ``tta_adaptive_threshold``."""
    config = json.loads(throughput.INFERENCE_CONFIG.read_text(encoding="utf-8"))
    return config["tta"], float(config["tta_adaptive_threshold"])


def policy_choice(study: dict[str, Any], key: str) -> Choice:
    """The validation Dice, threshold and share of ``POLICIES[key]`` (the default: at the shipped threshold)."""
    policy = POLICIES[key]
    first, both, signal = policy_arrays(study, policy)
    if not policy.second:
        return Choice(None, float(np.nanmean(first)), 0.0)
    if policy.shipped:
        mode, threshold = shipped_tta()
        return (
            outcome(first, both, signal, threshold) if mode == "adaptive" else policy_choice(study, MODE_POLICIES[mode])
        )
    return choose(first, both, signal, full_dice(study) - CHOICE_TOLERANCE)


def measure_policy(key: str) -> dict[str, float]:
    """Images/s (``value``) and CPU ms per image of the folder command with the shipped model and ``POLICIES[key]``
    (a worker of the suite)."""
    policy, study = POLICIES[key], json.loads(study_path().read_text(encoding="utf-8"))
    overrides: dict[str, Any] = {"ckpt_path": str(SHIPPED_MODEL), **policy.overrides}
    if not policy.shipped and "tta" not in policy.overrides:
        overrides["inferer"] = policy.inferer(policy_choice(study, key).threshold or 0.0)
    with tempfile.TemporaryDirectory(prefix="tta-") as tmp:
        images_per_s, cpu_ms = throughput.folder_images_per_s(overrides, Path(tmp))
    return {"value": images_per_s, "cpu_ms_per_image": cpu_ms}


def passes(policy: Policy, share: float) -> float:
    """Network work per image in 224-px passes (a 1.2× member runs at 256 px: (256 / 224)² of one)."""
    size = throughput.IMAGE_SIZE[0]

    def cost(members: tuple[int, ...]) -> float:
        return sum((multiple_of(size * MEMBERS[i][0], 32) / size) ** 2 for i in members)

    return cost(policy.first) + share * cost(policy.second)


def held_out(study: dict[str, Any], key: str) -> str:
    """The policy's threshold chosen on one half of the validation images (even / odd), scored on the other:
    Dice minus "flips+scales" Dice on that half, both ways."""
    first, both, signal = policy_arrays(study, POLICIES[key])
    halves = [np.arange(len(first)) % 2 == parity for parity in (0, 1)]
    gaps = []
    for fit, score in (halves, halves[::-1]):
        target = full_dice(study, fit) - CHOICE_TOLERANCE
        threshold = choose(first[fit], both[fit], signal[fit], target).threshold
        result = outcome(first[score], both[score], signal[score], threshold)
        gaps.append(f"{result.dice - full_dice(study, score):+.4f} (share {result.share:.0%})")
    return " / ".join(gaps)


def signal_table(study: dict[str, Any]) -> str:
    """The share of images each candidate signal of one pass sends to the full TTA, at its chosen threshold."""
    first, both = np.array(study["dice"][key_of((0,))]), np.array(study["dice"][key_of(FULL)])
    candidates = {f"`{name}`": study["signals"][key_of((0,))][name] for name in SIGNALS if name != "spread"}
    for name in study["quality"][0]:
        candidates[name] = [row[name] for row in study["quality"]]
    target = full_dice(study) - CHOICE_TOLERANCE
    body = []
    for name, values in candidates.items():
        result = choose(first, both, np.array(values), target)
        body.append([name, f"{result.threshold:.3g}", f"{result.share:.0%}", f"{result.dice:.4f}"])
    return markdown_table(["signal of the single pass", "threshold", "full TTA share", "val Dice"], body)


def results_section(results: Results, rounds: dict[tuple[str, str], list[float]], size: int) -> tuple[str, int]:
    """The policy table, the signal table and the budgets; also return the number of failed budgets."""
    study = prepare_study()
    full, none = full_dice(study), results.get("none", {}).get("images_per_s")
    header = ["policy", "val Dice", "Δ vs flips+scales", "full TTA share", "threshold", "passes / image"]
    header += ["images/s", "× `--tta none`", "CPU ms / image", "CPU: `--tta none` ÷ this", "per-round images/s"]
    none_cpu = results.get("none", {}).get("cpu_ms_per_image")
    body = []
    for key, result in results.items():
        policy, choice = POLICIES[key], policy_choice(study, key)
        ips, times = result["images_per_s"], rounds[key, "pipeline"]
        results[key]["dice_gap_x1000"] = 1e3 * (choice.dice - full)
        full_share = 1.0 if policy.first == FULL else choice.share if policy.first + policy.second == FULL else 0.0
        body.append(
            [policy.label, f"{choice.dice:.4f}", f"{choice.dice - full:+.4f}", f"{full_share:.0%}"]
            + ["—" if choice.threshold is None else f"`{policy.signal}` > {choice.threshold:.3g}"]
            + [f"{passes(policy, choice.share):.2f}", value_cell(ips, times), f"{ips / none:.2f}" if none else "—"]
            + [f"{result['cpu_ms_per_image']:.0f}", f"{none_cpu / result['cpu_ms_per_image']:.2f}" if none_cpu else "—"]
            + [rounds_cell(times)]
        )
    budgets, failures = budget_table(BUDGETS, results)
    first, both, signal = policy_arrays(study, POLICIES["default"])
    rule = choose(first, both, signal, full - CHOICE_TOLERANCE)
    mode, shipped = shipped_tta()
    choice = (
        f"The rule's threshold for `--tta adaptive` on this model: `uncertain_fraction` > {rule.threshold:.3g} "
        f"(validation Dice {rule.dice:.4f}, {rule.share:.0%} of the images take the full TTA); `inference.json` "
        f"ships `tta` {mode}, `tta_adaptive_threshold` {shipped:g}.\n"
    )
    seen, lines = set(), []
    for key, policy in POLICIES.items():  # each distinct adaptive policy once
        if policy.second and (policy.first, policy.second, policy.signal) not in seen:
            seen.add((policy.first, policy.second, policy.signal))
            lines.append(f"- {policy.label}: {held_out(study, key)}")
    adaptive = "\n".join(lines)
    return (
        f"## Results\n\n{markdown_table(header, body)}\n\n{choice}\n{budgets}\n"
        f"## Thresholds chosen on half the validation images\n\nDice − flips+scales Dice on the other half (even "
        f"images chosen, odd scored / odd chosen, even scored), share of the full TTA there:\n\n{adaptive}\n\n"
        f"## Signals of the single pass\n\n{signal_table(study)}\n",
        failures,
    )


BUDGETS = (
    Budget("default: images/s", "default", "images_per_s", 20.0, at_least=True),
    Budget("default: images/s / `--tta none`", "default", "images_per_s", 0.45, "none", at_least=True),
    Budget(
        "default: `--tta none`'s CPU time / its (load-independent)",
        "none",
        "cpu_ms_per_image",
        0.45,
        "default",
        at_least=True,
    ),
    Budget(
        "default: (validation Dice − flips+scales) × 1000",
        "default",
        "dice_gap_x1000",
        -1e3 * GOAL_TOLERANCE,
        at_least=True,
    ),
)


def method_text(rounds: str) -> str:
    """The Method section of ``docs/benchmark_tta.md``; ``rounds``: the sentence on the rounds."""
    settings = throughput.inference_settings()
    return f"""\
**Dice**: the shipped `models/model.pt` on the 290 validation images of its training split (Kvasir-SEG 180 +
CVC-ClinicDB 110: `evaluate.json --eval_split validation` with both folders, never the PraNet test names),
`evaluate.json`'s preprocessing and backend (torch, CPU). Each of the 8 "flips+scales" members (4 flips at scale 1.0
and 1.2, `tta_scales` [1.0, 1.2]) runs once per image into a cache (`scripts/bench/tta_cache.py`, under `runs/`);
every policy is then scored offline from it exactly as `evaluate.json` scores its logits: the mean probability's
logits (a single pass: its own logits) resized bilinearly to the original size, thresholded at 0.5, Dice per image,
averaged. An adaptive policy sends an image to its second members when the signal of its first members
(`bundle.inference.tta.SIGNALS`) exceeds the threshold; the threshold is chosen on these images: the highest whose
Dice is within {CHOICE_TOLERANCE} of flips+scales ({GOAL_TOLERANCE} is the goal; the margin covers backend
rounding). The default row uses `inference.json`'s own `tta_adaptive_threshold`.

**Images/s**: `configs/inference.json` (the folder command, `backend auto`: ONNX Runtime) on the 100 Kvasir-SEG
PraNet test JPGs with the shipped model, `batch_size` {settings["batch_size"]}, `num_workers` {settings["num_workers"]},
the policy's `inferer` (`bundle.inference.tta.TTAInferer` with its members, signal and threshold) or `--tta`, timed
end to end as in `docs/benchmark_throughput.md` (decode, resize, model, inversion, post-processing, PNG writing); the
share and Dice columns are the validation ones, the test images only time the policy. "passes / image": network work
in 224-px passes (a 1.2× member runs at 256 px, 1.31 passes), with the validation share. "CPU ms / image": user +
system CPU time of the timed run (every thread of the main process and its DataLoader workers) per image: the work,
which the load of other processes barely changes, unlike images/s; its ratio to `--tta none`'s is the speed ratio
a machine with nothing else to do would show if the run kept its cores as busy. Each configuration in a fresh
process; {rounds}"""
