"""One reading of a mask for the whole bundle: the data check, the planner, training and evaluation
(``BinarizeMaskd``) binarise a mask with :func:`mask_threshold` (foreground: a value above it).

A mask arrives as (H, W) or (H, W, C) in its stored dtype; an alpha channel is dropped and the channels are reduced
by their maximum (:func:`mask_values`), so grey saved as RGB reads as grey. Then, per mask (docs/planning.md):

- JPEG files: > 127, half the 8-bit scale: compression noise puts 0/255 masks at 0..8 and 247..255;
- top value <= 127 (0/1, instance ids 0..N): > 0, every id is foreground;
- instance ids above 127 (16-bit masks of many objects): > 0. They are told from a 0/255 mask with soft edges by
  their spread: most foreground pixels lie inside :data:`BAND` of the top value, in flat regions;
- otherwise (0/255, 0/65535, 0/1000, a soft map): > half the top value, scale-aware.

A colour-coded mask (several hues, e.g. one per class) is not one foreground: :func:`mask_colours` lists its colours,
and the data check refuses it.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple

import nibabel as nib
import numpy as np
import tifffile
from PIL import Image

from ..formats import JPEG_SUFFIXES, NIFTI_SUFFIXES, TIFF_SUFFIXES, split_suffix
from .readers import as_displayed

# values strictly inside (BAND[0], BAND[1]) x the top value are neither background nor foreground in a binary mask
BAND: tuple[float, float] = (0.125, 0.875)
JPEG_THRESHOLD = 127.0  # half the 8-bit scale, above the compression noise of JPEG 0/255 masks
LABEL_MAP_TOP = 127  # integer masks whose top value is at most this are label maps: 0/1 or ids 0..N
MIN_COLOUR_SHARE = 0.01  # a hue counts as a colour of the mask above this share of its foreground pixels ...
MIN_COLOUR_PIXELS = 16  # ... and this many pixels (anti-aliased edges between two colours are neither)
COLOUR_SAMPLE_PIXELS = 1 << 18  # larger masks are read at every second row and column for their colours
VALUES_SHOWN = 16  # label values a summary lists (the lowest and highest half of them)
VALUES_KEPT = 1 << 16  # distinct values a summary counts at most (soft float maps hold one per pixel)


def read_mask_array(path: str | os.PathLike) -> np.ndarray:
    """A mask file as the bundle's readers give it: (H, W) or (H, W, C), stored dtype (PNG/JPG/BMP as a viewer
    shows them, :func:`bundle.data.readers.as_displayed`; TIFF through tifffile; NIfTI squeezed)."""
    suffix = split_suffix(Path(path).name)[1]
    if suffix in TIFF_SUFFIXES:
        array = np.squeeze(tifffile.imread(path))
    elif suffix in NIFTI_SUFFIXES:
        array = np.squeeze(np.asanyarray(nib.load(path).dataobj))
    else:
        with Image.open(path) as image:
            array = np.asarray(as_displayed(image)[0])
    if array.ndim not in (2, 3):
        raise ValueError(f"expected a 2D mask, got shape {array.shape}")
    return array


def mask_values(array: np.ndarray) -> np.ndarray:
    """(H, W) -> itself; (H, W, C) -> (H, W) maximum over the channels, alpha (C 2 or 4) dropped."""
    if array.ndim != 3:
        return array
    channels = array.shape[-1] - 1 if array.shape[-1] in (2, 4) else array.shape[-1]
    return np.maximum.reduce([array[..., c] for c in range(channels)])  # 5x faster than max(axis=-1) on (H, W, 3)


def is_jpeg(source: str | os.PathLike) -> bool:
    return str(source).lower().endswith(JPEG_SUFFIXES)


def _integral(values: np.ndarray) -> bool:
    return np.issubdtype(values.dtype, np.integer) or bool(np.all(values == np.round(values)))


def _spread_in_flat_regions(values: np.ndarray, top: float) -> bool:
    """True when most foreground pixels of (H, W) ``values`` lie inside ``BAND`` of ``top`` (ids, not a 0/top mask
    with soft edges) and most of those equal their right neighbour (flat objects, not a soft map or noise)."""
    foreground = values > BAND[0] * top
    inner = foreground & (values < BAND[1] * top)
    count = np.count_nonzero(inner)
    if count <= 0.5 * np.count_nonzero(foreground):
        return False
    flat = np.count_nonzero((values[:, 1:] == values[:, :-1]) & inner[:, 1:])
    return flat >= 0.5 * count


def mask_threshold(values: np.ndarray, source: str | os.PathLike) -> float:
    """Foreground of the (H, W) mask ``values`` (read from file ``source``) is ``values > mask_threshold``: 127 for
    JPEG files, 0 for label maps (0/1, instance ids 0..N), else half the top value (module docstring)."""
    if is_jpeg(source):
        return JPEG_THRESHOLD
    top = float(values.max()) if values.size else 0.0
    if top <= 0:
        return 0.0
    if not _integral(values):
        return top / 2
    if top <= LABEL_MAP_TOP or _spread_in_flat_regions(values, top):
        return 0.0
    return float(np.floor(top / 2))


class MaskReading(NamedTuple):
    """One mask as the bundle reads it: (H, W) ``values`` (channel maximum), its ``threshold`` and (H, W) bool
    ``foreground``."""

    values: np.ndarray
    threshold: float
    foreground: np.ndarray


def read_values(array: np.ndarray, source: str | os.PathLike) -> MaskReading:
    """The :class:`MaskReading` of a mask ``array`` (H, W[, C]) read from ``source``."""
    values = mask_values(array)
    threshold = mask_threshold(values, source)
    return MaskReading(values, threshold, values > threshold)


def read_binary_mask(path: str | os.PathLike) -> np.ndarray:
    """A mask file as the (H, W) bool foreground that training sees."""
    return read_values(read_mask_array(path), path).foreground


def mask_colours(
    array: np.ndarray, source: str | os.PathLike, foreground: np.ndarray | None = None
) -> list[tuple[int, int, int]]:
    """The hues of the foreground of an (H, W, C>=3) mask, as mean RGB triples, most pixels first: one for grey saved
    as RGB or a one-colour mask, several for a colour-coded (multi-class) mask; [] for grey (H, W) masks.
    ``foreground``: its (H, W) bool foreground, when known.

    Each channel divided by the pixel's maximum is rounded to 0, 1/2 or 1, so brightness, JPEG noise and
    anti-aliased edges keep a pixel's hue; hues below ``MIN_COLOUR_SHARE`` / ``MIN_COLOUR_PIXELS`` are left out.
    Masks over ``COLOUR_SAMPLE_PIXELS`` are read at every second row and column.
    """
    if array.ndim != 3 or array.shape[-1] < 3:
        return []
    foreground = read_values(array, source).foreground if foreground is None else foreground
    step = 2 if foreground.size > COLOUR_SAMPLE_PIXELS else 1
    pixels = array[::step, ::step, :3][foreground[::step, ::step]].astype(np.int64)  # (N, 3)
    if not len(pixels):
        return []
    top = np.maximum.reduce([pixels[:, 0], pixels[:, 1], pixels[:, 2]])[:, None]
    levels = (4 * pixels >= top).astype(np.int64) + (4 * pixels >= 3 * top)  # round(2 * channel / top)
    hues = levels @ np.array([9, 3, 1])
    counts = np.bincount(hues, minlength=27)
    least = max(MIN_COLOUR_PIXELS / step**2, MIN_COLOUR_SHARE * len(pixels))
    return [
        tuple(int(v) for v in np.rint(pixels[hues == hue].mean(axis=0)))
        for hue in np.argsort(-counts, kind="stable")
        if counts[hue] >= least
    ]


def distinct_values(values: np.ndarray) -> np.ndarray:
    """Sorted distinct values of a mask (a histogram for 8- and 16-bit masks, which is faster than sorting)."""
    if values.dtype in (np.uint8, np.uint16):
        return np.flatnonzero(np.bincount(values.ravel()))
    return np.unique(values)


def mask_format(reading: MaskReading, source: str | os.PathLike, channels: int = 1, distinct=None) -> str:
    """A short name of how a mask stores its foreground, e.g. "0/255", "0/255 with JPEG noise", "instance ids 0..7",
    "16-bit 0/65535", "all background"; "saved as RGB" when ``channels`` > 1. ``distinct``: its distinct values,
    when known."""
    values, threshold = reading.values, reading.threshold
    depth = {np.dtype(np.uint8): "", np.dtype(np.uint16): "16-bit "}.get(values.dtype, f"{values.dtype} ")
    distinct = distinct_values(values) if distinct is None else distinct
    distinct = [f"{v:g}" for v in distinct[:3].tolist()]
    top = f"{values.max():g}" if values.size else "0"
    if not reading.foreground.any():
        kind = "all background"
    elif len(distinct) == 1:
        kind = f"all foreground {top}"
    elif len(distinct) == 2:
        kind = "/".join(distinct)
    elif threshold == 0:
        kind = f"instance ids 0..{top}"
    else:
        kind = f"0/{top} with {'JPEG noise' if is_jpeg(source) else 'intermediate values'}"
    return f"{depth}{kind}" + (" saved as RGB" if channels > 1 else "")


def _lowest_and_highest(values: list[float]) -> tuple[list[float], list[float]]:
    """All ``values`` (and no second list), or their VALUES_SHOWN // 2 lowest and highest."""
    half = VALUES_SHOWN // 2
    return (values, []) if len(values) <= VALUES_SHOWN else (values[:half], values[-half:])


