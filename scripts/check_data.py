"""Check every image/mask pair of a dataset folder before training (after nnU-Net's dataset integrity check).

Usage:
    python scripts/check_data.py DIR            # or DIR/datalist.json, or any datalist file

Reads each pair that training would use (the datalist file given, ``DIR/datalist.json``, else the discovered
``images/`` + ``masks/`` or ISIC-style pairs) as training reads them (``bundle/data/masks.py``) and prints a report:
the label values and mask formats found; missing images or masks, masks without an image, unreadable files,
image/mask size mismatches, masks outside the binary/JPEG-noise band, colour-coded masks, duplicate names and no
foreground in any mask (hard errors); all-background masks (listed, allowed). Exits 1 when there is a hard error,
0 otherwise. Training runs the same check at its start (id ``check_data``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from bundle.data.check import check_dataset
from bundle.errors import run_script


def main(argv: Sequence[str] | None = None) -> int:
    """Run the check; returns the process exit code (0: no hard error, 1: hard errors or no dataset)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset_dir", metavar="DIR", help="dataset folder or datalist file, as --dataset_dir")
    report = check_dataset(parser.parse_args(argv).dataset_dir)
    print(report)
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(run_script(main))
