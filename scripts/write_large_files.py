"""Write ``large_files.yml``: the shipped weights with their sha256, after checking the model-zoo size cap.

The files ship in this repository (no download URL). Run it after replacing any of them; the test suite
checks that the hashes match the files.

Usage (from the repository root):
    python scripts/write_large_files.py [--files models/model.pt models/stage1/model.pt models/model.ts models/model.int8.onnx]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import yaml
from bundle.atomic_files import atomic_write_text, sha256_of
from bundle.errors import run_script

REPO_ROOT = Path(__file__).resolve().parents[1]


SHIPPED = ("models/model.pt", "models/stage1/model.pt", "models/model.ts", "models/model.int8.onnx")
SIZE_CAP_MB = 25  # the MONAI model zoo's limit per file
HEADER = "# Weights shipped in this repository, with their sha256. Written by scripts/write_large_files.py.\n"


def large_files_entries(root: Path, files: Sequence[str]) -> list[dict[str, str]]:
    """``{path, hash_val, hash_type}`` per file; ValueError naming a file that is missing or over the cap."""
    entries = []
    for name in files:
        path = root / name
        if not path.is_file():
            raise ValueError(f"{path} does not exist: train and export the model first (docs/README.md)")
        size_mb = path.stat().st_size / 1e6
        if size_mb > SIZE_CAP_MB:
            raise ValueError(f"{path} is {size_mb:.1f} MB, over the model zoo's {SIZE_CAP_MB} MB cap per file")
        entries.append({"path": name, "hash_val": sha256_of(path), "hash_type": "sha256"})
    return entries


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", nargs="+", default=list(SHIPPED), help="shipped files, relative to the root")
    parser.add_argument("--bundle-root", default=str(REPO_ROOT), help="bundle folder (default: this repo)")
    args = parser.parse_args(argv)
    root = Path(args.bundle_root).resolve()
    try:
        entries = large_files_entries(root, args.files)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    atomic_write_text(root / "large_files.yml", HEADER + yaml.safe_dump({"large_files": entries}, sort_keys=False))
    for entry in entries:
        print(f"{entry['hash_val']}  {entry['path']}")
    return 0


if __name__ == "__main__":
    sys.exit(run_script(main))
