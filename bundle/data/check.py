"""Dataset integrity check, after nnU-Net's: every image/mask pair is read once and every problem is reported.

Hard errors: a missing image or mask, an unreadable file, an image/mask size mismatch, a mask with more than
``AMBIGUOUS_LIMIT`` of its pixels outside the binary/JPEG-noise band, and duplicate names (two images, or two
masks, with one stem in one folder, or one file listed twice). Empty masks are counted, not errors.
``scripts/check_data.py DIR`` prints the report; training runs :func:`require_valid_data` at its start.
"""

from __future__ import annotations

import logging
import os
from collections import defaultdict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import tifffile
from PIL import Image

from ..config import flag
from ..errors import DatasetError
from ..formats import NIFTI_SUFFIXES, TIFF_SUFFIXES, error_reason, split_suffix
from .datasets import ACCEPTED_LAYOUTS, Pair, Problem, data_root, discover_pairs, read_datalist_json
from .transforms import mask_threshold

logger = logging.getLogger(__name__)

# a mask value v is ambiguous (neither background nor foreground, JPEG noise included) when
# BAND[0] * full < v < BAND[1] * full, full being 255 for 8-bit masks and the mask's maximum otherwise:
# 32..223 for 8-bit masks; Kvasir-SEG's JPEG masks hold only 0..8 and 247..255
BAND: tuple[float, float] = (0.125, 0.875)
AMBIGUOUS_LIMIT = 0.01  # more ambiguous pixels than this share makes a mask a soft map or a photo, not a mask
MISSING_IMAGE, MISSING_MASK = "missing image(s)", "missing mask(s)"
UNREADABLE, SIZE_MISMATCH = "unreadable file(s)", "image/mask size mismatch(es)"
OUT_OF_BAND = f"mask(s) with more than {AMBIGUOUS_LIMIT:.0%} of pixels outside the binary/JPEG-noise band"
DUPLICATE_IMAGES, DUPLICATE_MASKS = "duplicate image name(s)", "duplicate mask name(s)"
PAIR_ERRORS: tuple[str, ...] = (MISSING_IMAGE, MISSING_MASK, UNREADABLE, SIZE_MISMATCH, OUT_OF_BAND)


@dataclass
class DataReport:
    """What :func:`check_pairs` found: hard errors (each a kind and its files, one line each) and empty masks."""

    source: str
    pairs: int
    errors: list[Problem] = field(default_factory=list)
    empty_masks: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors

    @property
    def bad_files(self) -> list[str]:
        return [line for problem in self.errors for line in problem.files]

    def __str__(self) -> str:
        lines = [f"data check of {self.source}: {self.pairs} image/mask pair(s) read"]
        for what, files in [*self.errors, Problem("empty mask(s), allowed and counted", self.empty_masks)]:
            if files:
                lines += [f"  {len(files)} {what}:", *(f"    {line}" for line in files)]
        verdict = f"FAILED: {len(self.bad_files)} hard error(s)" if self.errors else "OK: no hard errors"
        return "\n".join([*lines, f"{verdict}, {len(self.empty_masks)} empty mask(s)"])


def _channels_last_max(array: np.ndarray) -> np.ndarray:
    """(H, W) -> itself; (H, W, C) -> (H, W) maximum over the channels, alpha dropped, as ``BinarizeMaskd``."""
    if array.ndim != 3:
        return array
    channels = array.shape[-1] - 1 if array.shape[-1] in (2, 4) else array.shape[-1]
    return np.maximum.reduce([array[..., c] for c in range(channels)])


