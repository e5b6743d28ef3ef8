"""Dataset integrity check, after nnU-Net's: every image/mask pair is read once and every problem is reported.

Hard errors: a missing image or mask, an unreadable file, an image/mask size mismatch, a mask with more than
``AMBIGUOUS_LIMIT`` of its pixels outside the binary/JPEG-noise band, a colour-coded mask (several colours, e.g. one
per class), duplicate names (two images, or two masks, with one stem in one folder, or one file listed twice), and
no foreground in any mask. Masks are read as training reads them (:mod:`bundle.data.masks`). All-background masks
are listed and allowed (negative frames, e.g. of a video without a polyp). ``scripts/check_data.py DIR`` prints the
report; training runs :func:`require_valid_data` at its start.
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
from .datasets import ACCEPTED_LAYOUTS, Pair, Problem, data_root, dataset_location, discover_pairs, read_datalist_json
from .masks import BAND, LabelValues, mask_colours, read_mask_array
from .splits import format_files

logger = logging.getLogger(__name__)

AMBIGUOUS_LIMIT = 0.01  # more ambiguous pixels than this share makes a mask a soft map or a photo, not a mask
MISSING_IMAGE, MISSING_MASK = "missing image(s)", "missing mask(s)"
UNREADABLE, SIZE_MISMATCH = "unreadable file(s)", "image/mask size mismatch(es)"
OUT_OF_BAND = f"mask(s) with more than {AMBIGUOUS_LIMIT:.0%} of pixels outside the binary/JPEG-noise band"
COLOUR_CODED = "colour-coded mask(s): several colours, not one foreground"
DUPLICATE_IMAGES, DUPLICATE_MASKS = "duplicate image name(s)", "duplicate mask name(s)"
NO_FOREGROUND = "dataset without foreground"
PAIR_ERRORS: tuple[str, ...] = (MISSING_IMAGE, MISSING_MASK, UNREADABLE, SIZE_MISMATCH, OUT_OF_BAND, COLOUR_CODED)
EMPTY = "all-background mask(s), allowed (negative frames)"


@dataclass
class DataReport:
    """What :func:`check_pairs` found: hard errors (each a kind and its files, one line each) and empty masks."""

    source: str
    pairs: int
    errors: list[Problem] = field(default_factory=list)
    empty_masks: list[str] = field(default_factory=list)
    label_values: LabelValues = field(default_factory=LabelValues)

    @property
    def ok(self) -> bool:
        return not self.errors

    @property
    def bad_files(self) -> list[str]:
        return [line for problem in self.errors for line in problem.files]

    def __str__(self) -> str:
        lines = [f"data check of {self.source}: {self.pairs} image/mask pair(s) read", f"  {self.label_values}"]
        for what, files in [*self.errors, Problem(EMPTY, self.empty_masks)]:
            if files:
                lines += [f"  {len(files)} {what}:", *(f"    {line}" for line in files)]
        verdict = f"FAILED: {len(self.bad_files)} hard error(s)" if self.errors else "OK: no hard errors"
        return "\n".join([*lines, f"{verdict}, {len(self.empty_masks)} all-background mask(s)"])


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


def ambiguous_fraction(values: np.ndarray, threshold: float) -> float:
    """Share of the (H, W) mask's pixels strictly inside ``BAND`` of its full scale (255 for 8-bit masks, else its
    top value); 0 for label maps (``threshold`` 0: 0/1, instance ids)."""
    if threshold == 0:
        return 0.0
    full = 255.0 if values.dtype == np.uint8 else float(values.max())
    if full <= 0:
        return 0.0
    return float(np.count_nonzero((values > BAND[0] * full) & (values < BAND[1] * full)) / values.size)


@dataclass
class PairResult:
    """What reading one pair found: hard errors as (kind, line naming the files), whether its mask has no
    foreground, and its label values."""

    errors: list[tuple[str, str]]
    empty: bool = False
    label_values: LabelValues = field(default_factory=LabelValues)


def _check_pair(pair: Pair, name: Callable[[Path], str]) -> PairResult:
    """Read one pair and report it."""
    image, mask = Path(pair["image"]), Path(pair["label"])
    errors = [(kind, name(path)) for kind, path in ((MISSING_IMAGE, image), (MISSING_MASK, mask)) if not path.is_file()]
    if errors:
        return PairResult(errors)
    try:
        image_size = read_image_size(image)
    except Exception as error:  # noqa: BLE001 - any decoder error (PIL, tifffile, nibabel, zlib) is a finding
        errors.append((UNREADABLE, f"{name(image)}: {error_reason(error)}"))
    try:
        array = read_mask_array(mask)
    except Exception as error:  # noqa: BLE001
        errors.append((UNREADABLE, f"{name(mask)}: {error_reason(error)}"))
    if errors:
        return PairResult(errors)
    result = PairResult(errors)
    reading = result.label_values.add(array, mask.name)
    if tuple(image_size) != reading.values.shape:
        sizes = f"{name(image)} ({'x'.join(map(str, image_size))}) vs {name(mask)} ({'x'.join(map(str, reading.values.shape))})"
        errors.append((SIZE_MISMATCH, sizes))
    fraction = ambiguous_fraction(reading.values, reading.threshold)
    if fraction > AMBIGUOUS_LIMIT:
        errors.append((OUT_OF_BAND, f"{name(mask)}: {fraction:.1%} of pixels are neither background nor foreground"))
    colours = mask_colours(array, mask.name, reading.foreground)
    if len(colours) > 1:
        listed = ", ".join(f"RGB{colour}" for colour in colours[:6])
        errors.append((COLOUR_CODED, f"{name(mask)}: {len(colours)} colours ({listed}); save one foreground per mask"))
    result.empty = not reading.foreground.any()
    return result


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
    label_values = LabelValues()
    for result in results:
        label_values.merge(result.label_values)
        for kind, line in result.errors:
            found[kind].append(line)
    found[DUPLICATE_IMAGES] = _duplicates(pairs, "image", name)
    found[DUPLICATE_MASKS] = _duplicates(pairs, "label", name)
    if label_values.masks and not label_values.with_foreground:
        found[NO_FOREGROUND] = [f"no foreground in any of the {label_values.masks} mask(s) read: {label_values}"]
    kinds = (*PAIR_ERRORS, DUPLICATE_IMAGES, DUPLICATE_MASKS, NO_FOREGROUND)
    errors = [*problems, *(Problem(kind, found[kind]) for kind in kinds)]
    empty = [name(Path(pair["label"])) for pair, result in zip(pairs, results) if result.empty]
    return DataReport(str(root), len(pairs), [problem for problem in errors if problem.files], empty, label_values)


def check_dataset(dataset_dir: str | os.PathLike) -> DataReport:
    """Check every pair a dataset folder provides: those of its ``datalist.json`` (or of the datalist file that
    ``dataset_dir`` names), else all discovered pairs.

    A ``split.csv`` only selects among the discovered pairs, so all of them are checked. Raises
    FileNotFoundError or ValueError when the folder is missing or holds no recognisable layout.
    """
    root, datalist = dataset_location(dataset_dir)
    if datalist is None and (root / "datalist.json").is_file():
        datalist = root / "datalist.json"
    if datalist is not None:
        splits = read_datalist_json(datalist, root)
        return check_pairs([pair for items in splits.values() for pair in items], dataset_dir)
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
    if report.empty_masks:
        logger.warning(
            "%d of %d masks are all background and train as negative frames: %s",
            len(report.empty_masks),
            report.pairs,
            format_files(report.empty_masks),
        )
    return report
