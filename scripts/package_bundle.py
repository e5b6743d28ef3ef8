"""Build a model-zoo-ready zip of the bundle: ``lh_utanet/`` with configs, docs, code, license and (optionally) weights.

Before zipping it checks that ``configs/metadata.json`` ``version`` is the newest entry of its ``changelog``
and, with ``--include-weights``, that ``models/model.pt`` fits ``network_def`` in ``configs/inference.json``
(MONAI Label loads it non-strictly, so a mismatch would otherwise go unnoticed).

Usage (from the repository root):
    python scripts/package_bundle.py [--output dist/lh_utanet_bundle-<version>.zip] [--include-weights] [--overwrite]
"""

from __future__ import annotations

import argparse
import json
import sys
import zipfile
from collections.abc import Sequence
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from bundle.io import atomic_write  # noqa: E402

BUNDLE_NAME = "lh_utanet"
REQUIRED = ("configs/metadata.json", "configs/inference.json", "configs/train.json", "docs/README.md", "LICENSE")
WEIGHTS, LARGE_FILES = "models/model.pt", "large_files.yml"
NETWORK_IDS = ("encoder", "use_moe", "in_channels", "out_channels")


class PackagingError(Exception):
    """A check failed; the message says what to fix."""


def version_tuple(version: str) -> tuple[int, ...]:
    """``"1.2.3"`` -> ``(1, 2, 3)``; PackagingError for anything but dot-separated integers."""
    try:
        return tuple(int(part) for part in version.split("."))
    except ValueError:
        raise PackagingError(f"version {version!r} is not dot-separated integers such as 0.1.0") from None


def check_metadata(metadata_path: Path) -> str:
    """Return the metadata ``version`` after checking it is the highest key of ``changelog``."""
    metadata = json.loads(metadata_path.read_text(encoding="utf-8"))
    version, changelog = metadata.get("version"), metadata.get("changelog")
    if not isinstance(version, str) or not isinstance(changelog, dict) or not changelog:
        raise PackagingError(f"{metadata_path}: needs a 'version' string and a non-empty 'changelog' object")
    if version not in changelog:
        raise PackagingError(
            f'{metadata_path}: version {version} has no changelog entry; add "{version}": "<what changed>" '
            f"to 'changelog' (it has: {', '.join(changelog)})"
        )
    newest = max(changelog, key=version_tuple)
    if version_tuple(newest) > version_tuple(version):
        raise PackagingError(
            f"{metadata_path}: version {version} is older than changelog entry {newest}; bump 'version'"
        )
    return version


def check_weights_fit(root: Path) -> None:
    """PackagingError unless ``models/model.pt`` was saved from the network that inference.json builds."""
    from monai.bundle import ConfigParser

    from bundle.checkpoints import network_kwargs_from_checkpoint

    parser = ConfigParser()
    parser.read_config(str(root / "configs" / "inference.json"))
    expected = {key: parser.get_parsed_content(key) for key in NETWORK_IDS}
    try:
        found = network_kwargs_from_checkpoint(root / WEIGHTS)
    except ValueError as error:
        raise PackagingError(str(error)) from error
    if found != expected:
        raise PackagingError(
            f"{root / WEIGHTS} holds {found} but configs/inference.json builds {expected}; "
            "fix inference.json or ship the matching checkpoint"
        )


def collect_files(root: Path, include_weights: bool) -> list[str]:
    """Paths (relative to ``root``, POSIX, sorted) that go into the zip; warns when no weights go in."""
    missing = [name for name in REQUIRED if not (root / name).is_file()]
    if missing:
        raise PackagingError(f"{root}: missing required file(s): {', '.join(missing)}")
    patterns = (
        "configs/*.json",
        "configs/logging.conf",
        "docs/*.md",
        "docs/*.txt",
        "docs/schema/**/*",
        "LICENSE",
        "requirements.txt",
        "bundle/**/*.py",
        "scripts/*.py",
        "scripts/*.sh",
    )
    files = {
        path.relative_to(root).as_posix()
        for pattern in patterns
        for path in root.glob(pattern)
        if path.is_file()
        and not any(part.startswith(".") or part == "__pycache__" for part in path.relative_to(root).parts)
    }
    if include_weights and (root / WEIGHTS).is_file():
        check_weights_fit(root)
        files.add(WEIGHTS)
    elif (root / LARGE_FILES).is_file():
        files.add(LARGE_FILES)
    else:
        reason = f"{WEIGHTS} not found" if include_weights else "--include-weights not given"
        print(f"warning: the zip has no weights ({reason}) and no {LARGE_FILES}", file=sys.stderr)
    return sorted(files)


def write_zip(root: Path, files: Sequence[str], output: Path) -> None:
    """Zip ``files`` under ``BUNDLE_NAME/`` into ``output`` atomically; checkpoints are stored, the rest deflated."""

    def write(tmp: Path) -> None:
        with zipfile.ZipFile(tmp, "w") as archive:
            for name in files:
                method = zipfile.ZIP_STORED if name.endswith(".pt") else zipfile.ZIP_DEFLATED
                archive.write(root / name, f"{BUNDLE_NAME}/{name}", compress_type=method)

    atomic_write(output, write)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the tool; returns the process exit code (0 on success, 1 on a failed check)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", help="zip to write (default: BUNDLE_ROOT/dist/lh_utanet_bundle-<version>.zip)")
    parser.add_argument(
        "--include-weights", action="store_true", help=f"add {WEIGHTS} (checked against inference.json)"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing zip")
    parser.add_argument("--bundle-root", default=str(REPO_ROOT), help="bundle folder to package (default: this repo)")
    args = parser.parse_args(argv)
    root = Path(args.bundle_root).resolve()
    try:
        version = check_metadata(root / "configs" / "metadata.json")
        output = Path(args.output or root / "dist" / f"{BUNDLE_NAME}_bundle-{version}.zip").absolute()
        if output.exists() and not args.overwrite:
            raise PackagingError(f"{output} already exists; pass --overwrite to replace it")
        files = collect_files(root, args.include_weights)
    except (PackagingError, OSError, json.JSONDecodeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    write_zip(root, files, output)
    print(f"packaged {len(files)} files of {BUNDLE_NAME} {version} into {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
