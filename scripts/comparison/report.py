"""The comparison's summary: results.csv and results.md (main and median tables, the ablation and recipe-study
tables, the budget paragraph, the command) with the two plots."""

from __future__ import annotations

import argparse
import json
import math
import platform
from pathlib import Path
from typing import Any

from bundle.atomic_files import atomic_write, atomic_write_csv, atomic_write_text
from bundle.data.datasets import dataset_name
from scripts.bench.measure import cpu_model, markdown_table
from scripts.comparison.catalogue import STAGE2_RECIPES, CompareRow
from scripts.comparison.plots import plot_dice_vs_latency, plot_validation_curves
from scripts.comparison.runner import CONFIGS, LATENCY_ITERS, METRICS

COLUMNS = (
    "row",
    "network",
    "params_m",
    "gmacs",
    "cpu_latency_ms",
    "train_minutes",
    "best_val_loss",
    "best_val_dice",
    *(f"test_{metric}_{stat}" for metric in METRICS for stat in ("mean", "median")),
    "test_images",
    "expert_usage",
)


def format_cell(value: Any) -> str:
    """A table cell: floats with 3 decimals (``nan`` as such), anything else as text."""
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.3f}"
    return str(value)


def mean_std(values: list[float]) -> str:
    """``mean ± std`` (sample standard deviation) with 4 decimals, or the single value."""
    mean = sum(values) / len(values)
    if len(values) == 1:
        return f"{mean:.4f}"
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
    return f"{mean:.4f} ± {std:.4f}"


def study_table(results: list[dict[str, Any]], rows: dict[str, CompareRow]) -> str:
    """Markdown table of the stage-2 recipe study: per recipe, mean ± std over its seeds of validation and test Dice
    (original resolution), the gain over the stage-1 row, expert usage (first seed) and latency; "" without it."""
    study = [r for r in results if rows[r["row"]].study]
    stage1 = next((r for r in study if rows[r["row"]].stage1_row is None), None)
    if stage1 is None:
        return ""
    body = [["stage 1 (the given checkpoint)", "1", f"{stage1['validation_dice_mean']:.4f}", "—"]]
    body[0] += [f"{stage1['test_dice_mean']:.4f}", "—", "no MoE", format_cell(stage1["cpu_latency_ms"])]
    for recipe, (label, *_rest) in STAGE2_RECIPES.items():
        runs = [r for r in study if r["row"].split("-")[2:3] == [recipe]]
        if not runs:
            continue
        val, test = [r["validation_dice_mean"] for r in runs], [r["test_dice_mean"] for r in runs]
        gains = [v - stage1["validation_dice_mean"] for v in val]
        test_gains = [t - stage1["test_dice_mean"] for t in test]
        body.append(
            [label, str(len(runs)), mean_std(val), mean_std(gains), mean_std(test), mean_std(test_gains)]
            + [runs[0]["expert_usage"], format_cell(runs[0]["cpu_latency_ms"])]
        )
    head = ["recipe", "seeds", "val Dice", "val gain", "test Dice", "test gain", "expert usage (seed 0)", "CPU ms"]
    return "## Stage-2 recipes (from the same stage-1 checkpoint)\n\n" + markdown_table(head, body)


def ablation_table(results: list[dict[str, Any]], rows: dict[str, CompareRow]) -> str:
    """Markdown table of the stage-2 rows of each ablated encoder by top_k and lambda, or "" without ablations."""
    defaults = {  # each id where it is defined: top_k in train.json, moe_loss_weight in finetune_moe.json
        **json.loads((CONFIGS / "train.json").read_text(encoding="utf-8")),
        **json.loads((CONFIGS / "finetune_moe.json").read_text(encoding="utf-8")),
    }
    ablated = {rows[r["row"]].settings["encoder"] for r in results if r["row"].startswith("ablation-")}
    body = []
    for result in results:
        row = rows[result["row"]]
        if row.stage1_row is None or row.settings["encoder"] not in ablated:
            continue
        top_k = row.settings.get("top_k", defaults["top_k"])
        weight = row.settings.get("moe_loss_weight", defaults["moe_loss_weight"])
        cells = [result["test_dice_mean"], result["test_dice_median"], result["test_iou_mean"], result["best_val_dice"]]
        body.append(
            [row.settings["encoder"], str(top_k), f"{weight:g}", *map(format_cell, cells), result["expert_usage"]]
        )
    if not body:
        return ""
    head = ["encoder", "top_k", "λ", "test Dice", "median Dice", "IoU", "best val Dice", "expert usage (last epoch)"]
    return "## MoE ablations (stage 2 from the same stage-1 checkpoint)\n\n" + markdown_table(head, body)


