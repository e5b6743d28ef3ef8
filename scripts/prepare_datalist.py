"""Write a MONAI datalist (training / validation / test, paths relative to the datalist) for an image/mask folder.

Examples:
    python scripts/prepare_datalist.py data/kvasir-seg --test-names data/kvasir-seg/pranet_test_names.txt
    # cross-centre validation: train on Kvasir-SEG, test on CVC-ClinicDB's non-test frames (its test list unused)
    python scripts/prepare_datalist.py data/kvasir-seg --test-names data/kvasir-seg/pranet_test_names.txt \
        --test-from data/cvc-clinicdb --output runs/kvasir-to-clinicdb/datalist.json
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from bundle.atomic_files import atomic_write_json
from bundle.data.datasets import find_image_mask_pairs, load_datalist
from bundle.data.splits import split_pairs
from bundle.errors import run_script


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset_dir", metavar="DIR", help="dataset folder (images/ + masks/, or ISIC flat style)")
    parser.add_argument("--test-names", metavar="FILE", help="text file, one image name per line, for the test split")
    parser.add_argument("--val-fraction", type=float, default=0.2, help="fraction of the non-test pairs for validation")
    parser.add_argument("--seed", type=int, default=0, help="seed of the train/validation shuffle")
    parser.add_argument(
        "--test-from",
        metavar="OTHER_DIR",
        help="cross-centre validation: test on OTHER_DIR's training + validation pairs (its own test split and "
        "DIR's test images stay unused)",
    )
    parser.add_argument("--output", metavar="PATH", help="output file (default: DIR/datalist.json)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the tool; returns the process exit code (0 on success, 1 on error)."""
    args = _parse_args(argv)
    root = os.path.abspath(args.dataset_dir)
    output = Path(args.output or os.path.join(root, "datalist.json")).absolute()
    if output.exists() and not args.overwrite:
        print(f"error: {output} already exists; pass --overwrite to replace it", file=sys.stderr)
        return 1
    test_names = None
    if args.test_names:
        test_names = Path(args.test_names).read_text(encoding="utf-8").splitlines()
    splits = split_pairs(find_image_mask_pairs(root), args.val_fraction, args.seed, test_names)
    if args.test_from:
        other = load_datalist(args.test_from, args.val_fraction, args.seed)
        splits["test"] = other["training"] + other["validation"]
    datalist = {
        key: [{k: os.path.relpath(v, output.parent) for k, v in pair.items()} for pair in items]
        for key, items in splits.items()
    }
    atomic_write_json(output, datalist)
    for key, items in datalist.items():
        print(f"{key}: {len(items)}")
    print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    sys.exit(run_script(main))
