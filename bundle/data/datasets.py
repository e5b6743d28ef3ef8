"""Dataset discovery (the accepted folder layouts) and the datalist, :func:`load_datalist`; splitting is in
:mod:`bundle.data.splits`, the synthetic demo set in :mod:`bundle.data.demo`."""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import NamedTuple

from ..errors import DatasetError, MissingFileError
from ..formats import split_suffix
from .splits import (  # noqa: F401  (also bundle.data.datasets.*: configs and cached budgets name them)
    Pair,
    format_files,
    pair_key,
    select_by_names,
    split_pairs,
    training_subset,
    validation_as_test,
)

MASK_TAGS: tuple[str, ...] = ("_segmentation", "_mask")
IGNORED_TAGS: tuple[str, ...] = ("_superpixels",)  # ISIC ships superpixel maps beside its images
SPLIT_KEYS: tuple[str, ...] = ("training", "validation", "test")
CSV_SPLIT_NAMES: dict[str, str] = {
    "train": "training",
    "training": "training",
    "val": "validation",
    "valid": "validation",
    "validation": "validation",
    "test": "test",
    "testing": "test",
}
ACCEPTED_LAYOUTS = (
    "(a) images/ + masks/ (or labels/) with matching relative paths and stems, any image extension, "
    "mask stem optionally followed by '_segmentation' or '_mask'; "
    "(b) one flat folder with X.<ext> + X_segmentation.<ext> (or X_mask.<ext>); "
    "(c) a datalist.json or split.csv beside the data (load_datalist only)"
)


class Problem(NamedTuple):
    """One kind of dataset problem (``what``, e.g. "image(s) without a mask in DIR") and the files it concerns."""

    what: str
    files: list[str]

    def __str__(self) -> str:
        return f"{len(self.files)} {self.what}: {format_files(self.files)}"


def _clashes(groups: Iterable[list[Path]], folder: Path) -> list[str]:
    """``"a.jpg & a.png"`` for each group of more than one file (paths relative to ``folder``)."""
    return [" & ".join(p.relative_to(folder).as_posix() for p in group) for group in groups if len(group) > 1]


def dataset_location(dataset_dir: str | os.PathLike) -> tuple[Path, Path | None]:
    """(folder, datalist file or None) of ``dataset_dir``: a dataset folder, or a datalist ``.json`` file (its paths
    relative to the file's folder). Raises MissingFileError or DatasetError naming the path."""
    path = Path(os.path.abspath(dataset_dir))
    if path.is_dir():
        return path, None
    if path.is_file() and path.suffix.lower() == ".json":
        return path.parent, path
    if path.exists():
        raise DatasetError(f"dataset_dir is neither a folder nor a datalist .json file: {path}")
    raise MissingFileError(f"dataset_dir does not exist: {path}; pass a dataset folder or its datalist.json")


def dataset_name(dataset_dir: str | os.PathLike) -> str:
    """The name of a dataset (its folder's; for a datalist file, the folder that holds it)."""
    path = Path(os.path.abspath(dataset_dir))
    return path.parent.name if path.suffix.lower() == ".json" else path.name


def _existing_dir(dataset_dir: str | os.PathLike) -> Path:
    root, datalist = dataset_location(dataset_dir)
    if datalist is not None:
        raise DatasetError(f"{datalist} is a datalist; pairs are discovered in a folder: pass {root}")
    return root


def _image_files(folder: Path, recursive: bool) -> list[Path]:
    """Image files in ``folder`` (hidden files and folders skipped), sorted."""
    candidates = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(
        path
        for path in candidates
        if path.is_file()
        and split_suffix(path.name)[1]
        and not any(part.startswith(".") for part in path.relative_to(folder).parts)
    )


def _index_by_key(files: Iterable[Path], folder: Path, kind: str, problems: list[Problem]) -> dict[str, Path]:
    """Map ``relative/dir/stem`` to the file; several files with one key are reported as ambiguous."""
    groups: dict[str, list[Path]] = {}
    for path in files:
        rel = path.relative_to(folder)
        groups.setdefault((rel.parent / split_suffix(rel.name)[0]).as_posix(), []).append(path)
    clashes = _clashes(groups.values(), folder)
    if clashes:
        problems.append(Problem(f"ambiguous {kind} stem(s) in {folder} (one file per stem)", clashes))
    return {key: group[0] for key, group in groups.items() if len(group) == 1}


