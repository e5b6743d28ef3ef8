"""Package the bundle: a zip for MONAI Label (``lh_utanet/`` with configs, docs, code, license and, optionally, the
weights), or the folder of a MONAI model-zoo pull request.

Before packaging it checks that ``configs/metadata.json`` ``version`` is the newest entry of its ``changelog``
and, when weights go in, that ``models/model.pt`` loads strictly into the network ``configs/inference.json``
builds (MONAI Label loads it non-strictly, so a mismatch would otherwise go unnoticed).

``--model-zoo DIR --weights-url URL`` writes ``DIR/<MODEL_ZOO_NAME>/``: the same files without any binary, and a
``large_files.yml`` whose entries give ``path``, ``url`` (``URL/<path under models/>``: upload ``models/`` there),
``hash_val`` and ``hash_type`` (sha256, checked against the files here), as the model zoo's CONTRIBUTING.md asks.

What ships runs without this repository's editable install: ``bundle/``, ``configs/``, ``docs/`` and ``scripts/`` go
in whole, as found in the tree (every package, sub-package, data file and figure; no cache, hidden file or binary),
with ``pyproject.toml`` and ``requirements.txt`` for ``scripts/setup_env.sh``; ``pyproject.toml``'s version must be
the metadata's.
Folders get mode 755, files 644 (755 with a ``#!`` line), in the zip and in the model-zoo folder.

Usage (from the repository root):
    python scripts/package_bundle.py [--output dist/lh_utanet_bundle-<version>.zip] [--include-weights] [--overwrite]
    python scripts/package_bundle.py --model-zoo DIR --weights-url https://host/path/models
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import zipfile
from collections.abc import Sequence
from pathlib import Path

import yaml
from bundle.atomic_files import atomic_write, atomic_write_text, sha256_of
from bundle.errors import BundleError, run_script

REPO_ROOT = Path(__file__).resolve().parents[1]

BUNDLE_NAME = "lh_utanet"
MODEL_ZOO_NAME = "polyp_colonoscopy_segmentation"  # the model zoo names bundles by target, data type and task
REQUIRED = (
    "configs/metadata.json",
    "configs/inference.json",
    "configs/train.json",
    "docs/README.md",
    "LICENSE",
    "pyproject.toml",  # scripts/setup_env.sh installs the bundle from it (pip install -e .)
    "requirements.txt",
)
FOLDERS = ("bundle", "configs", "docs", "scripts")  # shipped whole: a new package or file needs no edit here
NOT_SHIPPED_SUFFIXES = (".pyc", ".pyo", ".pt", ".ts", ".onnx", ".zip")  # caches and binaries
WEIGHTS, LARGE_FILES = "models/model.pt", "large_files.yml"
DIR_MODE, FILE_MODE, SCRIPT_MODE = 0o755, 0o644, 0o755


class PackagingError(BundleError):
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


def check_pyproject_version(root: Path, version: str) -> None:
    """PackagingError unless ``pyproject.toml``'s ``[project] version`` is ``version`` (the metadata's)."""
    import tomllib

    try:
        with (root / "pyproject.toml").open("rb") as file:
            found = tomllib.load(file).get("project", {}).get("version")
    except tomllib.TOMLDecodeError as error:
        raise PackagingError(f"{root / 'pyproject.toml'}: {error}") from None
    if found != version:
        raise PackagingError(
            f"{root / 'pyproject.toml'}: version {found} differs from configs/metadata.json's {version}; "
            f'set version = "{version}" under [project] in pyproject.toml'
        )


def check_weights_fit(root: Path) -> None:
    """PackagingError unless ``configs/inference.json`` builds a network that ``models/model.pt`` loads into strictly."""
    from bundle.backends.predictors import load_network
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(root / "configs" / "inference.json"))
    parser["bundle_root"] = str(root)
    try:
        load_network(parser.get_parsed_content("network_def"), root / WEIGHTS)
    except (ValueError, RuntimeError) as error:
        raise PackagingError(
            f"{root / WEIGHTS} does not load into configs/inference.json's network_def: {error}"
        ) from error


def shipped(root: Path, path: Path) -> bool:
    """Whether the file ``path`` under ``root`` goes into the package: no hidden part, cache or binary."""
    parts = path.relative_to(root).parts
    return (
        path.is_file()
        and not any(part.startswith(".") or part == "__pycache__" for part in parts)
        and not path.name.endswith(NOT_SHIPPED_SUFFIXES)
    )


def collect_files(root: Path, include_weights: bool) -> list[str]:
    """Paths (relative to ``root``, POSIX, sorted) that go into the zip; warns when no weights go in."""
    missing = [name for name in REQUIRED if not (root / name).is_file()]
    if missing:
        raise PackagingError(f"{root}: missing required file(s): {', '.join(missing)}")
    candidates = [root / name for name in REQUIRED]
    candidates += [path for folder in FOLDERS for path in (root / folder).rglob("*")]
    files = {path.relative_to(root).as_posix() for path in candidates if shipped(root, path)}
    if include_weights and (root / WEIGHTS).is_file():
        check_weights_fit(root)
        files.add(WEIGHTS)
    elif (root / LARGE_FILES).is_file():
        files.add(LARGE_FILES)
    else:
        reason = f"{WEIGHTS} not found" if include_weights else "--include-weights not given"
        print(f"warning: the zip has no weights ({reason}) and no {LARGE_FILES}", file=sys.stderr)
    return sorted(files)


def file_mode(path: Path) -> int:
    """755 for a file that starts with ``#!`` (a script run directly), else 644."""
    with path.open("rb") as file:
        return SCRIPT_MODE if file.read(2) == b"#!" else FILE_MODE


