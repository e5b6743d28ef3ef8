"""Check every image/mask pair of a dataset folder before training (after nnU-Net's dataset integrity check).

Usage:
    python scripts/check_data.py DIR

Reads each pair that training would use (``DIR/datalist.json``, else the discovered ``images/`` + ``masks/``
or ISIC-style pairs) and prints a report: missing images or masks, unreadable files, image/mask size
mismatches, masks outside the binary/JPEG-noise band, duplicate names (hard errors) and empty masks
(counted). Exits 1 when there is a hard error, 0 otherwise. Training runs the same check at its start
(id ``check_data``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from bundle.data.check import check_dataset


def main(argv: Sequence[str] | None = None) -> int:
    """Run the check; returns the process exit code (0: no hard error, 1: hard errors or no dataset)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset_dir", metavar="DIR", help="dataset folder, as --dataset_dir of the bundle")
    args = parser.parse_args(argv)
    try:
        report = check_dataset(args.dataset_dir)
    except (OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(report)
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
