"""Checkpoint ensembles (``ckpt_paths``): Dice and images/s of folder inference on the PraNet test splits of
Kvasir-SEG (100) and CVC-ClinicDB (62), each checkpoint alone and their ensemble (``docs/benchmark_ensemble.md``).

Masks come from ``configs/inference.json`` with its defaults (backend auto, TTA flips+scales); Dice per image against
the ground-truth mask (foreground > 127), then the mean per split. Images/s: the evaluator's run over both splits.

Usage (from the repository root)::

    python -m scripts.bench.ensemble [--ckpt models/model.pt --ckpt models/stage1/model.pt] [--no-write]
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from bundle.errors import MissingFileError, run_script
from monai.bundle import ConfigParser
from PIL import Image
from scripts.doc_command import relative_command

from .measure import cpu_model, markdown_table, publish

REPO_ROOT = Path(__file__).resolve().parents[2]
DOC = REPO_ROOT / "docs" / "benchmark_ensemble.md"
DATA = REPO_ROOT.parent / "shared" / "data"
SPLITS = {"Kvasir-SEG": DATA / "kvasir-seg", "CVC-ClinicDB": DATA / "cvc-clinicdb"}


def test_pairs(root: Path) -> list[tuple[Path, Path]]:
    """(image, mask) of each name in ``root/pranet_test_names.txt`` (names with or without their suffix)."""
    pairs = []
    for name in (root / "pranet_test_names.txt").read_text(encoding="utf-8").split():
        stem = Path(name).stem if Path(name).suffix else name
        image = next((root / "images").glob(f"{stem}.*"))
        pairs.append((image, next((root / "masks").glob(f"{stem}.*"))))
    return pairs


def dice(prediction: np.ndarray, truth: np.ndarray) -> float:
    total = prediction.sum() + truth.sum()
    return 1.0 if total == 0 else float(2 * (prediction & truth).sum() / total)


def evaluate(ckpt_paths: Sequence[str], folders: dict[str, Path], tmp: Path) -> tuple[dict[str, float], float]:
    """Mean Dice per split and images/s of folder inference with ``ckpt_paths`` (one: that checkpoint alone)."""
    scores, seconds, images = {}, 0.0, 0
    for split, folder in folders.items():
        output = tmp / f"{len(ckpt_paths)}-{Path(ckpt_paths[-1]).parent.name}-{split}"
        parser = ConfigParser()
        parser.read_config(str(REPO_ROOT / "configs" / "inference.json"))
        overrides = {"dataset_dir": str(folder), "output_dir": str(output), "ckpt_path": ckpt_paths[0]}
        parser.update({**overrides, "ckpt_paths": list(ckpt_paths) if len(ckpt_paths) > 1 else []})
        parser.update({"onnx_cache_dir": str(tmp / "onnx"), "device": "$torch.device('cpu')"})
        evaluator = parser.get_parsed_content("evaluator")  # the one-off ONNX exports happen here, not timed
        start = time.perf_counter()
        evaluator.run()
        seconds += time.perf_counter() - start
        values = []
        for row in evaluator.state.report:
            truth = np.asarray(Image.open(folder / ".truth" / f"{Path(row['path']).stem}.png")) > 127
            values.append(dice(np.asarray(Image.open(output / row["mask"])) > 0, truth))
        scores[split], images = float(np.mean(values)), images + len(values)
    return scores, images / seconds


def link_splits(tmp: Path) -> dict[str, Path]:
    """A folder per split: its test images linked, and the ground truth as grey PNGs in ``.truth/`` (hidden, so
    that folder inference leaves it out)."""
    folders = {}
    for split, root in SPLITS.items():
        folder = tmp / split
        (folder / ".truth").mkdir(parents=True)
        for image, mask in test_pairs(root):
            (folder / image.name).symlink_to(image.resolve())
            truth = np.asarray(Image.open(mask).convert("L"))
            Image.fromarray(truth).save(folder / ".truth" / f"{image.stem}.png")
        folders[split] = folder
    return folders


def report(checkpoints: Sequence[str]) -> str:
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="ensemble-") as name:
        tmp = Path(name)
        folders = link_splits(tmp)
        runs = {path: evaluate([path], folders, tmp) for path in checkpoints}
        runs[" + ".join(checkpoints)] = evaluate(list(checkpoints), folders, tmp)
    best = {split: max(runs[path][0][split] for path in checkpoints) for split in SPLITS}
    fastest = max(runs[path][1] for path in checkpoints)
    body = [
        [label, *(f"{scores[split]:.4f}" for split in SPLITS), *(f"{scores[s] - best[s]:+.4f}" for s in SPLITS)]
        + [f"{speed:.1f}", f"{fastest / speed:.2f}×"]
        for label, (scores, speed) in runs.items()
    ]
    header = ["checkpoints", *(f"{s} Dice" for s in SPLITS), *(f"{s} − best single" for s in SPLITS)]
    table = markdown_table(header + ["images/s", "time × fastest single"], body)
    date = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    command = relative_command(
        ["python", "-m", "scripts.bench.ensemble"], [w for p in checkpoints for w in ("--ckpt", p)]
    )
    return f"""_Generated by `{command}` — do not edit by hand._

# Checkpoint ensembles (`ckpt_paths`)

- CPU: {cpu_model()} ({os.cpu_count()} logical cores), torch {torch.__version__}, {torch.get_num_threads()} threads
- 1-min load average at start / end: {load:.2f} / {os.getloadavg()[0]:.2f} (other processes slow the images/s)
- Date: {date}

`configs/inference.json` defaults (backend auto, TTA flips+scales, threshold 0.5) on the PraNet test splits
(Kvasir-SEG 100, CVC-ClinicDB 62 images); mean Dice per image against the ground truth. The ensemble averages the
checkpoints' probabilities (MONAI `MeanEnsemble`) at every TTA member, so it costs one forward per checkpoint.

{table}
"""


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt", action="append", help="a checkpoint (twice or more)")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    checkpoints = args.ckpt or ["models/model.pt", "models/stage1/model.pt"]
    if len(checkpoints) < 2:
        parser.error("an ensemble needs two --ckpt or more")
    missing = [path for path in checkpoints if not Path(path).is_file()]
    if missing:
        raise MissingFileError(f"checkpoint(s) not found: {', '.join(missing)}; pass --ckpt FILE")
    return publish(report(checkpoints), DOC, not args.no_write)


if __name__ == "__main__":
    sys.exit(run_script(main))
