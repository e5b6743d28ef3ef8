"""One table over the cross-validations of several domains (``scripts/train_folds.py --single --test``): the single
model against the five-fold ensemble on the test split, with the same plan's MONAI BasicUNet (a
``scripts/compare_models.py`` output folder) beside them, and what each costs in CPU time.

Usage (from the repository root; each argument is ``label=folder`` of a ``cv_summary.json``, optionally followed by
``,comparison_folder``):
    python -m scripts.folds.domains ISIC-2017-85=docs/results/folds-isic-2017-85,docs/results/plan-isic-2017-85 \\
        MoNuSeg=docs/results/folds-monuseg,docs/results/plan-monuseg
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bundle.errors import MissingFileError, run_script
from scripts.bench.measure import markdown_table
from scripts.comparison.domains import read_domain
from scripts.folds.summary import SUMMARY_NAME

PEER_ROW = "basicunet"  # compare_models.py's row key of MONAI BasicUNet
COLUMNS = (
    "domain",
    "folds' validation Dice (pooled)",
    "test Dice: single",
    "test Dice: 5-fold ensemble",
    "test Dice: BasicUNet, same plan",
    "training CPU min: single / folds",
    "test evaluation CPU s: single / ensemble",
)


def read_study(argument: str) -> tuple[str, dict[str, Any], dict[str, str] | None]:
    """(label, cv_summary.json, the comparison's BasicUNet row or None) of one ``label=folder[,comparison]``."""
    label, _, folders = argument.partition("=")
    summary_dir, _, comparison_dir = folders.partition(",")
    path = Path(summary_dir) / f"{SUMMARY_NAME}.json"
    if not label or not path.is_file():
        raise MissingFileError(f"{argument!r}: expected LABEL=FOLDER holding {SUMMARY_NAME}.json (train_folds.py's)")
    summary = json.loads(path.read_text(encoding="utf-8"))
    peer = read_domain(Path(comparison_dir)).get(PEER_ROW) if comparison_dir else None
    return label, summary, peer


def study_row(label: str, summary: dict[str, Any], peer: dict[str, str] | None) -> list[str]:
    """The table row of one domain; "—" where the study lacks a figure."""
    single, ensemble = summary.get("single", {}), summary.get("ensemble_test", {})

    def dice(row: dict[str, Any]) -> str:
        return f"{row['test_dice']:.4f}" if "test_dice" in row else "—"

    overall = summary["overall"]
    return [
        label,
        f"{overall['pooled']:.4f}",
        dice(single),
        dice(ensemble),
        f"{float(peer['test_dice_mean']):.4f}" if peer else "—",
        f"{single.get('train_cpu_minutes', '—')} / {overall['train_cpu_minutes']}",
        f"{single.get('eval_cpu_seconds', '—')} / {ensemble.get('eval_cpu_seconds', '—')}",
    ]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("studies", nargs="+", metavar="LABEL=FOLDER[,COMPARISON]")
    args = parser.parse_args(argv)
    rows = [study_row(*read_study(argument)) for argument in args.studies]
    print(markdown_table(list(COLUMNS), rows))
    return 0


if __name__ == "__main__":
    sys.exit(run_script(main))