def _match_masks(
    images: dict[str, Path], masks: dict[str, Path], image_dir: Path, mask_dir: Path, problems: list[Problem]
) -> list[Pair]:
    """Pair each image key with the mask of the same key, or of the key plus a ``MASK_TAGS`` tag."""
    claimed: dict[str, list[Path]] = {}
    orphan_masks: list[str] = []
    for key, mask in masks.items():
        candidates = [key] + [key[: -len(tag)] for tag in MASK_TAGS if key.endswith(tag)]
        target = next((c for c in candidates if c in images), None)
        if target is None:
            orphan_masks.append(mask.relative_to(mask_dir).as_posix())
        else:
            claimed.setdefault(target, []).append(mask)
    clashes = _clashes(claimed.values(), mask_dir)
    if clashes:
        problems.append(Problem(f"image(s) with several masks in {mask_dir}", clashes))
    orphan_images = [path.relative_to(image_dir).as_posix() for key, path in images.items() if key not in claimed]
    if orphan_images:
        problems.append(Problem(f"image(s) without a mask in {image_dir}", orphan_images))
    if orphan_masks:
        problems.append(Problem(f"mask(s) without an image in {mask_dir}", orphan_masks))
    return [{"image": str(images[key]), "label": str(group[0])} for key, group in claimed.items() if len(group) == 1]


def discover_pairs(dataset_dir: str | os.PathLike) -> tuple[list[Pair], list[Problem]]:
    """``{"image", "label"}`` pairs (absolute paths, sorted) in one of the accepted folder layouts, and the problems.

    Problems (unmatched images or masks, ambiguous stems, several masks for one image) are returned, not
    raised; the files they concern are left out of the pairs. Raises FileNotFoundError when ``dataset_dir``
    is missing and ValueError when it has only one of ``images/`` and ``masks/``.
    """
    root = _existing_dir(dataset_dir)
    image_dir = root / "images"
    mask_dir = next((root / name for name in ("masks", "labels") if (root / name).is_dir()), None)
    problems: list[Problem] = []
    if image_dir.is_dir() and mask_dir is not None:
        images = _index_by_key(_image_files(image_dir, recursive=True), image_dir, "image", problems)
        masks = _index_by_key(_image_files(mask_dir, recursive=True), mask_dir, "mask", problems)
        pairs = _match_masks(images, masks, image_dir, mask_dir, problems)
    elif image_dir.is_dir() or mask_dir is not None:
        raise DatasetError(f"{root} has only one of images/ and masks/ (or labels/); accepted: {ACCEPTED_LAYOUTS}")
    else:
        files = [
            path
            for path in _image_files(root, recursive=False)
            if not split_suffix(path.name)[0].endswith(IGNORED_TAGS)
        ]
        is_mask = [split_suffix(path.name)[0].endswith(MASK_TAGS) for path in files]
        images = _index_by_key([p for p, m in zip(files, is_mask) if not m], root, "image", problems)
        masks = _index_by_key([p for p, m in zip(files, is_mask) if m], root, "mask", problems)
        pairs = _match_masks(images, masks, root, root, problems) if masks else []
    return sorted(pairs, key=pair_key), problems


def find_image_mask_pairs(dataset_dir: str | os.PathLike) -> list[Pair]:
    """Discover ``{"image", "label"}`` pairs (absolute paths, sorted) in one of the accepted folder layouts.

    Raises MissingFileError when ``dataset_dir`` is missing and DatasetError, naming the offending files,
    for unmatched images or masks, ambiguous stems, or when no pairs are found.
    """
    pairs, problems = discover_pairs(dataset_dir)
    root = _existing_dir(dataset_dir)
    if problems:
        listed = "".join(f"  - {problem}\n" for problem in problems)
        raise DatasetError(f"{listed}invalid dataset in {root}: fix or remove the files listed above.")
    if not pairs:
        raise DatasetError(f"no image/mask pairs found in {root}; accepted layouts: {ACCEPTED_LAYOUTS}")
    return pairs


def read_datalist_json(path: Path, root: Path) -> dict[str, list[Pair]]:
    """Read a decathlon-style datalist; relative paths are resolved against ``root``."""
    with open(path, encoding="utf-8") as f:
        try:
            raw = json.load(f)
        except json.JSONDecodeError as error:
            raise DatasetError(f"{path}: not valid JSON ({error})") from error
    if not isinstance(raw, dict) or not isinstance(raw.get("training"), list):
        raise DatasetError(f"{path}: expected a JSON object with a 'training' list (and optional 'validation', 'test')")
    out: dict[str, list[Pair]] = {}
    for key in SPLIT_KEYS:
        if key not in raw:
            continue
        items = []
        for i, item in enumerate(raw[key]):
            if not (isinstance(item, dict) and all(isinstance(item.get(k), str) for k in ("image", "label"))):
                raise DatasetError(f"{path}: {key}[{i}] must be an object with 'image' and 'label' paths, got {item!r}")
            items.append({k: os.path.abspath(root / item[k]) for k in ("image", "label")})
        out[key] = items
    return out


def _read_split_csv(path: Path, root: Path) -> dict[str, list[Pair]]:
    """Assign discovered pairs to splits from a ``name,split`` CSV (train/val/test)."""
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if not {"name", "split"} <= set(reader.fieldnames or ()):
            raise DatasetError(f"{path}: expected columns 'name' and 'split', got {reader.fieldnames}")
        names: dict[str, list[str]] = {key: [] for key in SPLIT_KEYS}
        for line, row in enumerate(reader, start=2):
            split = CSV_SPLIT_NAMES.get((row["split"] or "").strip().lower())
            if split is None:
                raise DatasetError(f"{path}:{line}: unknown split {row['split']!r}; use train, val or test")
            names[split].append(row["name"])
    pairs = find_image_mask_pairs(root)
    out: dict[str, list[Pair]] = {}
    missing: list[str] = []
    for key in SPLIT_KEYS:
        if key == "training" or names[key]:
            out[key], _, unmatched = select_by_names(pairs, names[key])
            missing += unmatched
    if missing:
        raise DatasetError(
            f"{path}: {len(missing)} name(s) match no image/mask pair in {root}: {format_files(missing)}"
        )
    return out


