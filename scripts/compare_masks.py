"""Agreement of two folders of masks written by ``configs/inference.json`` (e.g. two backends, or two versions).

Every ``*_mask.png`` under ``FIRST`` is compared with the file of the same relative path under ``SECOND``; prints the
mean and the minimum Dice (two empty masks agree: Dice 1) and the share of identical pixels, and exits 1 when a mask
is missing from ``SECOND`` or differs in size.

Usage:
    python scripts/compare_masks.py OUT_TORCH OUT_AUTO
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from bundle.errors import run_script
from PIL import Image


def dice(first: np.ndarray, second: np.ndarray) -> float:
    total = int(first.sum()) + int(second.sum())
    return 1.0 if total == 0 else 2.0 * int((first & second).sum()) / total


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("first", type=Path)
    parser.add_argument("second", type=Path)
    args = parser.parse_args(argv)
    scores, same, problems = [], [], []
    for path in sorted(args.first.rglob("*_mask.png")):
        other = args.second / path.relative_to(args.first)
        if not other.is_file():
            problems.append(f"{other}: missing")
            continue
        a, b = (np.asarray(Image.open(p)) > 0 for p in (path, other))
        if a.shape != b.shape:
            problems.append(f"{other}: shape {b.shape}, {path} has {a.shape}")
            continue
        scores.append(dice(a, b))
        same.append(float((a == b).mean()))
    if not scores:
        problems.append(f"no *_mask.png under {args.first}")
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    if scores:
        print(
            f"{len(scores)} masks: Dice mean {np.mean(scores):.5f}, min {np.min(scores):.5f}; identical pixels {np.mean(same):.5f}"
        )
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(run_script(main))
