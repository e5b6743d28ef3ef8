"""Plan a stage-1 training from the dataset: fingerprint it, choose input size, batch size, epochs and learning rate for
the device (and an optional time budget), and write the choices with their reasons as a train.json overlay.

The rules are in ``bundle/data/planning.py`` and docs/planning.md. Every choice stays overridable by the usual ids.
``--dataset_dir`` is a dataset folder or a datalist file; the masks' label values and formats are printed first, and
a dataset whose masks hold no foreground stops here in one line. With ``--minutes`` the plan also names the
cross-validation that fits the budget (plan#cross_validation), for ``scripts/train_folds.py --choose PLAN``.

Usage (from the repository root):
    python scripts/plan.py --dataset_dir ../shared/data/monuseg --output runs/monuseg/plan.json [--minutes 30]
    python scripts/plan.py --dataset_dir runs/mine/datalist.json --output runs/mine/plan.json
    python -m monai.bundle run --config_file "['configs/train.json','runs/monuseg/plan.json']" \\
        --dataset_dir ../shared/data/monuseg [--epochs 10]     # an id given here wins over the plan
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from bundle.atomic_files import atomic_write_json
from bundle.data.configuration_search import cross_validation_plan, search_command, with_cross_validation
from bundle.data.datasets import load_datalist, training_subset
from bundle.data.planning import fingerprint, log_plan, measure_seconds_per_step, plan_overlay, plan_training
from bundle.errors import run_script
from bundle.networks import DEFAULT_ENCODER, ENCODERS

TRAIN_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "train.json"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line; ``argv`` None reads ``sys.argv``."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--dataset_dir", required=True, help="dataset folder, in any layout train.json accepts, or a datalist .json"
    )
    parser.add_argument("--output", required=True, help="plan file to write (a JSON overlay for train.json)")
    parser.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--minutes", type=float, help="training time budget: caps the epochs, names the folds that fit")
    parser.add_argument("--encoder", default=DEFAULT_ENCODER, choices=sorted(ENCODERS))
    parser.add_argument("--val_fraction", type=float, default=0.2, help="as train.json's val_fraction")
    parser.add_argument("--seed", type=int, default=0, help="as train.json's split_seed")
    parser.add_argument("--train_images", type=int, help="as compare_models.py: plan for a subset of this size")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, object]:
    """Fingerprint, plan, log and write the plan file; return the overlay."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args(argv)
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    datalist = load_datalist(args.dataset_dir, args.val_fraction, args.seed)
    if args.train_images:
        datalist = training_subset(datalist, args.train_images, args.val_fraction, args.seed)
    labels = [pair["label"] for pair in datalist["training"] + datalist["validation"]]
    found = fingerprint(labels, training_images=len(datalist["training"]))
    logging.info(
        "label values: %s (%d distinct); mask formats: %s",
        ", ".join(map(str, found["label_values"])),
        found["distinct_label_values"],
        ", ".join(f"{name}: {count}" for name, count in found["mask_formats"].items()),
    )
    logging.info("fingerprint: %s", found)
    learning_rate = ENCODERS[args.encoder].learning_rate
    plan = plan_training(found, device, base_learning_rate=learning_rate)
    if args.minutes is not None:
        # timed on the normalisation train.json trains with
        network = {"encoder": args.encoder, "norm": json.loads(TRAIN_CONFIG.read_text(encoding="utf-8"))["norm"]}
        seconds = measure_seconds_per_step(network, plan["image_size"], plan["batch_size"], device)
        plan = plan_training(found, device, args.minutes, learning_rate, seconds)
    log_plan(plan)
    overlay = plan_overlay(found, plan, device)
    if args.minutes is not None:  # the folds, and the configurations they compare, that fit the budget
        timer = functools.partial(measure_seconds_per_step, device=device)
        section, reason = cross_validation_plan(found, plan, device, args.minutes, timer, args.encoder, network["norm"])
        command = search_command(args.output, args.dataset_dir, args.train_images)
        overlay = with_cross_validation(overlay, section, reason, command if section else "")
        logging.info("plan: cross_validation = %s%s", reason, f"; train it: {command}" if section else "")
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.output, overlay)
    logging.info("plan written to %s", Path(args.output).resolve())
    return overlay


if __name__ == "__main__":
    sys.exit(run_script(main))
