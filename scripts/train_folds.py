"""Cross-validation, as nnU-Net's five folds: train every fold of configs/train.json (``--fold K --num_folds N``) into
WORK_DIR/fold_K, evaluate each on its validation fold at the original resolution, and write the summary
(WORK_DIR/cv_summary.json and .md: validation Dice per fold and overall, training CPU time). WORK_DIR is then the
``--ckpt_dir`` of the fold ensemble for configs/inference.json and configs/evaluate.json.

Resumable: a finished fold is skipped, an interrupted one resumes from its resume checkpoint (``--resume true``), so
the same command continues a cross-validation. ``--processes N`` trains N folds at once (each ``--threads`` CPU
threads, default 1). Every other ``--id value`` goes to each training and evaluation, as on ``monai.bundle run``.

``--choose PLAN`` runs the configuration search that a plan names (``scripts/plan.py --minutes``, plan#cross_validation):
the folds of every candidate configuration into WORK_DIR/<candidate>, then writes the best by cross-validation Dice
into PLAN (bundle/data/configuration_search.py, docs/planning.md).

Usage (from the repository root):
    python scripts/train_folds.py --work_dir runs/cv --num_folds 5 --dataset_dir ../shared/data/monuseg \\
        --config_file "['configs/train.json','runs/plan.json']" [--processes 2]
    python -m monai.bundle run --config_file "['configs/train.json','configs/evaluate.json']" \\
        --dataset_dir ../shared/data/monuseg --ckpt_dir runs/cv          # the ensemble of the 5 folds on test
    python -m monai.bundle run --config_file configs/inference.json --ckpt_dir runs/cv --dataset_dir IMAGES
    python scripts/train_folds.py --choose runs/plan.json --work_dir runs/search --dataset_dir ../shared/data/monuseg
"""

from __future__ import annotations

import argparse
import ast
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from bundle.atomic_files import atomic_write_json
from bundle.data.configuration_search import CANDIDATE_IDS, choose_configuration, search_section
from bundle.data.folds import DEFAULT_NUM_FOLDS
from bundle.errors import run_script
from scripts.comparison.runner import CONFIGS, study_datalist
from scripts.folds.jobs import CrossValidation, run_jobs
from scripts.folds.summary import cross_validation_summary, write_summary

logger = logging.getLogger("train_folds")