class LabelValues:
    """What the masks of a dataset hold: their distinct values, their formats (:func:`mask_format`) and how many
    have foreground. :meth:`add` one mask at a time; :meth:`summary` for a fingerprint, ``str`` for one line."""

    def __init__(self) -> None:
        self.values: set[float] = set()
        self.formats: Counter[str] = Counter()
        self.masks = self.with_foreground = 0

    def add(self, array: np.ndarray, source: str | os.PathLike) -> MaskReading:
        """Record the mask ``array`` (H, W[, C]) read from ``source``; return its :class:`MaskReading`."""
        reading = read_values(array, source)
        distinct = distinct_values(reading.values)
        self._keep(float(v) for v in distinct)
        self.formats[mask_format(reading, source, array.shape[-1] if array.ndim == 3 else 1, distinct)] += 1
        self.masks += 1
        self.with_foreground += bool(reading.foreground.any())
        return reading

    def merge(self, other: LabelValues) -> None:
        """Add what ``other`` recorded (the masks of another thread)."""
        self._keep(other.values)
        self.formats.update(other.formats)
        self.masks += other.masks
        self.with_foreground += other.with_foreground

    def _keep(self, values: Iterable[float]) -> None:
        """Add ``values``; beyond VALUES_KEPT keep the lowest and highest half of them."""
        self.values.update(values)
        if len(self.values) > VALUES_KEPT:
            ordered = sorted(self.values)
            self.values = set(ordered[: VALUES_KEPT // 2] + ordered[-VALUES_KEPT // 2 :])

    def sorted_values(self) -> list[float]:
        return sorted(self.values)

    def summary(self) -> dict[str, object]:
        """``label_values`` (at most VALUES_SHOWN: the lowest and highest), ``distinct_label_values``,
        ``mask_formats`` (format: masks, most first) and ``masks_with_foreground``."""
        low, high = _lowest_and_highest(self.sorted_values())
        return {
            "label_values": [int(v) if v.is_integer() else v for v in low + high],
            "distinct_label_values": len(self.values),
            "mask_formats": dict(self.formats.most_common()),
            "masks_with_foreground": self.with_foreground,
        }

    def __str__(self) -> str:
        formats = ", ".join(f"{name}: {count}" for name, count in self.formats.most_common())
        shown = ", ..., ".join(
            ", ".join(f"{v:g}" for v in part) for part in _lowest_and_highest(self.sorted_values()) if part
        )
        count = f"{len(self.values)}{'+' if len(self.values) >= VALUES_KEPT else ''} distinct"
        return f"label values {shown} ({count}) in {self.masks} mask(s); {formats}"