def folders_of(files: Sequence[str]) -> list[str]:
    """Every folder (POSIX, relative) that holds one of ``files``, parents first."""
    return sorted({parent.as_posix() for name in files for parent in Path(name).parents if parent != Path(".")})


def write_zip(root: Path, files: Sequence[str], output: Path) -> None:
    """Zip ``files`` under ``BUNDLE_NAME/`` into ``output`` atomically, with a 755 entry for each folder and 644/755
    file modes (``unzip`` applies them); checkpoints are stored, the rest deflated."""

    def write(tmp: Path) -> None:
        with zipfile.ZipFile(tmp, "w") as archive:
            for folder in ["", *folders_of(files)]:
                info = zipfile.ZipInfo(f"{BUNDLE_NAME}/{folder}/" if folder else f"{BUNDLE_NAME}/")
                info.create_system, info.external_attr = 3, (0o040000 | DIR_MODE) << 16 | 0x10  # 0x10: MS-DOS dir
                archive.writestr(info, b"")
            for name in files:
                info = zipfile.ZipInfo.from_file(root / name, f"{BUNDLE_NAME}/{name}")
                info.create_system, info.external_attr = 3, (0o100000 | file_mode(root / name)) << 16
                info.compress_type = zipfile.ZIP_STORED if name.endswith(".pt") else zipfile.ZIP_DEFLATED
                with (root / name).open("rb") as source, archive.open(info, "w") as target:
                    shutil.copyfileobj(source, target, 1 << 20)

    atomic_write(output, write)


def model_zoo_large_files(root: Path, weights_url: str) -> str:
    """``large_files.yml`` text for the model zoo: every entry of ``root``'s with ``url`` = ``weights_url`` + its path
    under ``models/``; PackagingError when a listed file is missing here or no longer has its listed hash."""
    listed = yaml.safe_load((root / LARGE_FILES).read_text(encoding="utf-8"))["large_files"]
    entries = []
    for entry in listed:
        path = root / entry["path"]
        if not path.is_file() or sha256_of(path) != entry["hash_val"]:
            raise PackagingError(
                f"{path} is missing or does not match its sha256 in {LARGE_FILES}; run scripts/write_large_files.py"
            )
        relative = Path(entry["path"]).relative_to("models").as_posix()
        url = f"{weights_url.rstrip('/')}/{relative}"
        entries.append(
            {"path": entry["path"], "url": url, "hash_val": entry["hash_val"], "hash_type": entry["hash_type"]}
        )
    return yaml.safe_dump({"large_files": entries}, sort_keys=False)


def write_model_zoo(root: Path, files: Sequence[str], target: Path, weights_url: str) -> None:
    """Write the model-zoo folder ``target`` (files, no binaries, ``large_files.yml`` with URLs) through a temp
    folder renamed into place, so that a failure leaves nothing half-written."""
    large_files = model_zoo_large_files(root, weights_url)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        for name in files:
            if name != LARGE_FILES:
                (tmp / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(root / name, tmp / name)
        atomic_write_text(tmp / LARGE_FILES, large_files)
        for folder in ["", *folders_of([*files, LARGE_FILES])]:
            os.chmod(tmp / folder, DIR_MODE)  # mkdtemp made tmp 700
        for name in {*files, LARGE_FILES}:
            os.chmod(tmp / name, file_mode(tmp / name))
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def main(argv: Sequence[str] | None = None) -> int:
    """Run the tool; returns the process exit code (0 on success, 1 on a failed check)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", help="zip to write (default: BUNDLE_ROOT/dist/lh_utanet_bundle-<version>.zip)")
    parser.add_argument(
        "--include-weights", action="store_true", help=f"add {WEIGHTS} (checked against inference.json)"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing zip")
    parser.add_argument("--bundle-root", default=str(REPO_ROOT), help="bundle folder to package (default: this repo)")
    parser.add_argument("--model-zoo", metavar="DIR", help=f"write the model-zoo layout DIR/{MODEL_ZOO_NAME}/ instead")
    parser.add_argument("--weights-url", help="with --model-zoo: the URL that models/ is uploaded to")
    args = parser.parse_args(argv)
    root = Path(args.bundle_root).resolve()
    try:
        version = check_metadata(root / "configs" / "metadata.json")
        check_pyproject_version(root, version)
        if args.model_zoo:
            if not args.weights_url:
                raise PackagingError("--model-zoo needs --weights-url, the URL that models/ is uploaded to")
            target = Path(args.model_zoo).absolute() / MODEL_ZOO_NAME
            if target.exists():
                raise PackagingError(f"{target} already exists; remove it or choose another --model-zoo folder")
            target.parent.mkdir(parents=True, exist_ok=True)
            check_weights_fit(root)
            files = collect_files(root, include_weights=False)
            write_model_zoo(root, files, target, args.weights_url)
            print(f"wrote the model-zoo layout of {MODEL_ZOO_NAME} {version} ({len(files)} files) into {target}")
            return 0
        output = Path(args.output or root / "dist" / f"{BUNDLE_NAME}_bundle-{version}.zip").absolute()
        if output.exists() and not args.overwrite:
            raise PackagingError(f"{output} already exists; pass --overwrite to replace it")
        files = collect_files(root, args.include_weights)
    except (json.JSONDecodeError, yaml.YAMLError) as error:
        raise PackagingError(f"a file of {root} is not valid JSON or YAML: {' '.join(str(error).split())}") from error
    write_zip(root, files, output)
    print(f"packaged {len(files)} files of {BUNDLE_NAME} {version} into {output}")
    return 0


if __name__ == "__main__":
    sys.exit(run_script(main))
