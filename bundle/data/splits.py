"""Train / validation / test splits of image-mask pairs: by test names and a seeded shuffle, the validation split as
test (sets released without one), and small training subsets."""

from __future__ import annotations

import math
import os
import random
from collections.abc import Iterable, Sequence

from ..formats import split_suffix

Pair = dict[str, str]  # {"image": path, "label": path}
MAX_LISTED = 10


def format_files(items: Sequence[object]) -> str:
    """Comma-separated listing of at most ``MAX_LISTED`` items, then ``and N more``."""
    shown = ", ".join(str(item) for item in items[:MAX_LISTED])
    extra = len(items) - MAX_LISTED
    return shown + (f" and {extra} more" if extra > 0 else "")


def pair_key(pair: Pair) -> tuple[str, str]:
    return pair["image"], pair["label"]


def select_by_names(pairs: Sequence[Pair], names: Iterable[str]) -> tuple[list[Pair], list[Pair], list[str]]:
    """Split ``pairs`` into (named, others) by image stem; also return the names that matched nothing."""
    wanted: dict[str, str] = {}
    for name in names:
        name = name.strip()
        if name:
            wanted.setdefault(split_suffix(os.path.basename(name))[0], name)
    selected: list[Pair] = []
    others: list[Pair] = []
    found: set[str] = set()
    for pair in pairs:
        stem = split_suffix(os.path.basename(pair["image"]))[0]
        if stem in wanted:
            selected.append(pair)
            found.add(stem)
        else:
            others.append(pair)
    return selected, others, [name for stem, name in wanted.items() if stem not in found]


def split_pairs(
    pairs: Sequence[Pair], val_fraction: float = 0.2, seed: int = 0, test_names: Iterable[str] | None = None
) -> dict[str, list[Pair]]:
    """Split pairs into ``training`` / ``validation`` / ``test`` (each sorted).

    Pairs whose image name (with or without extension) is in ``test_names`` go to ``test``; a seeded shuffle
    sends ``round(val_fraction * rest)`` of the others (at least 1 when there are 2 or more) to ``validation``.
    When every image stem is a frame number, whole blocks of consecutive frames are shuffled instead
    (:func:`in_contiguous_blocks`), so that validation does not leak frames of the training sequences.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    ordered = sorted(pairs, key=pair_key)
    test: list[Pair] = []
    rest = ordered
    if test_names is not None:
        test, rest, missing = select_by_names(ordered, test_names)
        if missing:
            raise ValueError(
                f"{len(missing)} test name(s) match no image among the {len(ordered)} pairs: {format_files(missing)}"
            )
    n_val = 0
    if val_fraction > 0 and len(rest) >= 2:
        n_val = min(max(1, math.floor(len(rest) * val_fraction + 0.5)), len(rest) - 1)
    if frame_numbers(rest) is not None:
        rest = in_contiguous_blocks(rest, frame_numbers(rest), seed)
    else:
        random.Random(seed).shuffle(rest)
    return {
        "training": sorted(rest[n_val:], key=pair_key),
        "validation": sorted(rest[:n_val], key=pair_key),
        "test": test,
    }


VALIDATION_BLOCKS = 10


def frame_numbers(pairs: Sequence[Pair]) -> list[int] | None:
    """The image stems as integers when every stem is one (frames of recordings, e.g. CVC-ClinicDB), else None."""
    stems = [split_suffix(os.path.basename(pair["image"]))[0] for pair in pairs]
    return [int(stem) for stem in stems] if stems and all(stem.isdigit() for stem in stems) else None


def in_contiguous_blocks(pairs: Sequence[Pair], numbers: Sequence[int], seed: int) -> list[Pair]:
    """``pairs`` in frame-number order cut into ``VALIDATION_BLOCKS`` contiguous blocks, the blocks in a seeded
    order: a validation split taken from the front then holds whole runs of consecutive frames, so frames of one
    sequence rarely straddle training and validation."""
    ordered = [pair for _, pair in sorted(zip(numbers, pairs), key=lambda item: item[0])]
    size = math.ceil(len(ordered) / VALIDATION_BLOCKS)
    blocks = [ordered[start : start + size] for start in range(0, len(ordered), size)]
    random.Random(seed).shuffle(blocks)
    return [pair for block in blocks for pair in block]


def validation_as_test(
    datalist: dict[str, list[Pair]], val_fraction: float = 0.2, seed: int = 0
) -> dict[str, list[Pair]]:
    """Hold the ``validation`` split out as ``test`` and split a new validation set off ``training``.

    For sets released with train/val only (ISIC 2017's official split): checkpoints are then selected on
    training data and the official validation images stay unseen. Raises when ``test`` is already filled.
    """
    if datalist.get("test"):
        raise ValueError("the datalist already has a test split; keep its validation split as it is")
    split = split_pairs(datalist["training"], val_fraction=val_fraction, seed=seed)
    return {"training": split["training"], "validation": split["validation"], "test": datalist["validation"]}


def training_subset(
    datalist: dict[str, list[Pair]], num_images: int, val_fraction: float = 0.2, seed: int = 0
) -> dict[str, list[Pair]]:
    """Keep a seeded choice of ``num_images`` training + validation pairs, split validation off them again.

    For small-data studies: the result trains and selects checkpoints on ``num_images`` pairs in all;
    ``test`` is unchanged. Raises when fewer pairs are available.
    """
    pool = sorted(datalist["training"] + datalist.get("validation", []), key=pair_key)
    if not 2 <= num_images <= len(pool):
        raise ValueError(f"training_subset: need 2..{len(pool)} images (training + validation), got {num_images}")
    chosen = random.Random(seed).sample(pool, num_images)
    return {**split_pairs(chosen, val_fraction=val_fraction, seed=seed), "test": datalist.get("test", [])}
