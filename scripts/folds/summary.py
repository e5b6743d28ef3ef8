"""The cross-validation summary: validation Dice of every fold at the original resolution (and the best Dice its
training logged), the folds' mean and the pooled mean over all validation images, training CPU time; with the test
evaluations of the fold ensemble and of a single model when they ran. Written as JSON and markdown."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from bundle.atomic_files import atomic_write_json, atomic_write_text
from scripts.comparison.training_logs import scalar_history
from scripts.doc_command import relative_path
from scripts.folds.jobs import SUMMARY, CrossValidation

SUMMARY_NAME = "cv_summary"


def _dice(summary: dict[str, Any]) -> float:
    return float(summary["metrics"]["dice"]["mean"])


def _minutes(record: dict[str, Any], key: str) -> float:
    return round(sum(attempt[key] for attempt in record["attempts"]) / 60, 2)


def run_row(cv: CrossValidation, fold: int | None) -> dict[str, Any]:
    """One training's row: validation images and Dice (original resolution), the best validation Dice its training
    logged (training resolution), training wall and CPU minutes and attempts."""
    validation = cv.evaluate(fold, "validation")
    logged = scalar_history(cv.run_dir(fold) / "train_logs", "val_mean_dice")
    record = cv.train_time(fold)
    return {
        "run": cv.run_dir(fold).name,
        "validation_images": int(validation["images"]),
        "validation_dice": round(_dice(validation), 4),
        "best_logged_dice": round(max(logged), 4) if logged else math.nan,
        "train_wall_minutes": _minutes(record, "wall_seconds"),
        "train_cpu_minutes": _minutes(record, "cpu_seconds"),
        "attempts": len(record["attempts"]),
    }


def held_out_row(cv: CrossValidation, fold: int | None | str) -> dict[str, Any] | None:
    """Test Dice and evaluation CPU seconds of ``fold`` (``"ensemble"``, or None: the single model) when evaluated."""
    output = cv.work_dir / "ensemble_test" if fold == "ensemble" else cv.run_dir(fold) / "test"
    if not (output / SUMMARY).is_file():
        return None
    result = cv.evaluate(fold, "test")
    return {
        "test_images": int(result["images"]),
        "test_dice": round(_dice(result), 4),
        "eval_cpu_seconds": result.get("cpu_seconds", math.nan),
    }


def cross_validation_summary(cv: CrossValidation, single: bool = False) -> dict[str, Any]:
    """The summary of ``cv``'s finished folds (and of its single model with ``single``)."""
    folds = [run_row(cv, fold) for fold in range(cv.num_folds)]
    images = sum(row["validation_images"] for row in folds)
    overall = {
        "mean_of_folds": round(sum(row["validation_dice"] for row in folds) / len(folds), 4),
        "pooled": round(sum(row["validation_dice"] * row["validation_images"] for row in folds) / images, 4),
        "validation_images": images,
        "train_cpu_minutes": round(sum(row["train_cpu_minutes"] for row in folds), 2),
        "train_wall_minutes": round(sum(row["train_wall_minutes"] for row in folds), 2),
    }
    summary = {
        "work_dir": relative_path(cv.work_dir),  # relative to the repository: the summary may go into docs/
        "num_folds": cv.num_folds,
        "configs": [Path(config).name for config in cv.configs],
        "overrides": cv.overrides,
        "folds": folds,
        "overall": overall,
    }
    ensemble_test = held_out_row(cv, "ensemble")
    if ensemble_test:
        summary["ensemble_test"] = ensemble_test
    if single:
        summary["single"] = {**run_row(cv, None), **(held_out_row(cv, None) or {})}
    return summary


def _cell(key: str, value: Any) -> str:
    """A table cell: Dice with 4 decimals, minutes with 2."""
    if isinstance(value, float):
        return f"{value:.4f}" if "dice" in key else f"{value:.2f}"
    return str(value)


def summary_markdown(summary: dict[str, Any]) -> str:
    """The summary as markdown tables."""
    columns = [
        "run",
        "validation_images",
        "validation_dice",
        "best_logged_dice",
        "train_cpu_minutes",
        "train_wall_minutes",
        "attempts",
    ]
    lines = [
        f"# Cross-validation: {summary['num_folds']} folds",
        "",
        f"Configs {', '.join(summary['configs'])}; ids "
        + ", ".join(f"`--{key} {value}`" for key, value in summary["overrides"].items()),
        "",
        "Validation Dice: mean per image at the original resolution (configs/evaluate.json) of each fold's best "
        "checkpoint; best logged: the best validation Dice of its training, at the training resolution. Training "
        "minutes add up the attempts this script ran (a resumed fold: from its resume onwards).",
        "",
        "| " + " | ".join(columns) + " |",
        "|" + " --- |" * len(columns),
    ]
    rows = summary["folds"] + ([summary["single"]] if "single" in summary else [])
    lines += ["| " + " | ".join(_cell(key, row[key]) for key in columns) + " |" for row in rows]
    overall = summary["overall"]
    lines += [
        "",
        f"Overall: validation Dice {overall['pooled']:.4f} pooled over {overall['validation_images']} images "
        f"({overall['mean_of_folds']:.4f} mean of folds); training {overall['train_cpu_minutes']} CPU minutes "
        f"({overall['train_wall_minutes']} wall).",
    ]
    for label, row in (("fold ensemble", summary.get("ensemble_test")), ("single model", summary.get("single"))):
        if row and "test_dice" in row:
            lines.append(
                f"- {label}: test Dice {row['test_dice']:.4f} on {row['test_images']} images, evaluation "
                f"{row['eval_cpu_seconds']} CPU seconds"
            )
    return "\n".join(lines) + "\n"


def write_summary(summary: dict[str, Any], work_dir: Path) -> Path:
    """Write ``cv_summary.json`` and ``cv_summary.md`` into ``work_dir``; return the markdown's path."""
    atomic_write_json(work_dir / f"{SUMMARY_NAME}.json", summary)
    markdown = work_dir / f"{SUMMARY_NAME}.md"
    atomic_write_text(markdown, summary_markdown(summary))
    return markdown
