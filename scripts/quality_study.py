"""Choose, fit and calibrate the per-image quality score (``qc_score``, bundle/inference/quality.py), leaving one
centre out; with ``--write-model`` write bundle/inference/quality_model.json. The one command a release runs.

Each ``--set NAME CHECKPOINT SCORED REFERENCE`` is a model scored on a centre it never saw: ``SCORED`` and
``REFERENCE`` (the images it was trained on, for the MoE routing's reference) are data folders under ``--data_dir``,
``FOLDER`` for its non-test images, ``FOLDER@SPLIT`` for one split, several joined by commas; test splits are never
read. Each set is run once into ``--cache`` (scripts/quality/cache.py) and reused while its checkpoint and images
are unchanged. Every candidate score (scripts/quality/candidates.py) is fitted on all sets but one and measured on
that one (scripts/quality/study.py); the score that ships is the best one that beats ``mean_foreground_probability``
on every held-out set, else that baseline, refitted on all sets. ``needs_review`` flags the images below the score's
``review_fraction`` quantile, averaged over the sets. ``--check`` sets (e.g. the shipped model on its validation
images) are only measured. Writes docs/quality.md and docs/figures/quality_dice_vs_score.png.

Usage (from the repository root; docs/quality.md has the command that made the shipped model):
    python scripts/quality_study.py --data_dir D --cache runs/quality \\
        --set kvasir-model-on-clinicdb runs/model-0.7.0.pt cvc-clinicdb kvasir-seg@training \\
        --set clinicdb-model-on-kvasir runs/clinicdb-model/model.pt kvasir-seg cvc-clinicdb@training --write-model
"""

from __future__ import annotations

import argparse
import datetime
import logging
import os
import platform
import sys
from collections.abc import Sequence
from pathlib import Path

import torch
from bundle.atomic_files import atomic_write_json, atomic_write_text
from bundle.errors import run_script
from bundle.inference.quality import MODEL_PATH
from scripts.quality.cache import cache_set
from scripts.quality.candidates import CachedSet
from scripts.quality.fitting import FAILURE_DICE, FLAGGED_SHARE, model_score, threshold_at
from scripts.quality.report import report_text, table
from scripts.quality.study import (
    BASELINE,
    HeldOut,
    SetFeatures,
    choose,
    final_model,
    leave_one_out,
    measure,
    review_rows,
)

REPO_ROOT = Path(__file__).resolve().parents[1]


def recorded_command(argv: Sequence[str], data_dir: str) -> str:
    """The command line with the data folder written as ``D`` and paths inside the repository made relative to it,
    so that docs name no machine's folders."""
    words = []
    for word in argv:
        if os.path.abspath(word) == os.path.abspath(data_dir):
            word = "D"
        elif os.path.isabs(word) and Path(os.path.abspath(word)).is_relative_to(REPO_ROOT):
            word = os.path.relpath(word, REPO_ROOT)
        words.append(word)
    return "python scripts/quality_study.py " + " ".join(words)


def cached_sets(specs: list[list[str]], data_dir: str, cache: Path) -> dict[str, CachedSet]:
    def under_data(spec: str) -> str:
        return ",".join(os.path.join(data_dir, part) for part in spec.split(","))

    sets = {}
    for name, ckpt, scored, reference in specs:
        folder = cache_set(cache / name, ckpt, under_data(scored), under_data(reference))
        sets[name] = CachedSet(folder)
    return sets


def plot(per_set: dict[str, SetFeatures], model: dict, threshold: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(per_set), figsize=(4.5 * len(per_set), 4), squeeze=False)
    for axis, (name, data) in zip(axes[0], per_set.items()):
        axis.scatter(model_score(model, data.features), data.dice, s=6, alpha=0.5)
        axis.axvline(threshold, color="red", lw=1, label=f"needs_review below ({FLAGGED_SHARE:.0%})")
        axis.axhline(FAILURE_DICE, color="grey", lw=1, ls="--", label=f"Dice {FAILURE_DICE}")
        axis.set(xlabel="qc_score", ylabel="Dice", title=name)
        axis.legend(loc="lower right", fontsize=8)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=80)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    spec = dict(nargs=4, action="append", metavar=("NAME", "CHECKPOINT", "SCORED", "REFERENCE"))
    parser.add_argument("--set", required=True, help="a model on a centre it never saw (two or more)", **spec)
    parser.add_argument("--check", default=[], help="a set the score is only measured on", **spec)
    parser.add_argument("--data_dir", required=True, help="the folder that holds the data folders")
    parser.add_argument("--cache", default="runs/quality", help="folder of the per-set caches")
    parser.add_argument("--write-model", action="store_true", help=f"write the chosen model to {MODEL_PATH.name}")
    parser.add_argument("--docs", default=str(REPO_ROOT / "docs"), help="folder for quality.md and figures/")
    args = parser.parse_args(argv)
    if len(args.set) < 2:
        parser.error("leaving one centre out needs two or more --set")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    sets = cached_sets(args.set, args.data_dir, Path(args.cache))
    checks = cached_sets(args.check, args.data_dir, Path(args.cache))
    results, temperatures = leave_one_out(sets)
    chosen, reason = choose(results)
    model, per_set, temperature = final_model(sets, chosen)
    per_set.update({name: SetFeatures.of(cached, temperature) for name, cached in checks.items()})
    command = recorded_command(sys.argv[1:] if argv is None else list(argv), args.data_dir)
    model.update(candidate=chosen, fitted_by=command, fitted_on=machine_line())
    threshold = threshold_at(model["review_quantiles"], FLAGGED_SHARE)
    check_rows = []
    for name in checks:
        data = per_set[name]
        check_rows.append([name, chosen, *figures(measure(model_score(model, data.features), data.dice, threshold))])
        check_rows.append([name, BASELINE, *figures(measure(data.features[BASELINE], data.dice))])
    docs = Path(args.docs)
    plot(per_set, model, threshold, docs / "figures" / "quality_dice_vs_score.png")
    held_out = [[held, name, *figures(result)] for held, by_name in results.items() for name, result in by_name.items()]
    tables = {"checks": check_rows, "review": review_rows(model, per_set)}
    atomic_write_text(docs / "quality.md", report_text(model, reason, temperatures, results, tables))
    if args.write_model:
        atomic_write_json(MODEL_PATH, model)
    print(table(held_out + check_rows))
    return 0


def machine_line() -> str:
    """Today's date and the machine the study ran on, for the docs."""
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{datetime.date.today()}, {platform.machine()}, {os.cpu_count()} CPU cores, {gpu}"


def figures(result: HeldOut) -> list[str]:
    """Spearman, AUROC, caught at FLAGGED_SHARE, and (NaN without a threshold) share flagged, failures caught."""
    numbers = (result.spearman, result.auroc, result.caught, result.flagged, result.flagged_caught)
    return ["–" if n != n else f"{n:.3f}" if i < 2 else f"{n:.2f}" for i, n in enumerate(numbers)]


if __name__ == "__main__":
    sys.exit(run_script(main))