def read_image_size(path: Path) -> tuple[int, int]:
    """(H, W) of an image, decoded to the end (JPEG at 1/8 scale, which is cheap) so that a truncated file fails."""
    suffix = split_suffix(path.name)[1]
    if suffix in TIFF_SUFFIXES:
        return np.squeeze(tifffile.imread(path)).shape[:2]
    if suffix in NIFTI_SUFFIXES:
        return np.asanyarray(nib.load(path).dataobj).shape[:2]
    with Image.open(path) as image:
        width, height = image.size
        image.draft(image.mode, (max(1, width // 8), max(1, height // 8)))
        image.load()
    return height, width


def read_mask(path: Path) -> np.ndarray:
    """(H, W) mask in its stored dtype: the channel maximum, alpha dropped, as the bundle binarises it."""
    suffix = split_suffix(path.name)[1]
    if suffix in TIFF_SUFFIXES:
        array = np.squeeze(tifffile.imread(path))
    elif suffix in NIFTI_SUFFIXES:
        array = np.squeeze(np.asanyarray(nib.load(path).dataobj))
    else:
        with Image.open(path) as image:
            array = np.asarray(image)
    if array.ndim not in (2, 3):
        raise ValueError(f"expected a 2D mask, got shape {array.shape}")
    return _channels_last_max(array)


def ambiguous_fraction(mask: np.ndarray, source: str) -> float:
    """Share of the (H, W) ``mask``'s pixels strictly inside ``BAND`` of its full scale; 0 for integer label maps."""
    top = float(mask.max())
    if np.issubdtype(mask.dtype, np.integer) and mask_threshold(top, source) == 0:
        return 0.0  # a label map (0/1, 0..N): foreground is > 0
    full = 255.0 if mask.dtype == np.uint8 else top
    if full <= 0:
        return 0.0
    return float(np.count_nonzero((mask > BAND[0] * full) & (mask < BAND[1] * full)) / mask.size)


def _check_pair(pair: Pair, name: Callable[[Path], str]) -> tuple[list[tuple[str, str]], bool]:
    """Hard errors of one pair as (kind, line naming the files), and whether its mask is empty."""
    image, mask = Path(pair["image"]), Path(pair["label"])
    errors = [(kind, name(path)) for kind, path in ((MISSING_IMAGE, image), (MISSING_MASK, mask)) if not path.is_file()]
    if errors:
        return errors, False
    try:
        image_size = read_image_size(image)
    except Exception as error:  # noqa: BLE001 - any decoder error (PIL, tifffile, nibabel, zlib) is a finding
        errors.append((UNREADABLE, f"{name(image)}: {error_reason(error)}"))
    try:
        values = read_mask(mask)
    except Exception as error:  # noqa: BLE001
        errors.append((UNREADABLE, f"{name(mask)}: {error_reason(error)}"))
    if errors:
        return errors, False
    if tuple(image_size) != values.shape:
        sizes = f"{name(image)} ({'x'.join(map(str, image_size))}) vs {name(mask)} ({'x'.join(map(str, values.shape))})"
        errors.append((SIZE_MISMATCH, sizes))
    fraction = ambiguous_fraction(values, mask.name)
    if fraction > AMBIGUOUS_LIMIT:
        errors.append((OUT_OF_BAND, f"{name(mask)}: {fraction:.1%} of pixels are neither background nor foreground"))
    return errors, float(values.max()) <= mask_threshold(float(values.max()), mask.name)


def _duplicates(pairs: Sequence[Pair], key: str, name: Callable[[Path], str]) -> list[str]:
    """``"a.jpg & a.png"`` for each folder + stem that more than one listed ``key`` file has (or one file listed twice)."""
    groups: dict[tuple[Path, str], list[str]] = defaultdict(list)
    for pair in pairs:
        path = Path(pair[key])
        groups[(path.parent, split_suffix(path.name)[0])].append(name(path))
    return [" & ".join(sorted(group)) for group in groups.values() if len(group) > 1]


def check_pairs(
    pairs: Sequence[Pair], root: str | os.PathLike, problems: Sequence[Problem] = (), workers: int = 4
) -> DataReport:
    """Read every pair (in ``workers`` threads) and report; files are named relative to ``root`` when inside it.

    ``problems`` (from discovery) head the report's errors.
    """
    root = Path(data_root(root))

    def name(path: Path) -> str:
        return path.relative_to(root).as_posix() if path.is_relative_to(root) else str(path)

    with ThreadPoolExecutor(max_workers=max(1, min(workers, os.cpu_count() or 1))) as pool:
        results = list(pool.map(lambda pair: _check_pair(pair, name), pairs))
    found: dict[str, list[str]] = defaultdict(list)
    for errors, _ in results:
        for kind, line in errors:
            found[kind].append(line)
    found[DUPLICATE_IMAGES] = _duplicates(pairs, "image", name)
    found[DUPLICATE_MASKS] = _duplicates(pairs, "label", name)
    errors = [*problems, *(Problem(kind, found[kind]) for kind in (*PAIR_ERRORS, DUPLICATE_IMAGES, DUPLICATE_MASKS))]
    empty = [name(Path(pair["label"])) for pair, (_, is_empty) in zip(pairs, results) if is_empty]
    return DataReport(str(root), len(pairs), [problem for problem in errors if problem.files], empty)


def check_dataset(dataset_dir: str | os.PathLike) -> DataReport:
    """Check every pair a dataset folder provides: those of its ``datalist.json``, else all discovered pairs.

    A ``split.csv`` only selects among the discovered pairs, so all of them are checked. Raises
    FileNotFoundError or ValueError when the folder is missing or holds no recognisable layout.
    """
    root = Path(os.path.abspath(dataset_dir))
    if (root / "datalist.json").is_file():
        splits = read_datalist_json(root / "datalist.json", root)
        return check_pairs([pair for items in splits.values() for pair in items], root)
    pairs, problems = discover_pairs(root)
    if not pairs and not problems:
        raise DatasetError(f"no image/mask pairs found in {root}; accepted layouts: {ACCEPTED_LAYOUTS}")
    return check_pairs(pairs, root, problems)


def require_valid_data(pairs: Sequence[Pair], root: str | os.PathLike, enabled: bool | str = True) -> DataReport | None:
    """Training's start check of the pairs it trains and validates on: logs the report, raises ValueError listing
    the files with hard errors (named relative to ``root``). Does nothing when ``enabled`` is false (id ``check_data``).
    """
    if not flag(enabled, "check_data"):
        logger.info("data check disabled (check_data false)")
        return None
    report = check_pairs(pairs, root)
    if not report.ok:
        raise DatasetError(
            f"{report}\nTraining refuses to start: fix or remove these files in {root}, or pass --check_data false."
        )
    logger.info("%s", report)
    return report