def dataset_folders(dataset_dir: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str]:
    """``dataset_dir`` as a list of dataset folders: one folder, or a list of them (several centres in one run)."""
    return [str(folder) for folder in dataset_dir] if isinstance(dataset_dir, (list, tuple)) else [str(dataset_dir)]


def data_root(dataset_dir: str | os.PathLike | Sequence[str | os.PathLike]) -> str:
    """The folder that holds every dataset folder of ``dataset_dir`` (itself when there is one); for a datalist
    file, the folder that holds it and every file it lists."""
    folders = []
    for folder in dataset_folders(dataset_dir):
        root, datalist = dataset_location(folder) if os.path.isfile(folder) else (Path(os.path.abspath(folder)), None)
        listed = read_datalist_json(datalist, root).values() if datalist is not None else []
        folders += [str(root), *(os.path.dirname(path) for pairs in listed for pair in pairs for path in pair.values())]
    return os.path.commonpath(folders)


def load_datalist(
    dataset_dir: str | os.PathLike | Sequence[str | os.PathLike], val_fraction: float = 0.2, seed: int = 0
) -> dict[str, list[Pair]]:
    """:func:`load_folder_datalist` of ``dataset_dir``, or of each folder of a list of them (several centres),
    merged: each pair then also names its ``source``, the folder's name, which per-source metrics and reports use,
    and each source keeps its own splits (its test list, its validation blocks)."""
    folders = dataset_folders(dataset_dir)
    names = [dataset_name(folder) for folder in folders]
    if len(set(names)) < len(names):
        raise DatasetError(f"dataset folders need distinct names to tell their images apart, got {folders}")
    if len(folders) == 1:
        return load_folder_datalist(folders[0], val_fraction, seed)
    merged: dict[str, list[Pair]] = {key: [] for key in SPLIT_KEYS}
    for folder, name in zip(folders, names):
        for key, pairs in load_folder_datalist(folder, val_fraction, seed).items():
            merged[key] += [{**pair, "source": name} for pair in pairs]
    return merged


def load_folder_datalist(
    dataset_dir: str | os.PathLike, val_fraction: float = 0.2, seed: int = 0
) -> dict[str, list[Pair]]:
    """Return ``training`` / ``validation`` / ``test`` lists of ``{"image", "label"}`` (absolute paths, sorted).

    Uses the datalist file ``dataset_dir`` names, or ``dataset_dir/datalist.json`` if present, else ``dataset_dir/split.csv`` (``name,split`` rows; pairs not
    listed are left out), else discovered pairs split by :func:`split_pairs`, with the images named in a
    ``*test_names.txt`` file (one name a line, e.g. Kvasir-SEG's ``pranet_test_names.txt``) as the test split.
    A missing validation split is taken from training with ``val_fraction`` and ``seed``.
    """
    root, json_path = dataset_location(dataset_dir)
    json_path, csv_path = json_path or root / "datalist.json", root / "split.csv"
    if json_path.is_file():
        source, data = json_path, read_datalist_json(json_path, root)
    elif csv_path.is_file():
        source, data = csv_path, _read_split_csv(csv_path, root)
    else:
        names_files = sorted(root.glob("*test_names.txt"))
        if len(names_files) > 1:
            raise DatasetError(f"{root}: several test-name files, keep one: {format_files(names_files)}")
        test_names = names_files[0].read_text(encoding="utf-8").splitlines() if names_files else None
        return split_pairs(find_image_mask_pairs(root), val_fraction=val_fraction, seed=seed, test_names=test_names)
    if "validation" not in data:
        split = split_pairs(data["training"], val_fraction=val_fraction, seed=seed)
        data["training"], data["validation"] = split["training"], split["validation"]
    result = {key: sorted(data.get(key, []), key=pair_key) for key in SPLIT_KEYS}
    missing = sorted({p for items in result.values() for pair in items for p in pair.values() if not os.path.isfile(p)})
    if missing:
        raise MissingFileError(f"{source}: {len(missing)} listed file(s) do not exist: {format_files(missing)}")
    seen: dict[str, str] = {}
    leaked = []
    for key in SPLIT_KEYS:
        for pair in result[key]:
            if seen.setdefault(pair["image"], key) != key:
                leaked.append(f"{pair['image']} ({seen[pair['image']]} & {key})")
    if leaked:
        raise DatasetError(f"{source}: {len(leaked)} image(s) listed in more than one split: {format_files(leaked)}")
    return result
