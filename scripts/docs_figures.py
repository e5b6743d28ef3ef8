"""Figures of the model card (docs/README.md).

Runs the shipped model through the real folder-inference command on the 100 Kvasir-SEG PraNet test images,

    python -m monai.bundle run --config_file configs/inference.json --dataset_dir IN --output_dir OUT

scores each mask against its reference (JPEG masks binarised with > 127) and draws the best, median and worst
image by Dice into ``docs/figures/contact_sheet.png``, with the per-image Dice in ``contact_sheet_dice.csv``.
The Dice-against-latency plot the card shows is compare_models.py's (``LATENCY_PLOT``); this script only checks
that it is there. Without ``../shared/data`` it prints why and exits 0.

    python scripts/docs_figures.py [--data_dir ../shared/data/kvasir-seg] [--tta none]
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from bundle.errors import run_script
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO_ROOT.parent / "shared" / "data" / "kvasir-seg"
FIGURES = REPO_ROOT / "docs" / "figures"
LATENCY_PLOT = REPO_ROOT / "docs" / "results" / "equal-time" / "dice_vs_latency.png"
THUMB = 200  # thumbnail width in pixels


def binary(path: Path) -> np.ndarray:
    """A mask file as a boolean (H, W) array: grey value > 127 (JPEG masks carry compression noise)."""
    return np.asarray(Image.open(path).convert("L")) > 127


def dice(pred: np.ndarray, ref: np.ndarray) -> float:
    """Dice of two boolean masks; 1.0 when both are empty."""
    total = int(pred.sum()) + int(ref.sum())
    return 1.0 if total == 0 else 2.0 * int(np.logical_and(pred, ref).sum()) / total


def test_names(data_dir: Path) -> list[str]:
    """The PraNet test split: one base name per line of ``pranet_test_names.txt``."""
    text = (data_dir / "pranet_test_names.txt").read_text(encoding="utf-8")
    return [Path(line.strip()).stem for line in text.splitlines() if line.strip()]


def run_inference(images: list[Path], out_dir: Path, tta: str | None) -> float:
    """Link ``images`` into a temp folder and run the bundle's folder inference on it; returns wall seconds."""
    in_dir = out_dir.parent / "images"
    in_dir.mkdir(parents=True)
    for image in images:
        (in_dir / image.name).symlink_to(image)
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", "configs/inference.json"]
    cmd += ["--dataset_dir", str(in_dir), "--output_dir", str(out_dir)]
    cmd += ["--tta", tta] if tta else []
    print("running:", " ".join(cmd[1:]), flush=True)
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True)
    if done.returncode:
        sys.stderr.write(done.stderr[-4000:])
        raise SystemExit(f"inference failed (exit {done.returncode})")
    return time.perf_counter() - start


def score(names: list[str], data_dir: Path, pred_dir: Path) -> list[tuple[str, float]]:
    """Per-image Dice of the masks in ``pred_dir`` (``NAME_mask.png``) against ``masks/NAME.jpg``."""
    scores = []
    for name in names:
        pred, ref = binary(pred_dir / f"{name}_mask.png"), binary(data_dir / "masks" / f"{name}.jpg")
        if pred.shape != ref.shape:
            raise ValueError(f"{name}: predicted mask {pred.shape} but reference {ref.shape}")
        scores.append((name, dice(pred, ref)))
    return scores


def thumbnail(array: np.ndarray) -> np.ndarray:
    """``array`` (H, W[, 3]) resized to THUMB pixels wide."""
    image = Image.fromarray(array)
    height = max(1, round(image.height * THUMB / image.width))
    return np.asarray(image.resize((THUMB, height), Image.BILINEAR))