def parse_args(argv: Sequence[str] | None) -> tuple[argparse.Namespace, dict[str, object]]:
    """The script's options and the ``--id value`` overrides for the bundle configs."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work_dir", required=True, help="folder of the folds (WORK_DIR/fold_K) and the summary")
    parser.add_argument("--num_folds", type=int, default=DEFAULT_NUM_FOLDS)
    parser.add_argument("--processes", type=int, default=1, help="folds trained at once, each in its own process")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads of each training and evaluation process")
    parser.add_argument(
        "--config_file", default=str(CONFIGS / "train.json"), help="train.json, or a list with overlays after it"
    )
    parser.add_argument("--choose", metavar="PLAN", help="cross-validate the candidates PLAN names; write the best")
    parser.add_argument("--train_images", type=int, help="as compare_models.py: a seeded subset of N images")
    parser.add_argument("--validation_as_test", action="store_true", help="as compare_models.py (ISIC 2017)")
    parser.add_argument("--test", action="store_true", help="also evaluate the fold ensemble on the test split")
    parser.add_argument(
        "--single", action="store_true", help="also train and test one model on train.json's split (WORK_DIR/single)"
    )
    args, rest = parser.parse_known_args(argv)
    if args.num_folds < 2 or args.processes < 1 or args.threads < 1:
        parser.error("--num_folds must be at least 2, --processes and --threads at least 1.")
    overrides: dict[str, object] = {}
    words = list(rest)
    while words:
        key = words.pop(0)
        if not key.startswith("--") or not words:
            parser.error(f"expected --id value pairs for the bundle configs, got {key!r}")
        overrides[key[2:]] = words.pop(0)
    reserved = sorted({"fold", "ckpt_dir", "output_dir", "resume", "eval_split"} & set(overrides))
    if reserved:
        parser.error(f"--{reserved[0]} is set by train_folds.py for each fold; leave it out.")
    datalist = study_datalist(args.validation_as_test, args.train_images)
    if datalist is not None:
        overrides["datalist"] = datalist
    return args, overrides


def config_files(value: str) -> list[str]:
    """``--config_file``: one path, or a Python/JSON list of paths."""
    value = value.strip()
    return [str(path) for path in ast.literal_eval(value)] if value.startswith("[") else [value]


def cross_validate(args: argparse.Namespace, cvs: dict[str, CrossValidation]) -> dict[str, dict]:
    """Train and evaluate every fold of every cross-validation in ``cvs``, ``--processes`` at a time; write and
    return each one's summary (with ``--test`` and ``--single``, their test evaluations too)."""
    jobs = [(f"{name} single", lambda cv=cv: cv.run_fold(None)) for name, cv in cvs.items()] if args.single else []
    jobs += [
        (f"{name} fold {k}", lambda cv=cv, k=k: cv.run_fold(k)) for name, cv in cvs.items() for k in range(cv.num_folds)
    ]
    run_jobs(jobs, args.processes)
    if args.test or args.single:
        tests = [(f"{name} ensemble test", lambda cv=cv: cv.evaluate("ensemble", "test")) for name, cv in cvs.items()]
        if args.single:
            tests += [(f"{name} single test", lambda cv=cv: cv.evaluate(None, "test")) for name, cv in cvs.items()]
        run_jobs(tests, args.processes)
    summaries = {}
    for name, cv in cvs.items():
        summaries[name] = cross_validation_summary(cv, single=args.single)
        markdown = write_summary(summaries[name], cv.work_dir)
        logger.info("%s: cross-validation Dice %.4f; summary %s", name, summaries[name]["overall"]["pooled"], markdown)
    return summaries


def choose(args: argparse.Namespace, overrides: dict[str, object], configs: list[str]) -> dict[str, dict]:
    """``--choose PLAN``: cross-validate each candidate of the plan, write the best into the plan."""
    plan_path = Path(args.choose)
    overlay = json.loads(plan_path.read_text(encoding="utf-8"))
    section = search_section(overlay, plan_path)
    if str(plan_path.resolve()) not in {str(Path(config).resolve()) for config in configs}:
        configs = [*configs, str(plan_path)]
    work_dir = Path(args.work_dir)
    cvs = {
        candidate["name"]: CrossValidation(
            work_dir / candidate["name"],
            configs,
            {**overrides, **{key: candidate[key] for key in CANDIDATE_IDS}},
            int(section["num_folds"]),
            args.threads,
        )
        for candidate in section["candidates"]
    }
    summaries = cross_validate(args, cvs)
    results = {name: summary["overall"]["pooled"] for name, summary in summaries.items()}
    chosen = choose_configuration(overlay, results, work_dir.resolve(), plan_path)
    atomic_write_json(plan_path, chosen)
    for name, dice in results.items():
        logger.info("candidate %s: cross-validation Dice %.4f", name, dice)
    logger.info("%s written to %s", chosen["plan"]["reasons"]["configuration"], plan_path)
    return summaries


def main(argv: Sequence[str] | None = None) -> dict[str, dict]:
    """Run the cross-validation (or, with ``--choose``, the configuration search); return the summaries by name."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args, overrides = parse_args(argv)
    configs = [str(Path(config).resolve()) for config in config_files(args.config_file)]
    args.work_dir = str(Path(args.work_dir).resolve())
    if args.choose:
        return choose(args, overrides, configs)
    cv = CrossValidation(Path(args.work_dir), configs, overrides, args.num_folds, args.threads)
    return cross_validate(args, {Path(args.work_dir).name: cv})


if __name__ == "__main__":
    sys.exit(run_script(main))
