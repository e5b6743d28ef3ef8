"""Compare LH-UTANet with MONAI networks, and its MoE settings, trained and evaluated through the SAME bundle configs.

Every network is trained with ``configs/train.json`` (LH-UTANet stage 2: plus ``configs/finetune_moe.json``)
and evaluated with ``configs/evaluate.json`` on the dataset's test split at its original resolution; only
``network_def`` (MONAI peers: a one-key overlay written into the run folder) or the LH-UTANet ids
``encoder`` / ``use_moe`` / ``top_k`` / ``moe_loss_weight`` differ. All runs share one budget: ``image_size``,
``seed``, stage-1 ``epochs`` and stage-2 ``stage2_epochs``.

Rows (``--rows``, default all):
    lh-resnet34, lh-mobilenetv2                 LH-UTANet stage 1 only
    lh-resnet34-moe, lh-mobilenetv2-moe         stage 1 + stage 2 (top_k 2, lambda 0.01), from the stage-1 run
    basicunet, unet, attentionunet, flexibleunet-resnet34, swinunetr   MONAI peers (scripts/benchmark.py)
    ablation-<enc>-top{1,3,4}, ablation-<enc>-lambda{0,0.1}    stage-2 ablations (with ``--ablations <enc>``)
    study-<enc>-<recipe>-s<seed>                stage-2 recipes (STAGE2_RECIPES) x ``--study_seeds`` (with ``--study <enc>``)

``--plan PLAN.json`` (written by ``scripts/plan.py``) trains every row at the plan's size, batch and epochs, and the
LH-UTANet stage-1 rows at its learning rate: the self-configured comparison of docs/planning.md.

``--stage1_ckpt PATH`` makes every stage-2 row fine-tune that checkpoint (e.g. the shipped, converged
``models/stage1/model.pt``) instead of the one its stage-1 row trains.

Each row's run folder under ``--work_dir`` keeps its checkpoints, logs and ``result.json``; a re-run reuses
finished rows, so an interrupted comparison continues where it stopped. The summary is written to
``--output``: ``results.csv``, ``results.md`` (tables, budget, commands), ``dice_vs_latency.png`` and
``validation_curves.png`` (validation Dice against training minutes).

Usage (from the repository root):
    python scripts/compare_models.py --dataset_dir ../shared/data/kvasir-seg --work_dir runs/compare/kvasir \\
        --output docs/results/kvasir --image_size 128 --epochs 10 --stage2_epochs 5 --ablations mobilenetv2
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from bundle.data.datasets import dataset_location
from scripts.bench.peers import LH_ENCODERS
from scripts.comparison.catalogue import CompareRow, build_rows
from scripts.comparison.recipes import recipe_rows
from scripts.comparison.report import write_summary
from scripts.comparison.runner import Comparison
from scripts.doc_command import relative_command


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line; ``argv`` None reads ``sys.argv``."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--dataset_dir", required=True, help="dataset folder (bundle layout: images/, masks/, split file) or datalist"
    )
    parser.add_argument(
        "--work_dir", required=True, help="folder for the run folders (checkpoints, logs, cached results)"
    )
    parser.add_argument("--output", required=True, help="folder for results.csv, results.md and the two plots")
    parser.add_argument(
        "--validation_as_test",
        action="store_true",
        help="test on the dataset's validation split and select checkpoints on a split of training (ISIC 2017)",
    )
    parser.add_argument(
        "--train_images",
        type=int,
        help="train and select checkpoints on this many images of training + validation (small-data studies)",
    )
    parser.add_argument("--rows", help="comma-separated row keys (default: all)")
    parser.add_argument(
        "--variants", action="store_true", help="add the MobileNetV2 stage-1 variants (STAGE1_VARIANTS) as rows"
    )
    parser.add_argument(
        "--ablations", default="", help="comma-separated encoders to run the top_k / lambda ablations for"
    )
    parser.add_argument(
        "--study", default="", help="comma-separated encoders to run the stage-2 recipe study for (STAGE2_RECIPES)"
    )
    parser.add_argument("--study_seeds", default="0,1,2", help="comma-separated seeds of every study recipe")
    parser.add_argument(
        "--recipes", action="store_true", help="add the cross-centre training recipes (CROSS_CENTRE_RECIPES) as rows"
    )
    parser.add_argument(
        "--stage1_ckpt", help="stage-1 checkpoint that every stage-2 row fine-tunes (default: its stage-1 row's)"
    )
    parser.add_argument(
        "--plan",
        help="a scripts/plan.py overlay: its image_size, batch_size and epochs replace --image_size, --batch_size and "
        "--epochs; the LH-UTANet stage-1 rows also train at its learning_rate (MONAI peers keep their own)",
    )
    parser.add_argument("--image_size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=10, help="stage-1 epochs of every network")
    parser.add_argument("--stage2_epochs", type=int, default=5, help="stage-2 epochs of the MoE rows")
    parser.add_argument(
        "--minutes",
        type=float,
        help="equal-time comparison: every network trains this many wall-clock minutes (LH-UTANet stage 1 + 2 "
        "together), learning rate annealed over the time, instead of --epochs / --stage2_epochs",
    )
    parser.add_argument("--stage2_minutes", type=float, help="with --minutes: stage 2's share (default a quarter)")
    parser.add_argument("--val_interval", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--num_workers", type=int, default=2)
    parser.add_argument(
        "--train_threads",
        type=int,
        default=1,
        help="CPU threads of each training and evaluation process (1 suits two comparisons side by side)",
    )
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for the latency measurement")
    parser.add_argument(
        "--train_only",
        action="store_true",
        help="train and evaluate the rows into --work_dir, measure and write nothing else: for parts of one "
        "comparison run side by side; the same command without it then writes the summary from the cached rows",
    )
    return parser.parse_args(argv)


def apply_plan(args: argparse.Namespace, rows: dict[str, CompareRow]) -> dict[str, CompareRow]:
    """With ``--plan``: set the budget of ``args`` from the plan file and return ``rows`` with the plan's learning rate
    in every LH-UTANet stage-1 row that sets none of its own; without it, ``rows`` unchanged."""
    if not args.plan:
        return rows
    plan = json.loads(Path(args.plan).read_text(encoding="utf-8"))
    height, width = plan["image_size"]
    if height != width:
        raise SystemExit(f"--plan {args.plan}: image_size {height}x{width}; compare_models trains square inputs.")
    args.image_size, args.batch_size, args.epochs = height, plan["batch_size"], plan["epochs"]
    return {
        key: (
            replace(row, settings={"learning_rate": plan["learning_rate"], **row.settings})
            if row.stage1_row is None and "network_def" not in row.overlay
            else row
        )
        for key, row in rows.items()
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Run the chosen rows (cached ones are reused), then measure their costs and write the summary; exit code 0."""
    args = parse_args(argv)
    dataset_location(args.dataset_dir)  # a missing dataset fails here, in one line, before any row trains
    ablations, study = ([e for e in value.split(",") if e] for value in (args.ablations, args.study))
    unknown = sorted(set(ablations + study) - set(LH_ENCODERS))
    if unknown:
        raise SystemExit(f"--ablations/--study: unknown encoder(s) {unknown}; choose from {list(LH_ENCODERS)}")
    rows = build_rows(ablations, study, [int(seed) for seed in args.study_seeds.split(",") if seed], args.variants)
    if args.recipes:
        rows.update(recipe_rows())
    rows = apply_plan(args, rows)
    keys = args.rows.split(",") if args.rows else list(rows)
    unknown = sorted(set(keys) - set(rows))
    if unknown:
        raise SystemExit(f"--rows: unknown row(s) {unknown}; choose from {list(rows)}")
    comparison = Comparison(args, rows)
    results = [comparison.result(key) for key in keys]
    if args.train_only:
        return 0
    # costs are measured afresh, all rows together once training is over, so no training run disturbs the latencies
    results = [{**result, **comparison.measure(key)} for key, result in zip(keys, results)]
    command = relative_command(["python", "scripts/compare_models.py"], argv if argv is not None else sys.argv[1:])
    continued = {rows[key].stage1_row for key in keys}  # a stage-2 row's curve already starts with its stage 1
    curves = {
        key: comparison.validation_curve(key)
        for key in keys
        if not key.startswith(("ablation-", "study-")) and key not in continued
    }
    write_summary(results, rows, args, command, curves)
    print((Path(args.output) / "results.md").read_text(encoding="utf-8"))
    return 0