def budget_text(args: argparse.Namespace, test_images: int) -> str:
    """The summary's budget paragraph: training budget, data, threads, evaluation and latency measurement."""
    if args.minutes:
        stage2 = args.stage2_minutes or args.minutes / 4
        training = (
            f"Budget: every network {args.minutes:g} wall-clock minutes of training (`bundle.training.handlers.TimeBudget`: "
            "whole epochs, learning rate on a cosine over the time); LH-UTANet stage-2 rows spend "
            f"{stage2:g} of them in stage 2 on a stage-1 run of {args.minutes - stage2:g} minutes (the stage-1 rows); "
        )
    elif args.stage1_ckpt:
        training = (
            f"Budget: stage 1 is the given checkpoint `{args.stage1_ckpt}` (not trained here), which every stage-2 "
            f"row fine-tunes for {args.stage2_epochs} epochs"
            + (" (recipe (b): twice that)" if args.study else "")
            + "; "
        )
    else:
        training = (
            f"Budget: every network {args.epochs} stage-1 epochs; stage-2 rows add {args.stage2_epochs} epochs "
            + ("(recipe (b): twice that) " if args.study else "")
            + "fine-tuning the stage-1 checkpoint, with the row's seed; "
        )
    subset = (
        f"trained on {args.train_images} images (training + validation, validation split off them), "
        if args.train_images
        else ""
    )
    return (
        training
        + f"{args.image_size}×{args.image_size}, data split by seed {args.seed}, batch {args.batch_size}, {subset}"
        + f"{args.train_threads} CPU thread(s) per training process. "
        + f"Test metrics: `configs/evaluate.json` on the {test_images} test images at their original resolution "
        + "(mean over images; HD95 in pixels). CPU latency: batch 1 at the training size, "
        + f"{args.threads} thread(s), median of {LATENCY_ITERS} warm runs on {cpu_model()} ({platform.machine()}); "
        + "train minutes are wall-clock on the same machine, including data caching and validation."
    )


def write_summary(
    results: list[dict[str, Any]],
    rows: dict[str, CompareRow],
    args: argparse.Namespace,
    command: str,
    curves: dict[str, list[tuple[float, float]]],
) -> None:
    """Write results.csv, results.md, dice_vs_latency.png and validation_curves.png (``curves``: per row key,
    ``(training minutes, validation Dice)``) into ``args.output``."""
    output = Path(args.output)
    atomic_write_csv(output / "results.csv", COLUMNS, results)

    head = [
        "network",
        "params (M)",
        "GMACs",
        "CPU ms",
        "train min",
        "best val loss",
        "best val Dice",
        "test Dice",
        "IoU",
        "precision",
        "recall",
        "HD95 (px)",
    ]
    keys = ["network", "params_m", "gmacs", "cpu_latency_ms", "train_minutes", "best_val_loss", "best_val_dice"]
    keys += [f"test_{metric}_mean" for metric in METRICS]
    table = markdown_table(head, [[format_cell(result[key]) for key in keys] for result in results])
    medians = markdown_table(
        ["network", *(f"median {metric}" for metric in METRICS), "expert usage (last epoch, per gate)"],
        [
            [
                result["network"],
                *(format_cell(result[f"test_{metric}_median"]) for metric in METRICS),
                result["expert_usage"],
            ]
            for result in results
        ],
    )
    text = "\n\n".join(
        [
            f"# Model comparison on `{dataset_name(args.dataset_dir)}`",
            f"Command: `{command}`",
            budget_text(args, results[0]["test_images"]),
            table,
            medians,
            *filter(None, [ablation_table(results, rows), study_table(results, rows)]),
            "![test Dice against CPU latency](dice_vs_latency.png)",
            "![validation Dice against training minutes](validation_curves.png)",
        ]
    )
    atomic_write_text(output / "results.md", text + "\n")
    atomic_write(
        output / "dice_vs_latency.png",
        lambda tmp: plot_dice_vs_latency(results, tmp, f"{args.image_size}×{args.image_size}"),
    )
    atomic_write(output / "validation_curves.png", lambda tmp: plot_validation_curves(curves, tmp))
