"""The polyp literature's standard table for the model card: our checkpoints beside the published networks.

For each ``--model NAME=CHECKPOINT`` it runs ``evaluate.json`` (default inference of ``inference.json``: its TTA, each
image at its original size) on the PraNet test splits of Kvasir-SEG (100) and CVC-ClinicDB (62), and measures the
network's parameters, GMACs and CPU latency (ONNX Runtime, 224×224, batch 1, ``--threads``). The published rows
(U-Net, U-Net++, PraNet, Polyp-PVT) are the papers' figures on the same protocol. The table replaces the block between
``<!-- standard-table -->`` and ``<!-- /standard-table -->`` in ``--card``.

    python scripts/standard_table.py --model 0.8.0=models/model.pt --data ../shared/data --card docs/README.md

Evaluations are cached under ``--work_dir`` (one folder per model and set), so a second model reuses the first's.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import torch
from bundle.training.checkpoints import network_from_checkpoint
from scripts.bench.measure import cpu_model, measure_cost, measure_onnx_latency
from scripts.doc_command import relative_command

REPO_ROOT = Path(__file__).resolve().parents[1]
SETS = {"Kvasir 100": "kvasir-seg", "ClinicDB 62": "cvc-clinicdb"}
PUBLISHED = [  # network, Kvasir Dice / IoU, ClinicDB Dice / IoU, training (PraNet, MICCAI 2020; Polyp-PVT, 2023)
    ("U-Net", (0.818, 0.746), (0.823, 0.755), "GPU, ImageNet-free"),
    ("U-Net++", (0.821, 0.743), (0.794, 0.729), "GPU"),
    ("PraNet (Res2Net-50)", (0.898, 0.840), (0.899, 0.849), "GPU, ImageNet, 352 px"),
    ("Polyp-PVT (PVTv2)", (0.917, 0.864), (0.937, 0.889), "GPU, ImageNet, 352 px"),
]
MARKERS = ("<!-- standard-table -->", "<!-- /standard-table -->")


def evaluate(name: str, ckpt: Path, folder: Path, work_dir: Path) -> dict[str, float]:
    """``evaluate.json``'s summary (mean Dice, IoU) of checkpoint ``ckpt`` on ``folder``'s test split, cached."""
    output = work_dir / name / folder.name
    summary = output / "metrics_summary.json"
    if not summary.is_file():
        command = [sys.executable, "-m", "monai.bundle", "run", "--config_file"]
        command += ["['configs/train.json','configs/evaluate.json']", "--dataset_dir", str(folder)]
        command += ["--ckpt_path", str(ckpt), "--output_dir", str(output), "--tta", default_tta()]
        subprocess.run(command, cwd=REPO_ROOT, check=True, capture_output=True)
    metrics = json.loads(summary.read_text(encoding="utf-8"))["metrics"]
    return {"dice": metrics["dice"]["mean"], "iou": metrics["iou"]["mean"]}


def default_tta() -> str:
    """``inference.json``'s test-time augmentation: the default inference that the table reports."""
    return json.loads((REPO_ROOT / "configs" / "inference.json").read_text(encoding="utf-8"))["tta"]


def costs(ckpt: Path, threads: int) -> tuple[float, float, float]:
    """(parameters in millions, GMACs, ONNX Runtime ms) of the network of ``ckpt`` at 224×224, batch 1."""
    network = network_from_checkpoint(ckpt)
    params, gmacs = measure_cost(network, (1, 3, 224, 224))
    torch.set_num_threads(threads)
    return params, gmacs, measure_onnx_latency(network, (1, 3, 224, 224), iters=50, threads=threads)


def table(ours: dict[str, dict], measured: dict[str, tuple[float, float, float]]) -> str:
    """The markdown table: our rows (bold Dice), then the published ones."""
    lines = ["| network | Kvasir 100 Dice / IoU | ClinicDB 62 Dice / IoU | params (M) | GMACs | CPU ms | training |"]
    lines.append("|---|---|---|---|---|---|---|")
    for name, scores in ours.items():
        cells = [f"**{scores[s]['dice']:.3f}** / {scores[s]['iou']:.3f}" for s in SETS]
        params, gmacs, ms = measured[name]
        lines.append(f"| {name} | {cells[0]} | {cells[1]} | {params:.2f} | {gmacs:.2f} | {ms:.1f} | CPU, no ImageNet |")
    for name, kvasir, clinic, training in PUBLISHED:
        lines.append(
            f"| {name} | {kvasir[0]:.3f} / {kvasir[1]:.3f} | {clinic[0]:.3f} / {clinic[1]:.3f} | — | — | — | {training} |"
        )
    return "\n".join(lines)


def replace_block(card: str, block: str) -> str:
    """``card`` with the text between :data:`MARKERS` replaced by ``block``; raises when a marker is missing."""
    start, end = (card.find(marker) for marker in MARKERS)
    if start < 0 or end < start:
        raise ValueError(f"the card has no {MARKERS[0]} ... {MARKERS[1]} block to replace")
    return card[: start + len(MARKERS[0])] + "\n" + block + "\n" + card[end:]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", required=True, metavar="NAME=CHECKPOINT", help="a row of ours")
    parser.add_argument("--data", default="../shared/data", help="folder holding kvasir-seg/ and cvc-clinicdb/")
    parser.add_argument("--card", default="docs/README.md", help="the model card whose table block is replaced")
    parser.add_argument("--work_dir", default="runs/standard-table", help="cache of the evaluations")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads of the latency measurement")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    models = dict(entry.split("=", 1) for entry in args.model)
    data, work_dir = Path(args.data), Path(args.work_dir)
    for name, ckpt in models.items():
        if not Path(ckpt).is_file():
            raise FileNotFoundError(f"--model {name}={ckpt}: no such checkpoint")
    ours = {
        name: {s: evaluate(name, Path(ckpt), data / f, work_dir) for s, f in SETS.items()}
        for name, ckpt in models.items()
    }
    measured = {name: costs(Path(ckpt), args.threads) for name, ckpt in models.items()}
    when = datetime.date.today().isoformat()
    command = relative_command(["python", "scripts/standard_table.py"], argv if argv is not None else sys.argv[1:])
    note = (
        f"*Ours: `{command}` ({cpu_model()}, {os.cpu_count()} cores, {platform.system()}, {when}): default inference, "
        "each image at its original size; CPU ms in ONNX Runtime at 224×224, batch 1. Published: PraNet (MICCAI 2020), "
        "Polyp-PVT (CAAI AIR 2023), same protocol.*"
    )
    card = Path(args.card)
    card.write_text(
        replace_block(card.read_text(encoding="utf-8"), table(ours, measured) + "\n\n" + note), encoding="utf-8"
    )
    print(table(ours, measured))


if __name__ == "__main__":
    main()