def overlay(image: np.ndarray, pred: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """The image with agreement in yellow, reference only in green and model only in magenta."""
    out = image.astype(np.float32) * 0.5
    for mask, colour in ((pred & ref, (255, 220, 0)), (ref & ~pred, (0, 200, 0)), (pred & ~ref, (230, 0, 230))):
        out[mask] = 0.4 * image[mask] + 0.6 * np.array(colour, np.float32)
    return out.clip(0, 255).astype(np.uint8)


def contact_sheet(cases, data_dir: Path, pred_dir: Path, output: Path, caption: str) -> None:
    """Draw one row per (label, name, dice) case: image, reference, model mask, overlay."""
    import matplotlib
    import matplotlib.patches

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    titles = ("image", "reference mask", "model mask", "overlay")
    fig, axes = plt.subplots(len(cases), 4, figsize=(8.4, 2.3 * len(cases)), squeeze=False)
    for row, (label, name, value) in enumerate(cases):
        image = np.asarray(Image.open(data_dir / "images" / f"{name}.jpg").convert("RGB"))
        ref = binary(data_dir / "masks" / f"{name}.jpg")
        pred = binary(pred_dir / f"{name}_mask.png")
        panels = (image, ref.astype(np.uint8) * 255, pred.astype(np.uint8) * 255, overlay(image, pred, ref))
        for col, panel in enumerate(panels):
            ax = axes[row][col]
            ax.imshow(thumbnail(panel), cmap="gray" if panel.ndim == 2 else None, vmin=0, vmax=255)
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(titles[col], fontsize=9)
        axes[row][0].set_ylabel(f"{label}\nDice {value:.3f}", fontsize=9)
    fig.suptitle(caption, fontsize=8)
    legend = [("both", (1.0, 0.86, 0.0)), ("reference only", (0.0, 0.78, 0.0)), ("model only", (0.9, 0.0, 0.9))]
    handles = [matplotlib.patches.Patch(color=colour, label=label) for label, colour in legend]
    fig.legend(handles=handles, loc="lower right", ncol=3, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output, dpi=80)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_dir", type=Path, default=DEFAULT_DATA, help="Kvasir-SEG folder")
    parser.add_argument("--output", type=Path, default=FIGURES / "contact_sheet.png")
    parser.add_argument("--tta", help="passed to inference.json (default: its own default, flips+scales)")
    parser.add_argument("--pred_dir", type=Path, help="score existing masks instead of running inference")
    args = parser.parse_args(argv)

    if not (args.data_dir / "pranet_test_names.txt").is_file():
        print(f"skipped: {args.data_dir} (Kvasir-SEG with pranet_test_names.txt) is absent; see the data README")
        return 0
    if not LATENCY_PLOT.is_file():
        print(f"warning: {LATENCY_PLOT.relative_to(REPO_ROOT)} is missing; compare_models.py writes it")
    names = test_names(args.data_dir)
    with tempfile.TemporaryDirectory() as tmp:
        pred_dir, seconds = args.pred_dir, None
        if pred_dir is None:
            pred_dir = Path(tmp) / "masks"
            seconds = run_inference([args.data_dir / "images" / f"{n}.jpg" for n in names], pred_dir, args.tta)
        scores = sorted(score(names, args.data_dir, pred_dir), key=lambda item: item[1], reverse=True)
        values = np.array([value for _, value in scores])
        tta = args.tta or "flips+scales (default)"
        mid = len(scores) // 2
        cases = [("best", *scores[0]), (f"median (rank {mid + 1})", *scores[mid]), ("worst", *scores[-1])]
        caption = (
            f"Kvasir-SEG PraNet test ({len(scores)} images), models/model.pt, inference.json tta {tta}: "
            f"mean Dice {values.mean():.3f}, median {np.median(values):.3f}"
        )
        contact_sheet(cases, args.data_dir, pred_dir, args.output, caption)
    table = args.output.with_name(args.output.stem + "_dice.csv")
    with table.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["image", "dice"])
        writer.writerows((name, f"{value:.4f}") for name, value in scores)
    print(caption)
    for label, name, value in cases:
        print(f"{label}: {name} Dice {value:.4f}")
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs"
    timing = f", inference {seconds:.0f} s wall" if seconds is not None else ""
    print(f"wrote {args.output} ({args.output.stat().st_size // 1024} KB) and {table}; {machine}{timing}")
    return 0


if __name__ == "__main__":
    sys.exit(run_script(main))
