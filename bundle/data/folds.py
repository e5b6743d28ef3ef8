"""K-fold cross-validation splits, as nnU-Net's five folds: the training + validation pairs cut into ``num_folds``
seeded folds, stratified by source (each dataset folder of a multi-folder ``dataset_dir`` spread evenly over the
folds), numbered frames kept in contiguous blocks; fold K validates and the others train. The test split is
untouched."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

from ..errors import SettingError
from .splits import VALIDATION_BLOCKS, Pair, frame_numbers, pair_key

DEFAULT_NUM_FOLDS = 5  # nnU-Net's


def _integer(value: int | str, name: str) -> int:
    """An integer id (``"2"`` from the command line too); SettingError naming ``--name`` otherwise."""
    try:
        return int(value)
    except (TypeError, ValueError):
        raise SettingError(f"{name} must be an integer, got --{name} {value!r}.") from None


def parse_fold(fold: int | str | None) -> int | None:
    """``fold`` as a non-negative int, or None (no folds); ``"2"`` and ``"null"`` from the command line too."""
    if fold is None or (isinstance(fold, str) and fold.strip().lower() in ("", "none", "null")):
        return None
    index = _integer(fold, "fold")
    if index < 0:
        raise SettingError(f"fold must be 0 or more, got --fold {fold!r}.")
    return index


def fold_index(fold: int | str | None, num_folds: int | str) -> int | None:
    """:func:`parse_fold` of ``fold``, checked against ``num_folds``: raises SettingError naming the ids when
    ``num_folds`` < 2 or ``fold`` is not in ``[0, num_folds)``."""
    index = parse_fold(fold)
    if index is None:
        return None
    num_folds = _integer(num_folds, "num_folds")
    if num_folds < 2:
        raise SettingError(f"num_folds must be at least 2, got {num_folds}; or leave --fold out for no folds.")
    if index >= num_folds:
        raise SettingError(f"fold must be in 0..{num_folds - 1} for --num_folds {num_folds}, got {index}.")
    return index


def fold_units(pairs: Sequence[Pair], num_folds: int, seed: int) -> list[list[Pair]]:
    """``pairs`` (one source) as the units dealt to folds, in a seeded order: single pairs, or, when every image stem
    is a frame number, contiguous runs of frames (``num_folds`` x ceil(VALIDATION_BLOCKS / num_folds) blocks), so
    that frames of one recording rarely straddle two folds."""
    ordered = sorted(pairs, key=pair_key)
    numbers = frame_numbers(ordered)
    if numbers is None:
        units = [[pair] for pair in ordered]
    else:
        ordered = [pair for _, pair in sorted(zip(numbers, ordered), key=lambda item: item[0])]
        count = min(len(ordered), num_folds * math.ceil(VALIDATION_BLOCKS / num_folds))
        bounds = [round(i * len(ordered) / count) for i in range(count + 1)]
        units = [ordered[start:end] for start, end in zip(bounds, bounds[1:])]
    random.Random(seed).shuffle(units)
    return units


def assign_folds(pairs: Sequence[Pair], num_folds: int, seed: int = 0) -> list[list[Pair]]:
    """``pairs`` cut into ``num_folds`` folds (each sorted): per source (a pair's ``source``, one when none is named),
    each unit of :func:`fold_units` goes to the fold that holds the fewest pairs so far, so that every fold gets
    about 1/num_folds of every source. Raises SettingError when there are fewer units than folds."""
    sources: dict[str, list[Pair]] = {}
    for pair in sorted(pairs, key=pair_key):
        sources.setdefault(pair.get("source", ""), []).append(pair)
    folds: list[list[Pair]] = [[] for _ in range(num_folds)]
    for name in sorted(sources):
        units = fold_units(sources[name], num_folds, seed)
        if len(units) < num_folds:
            where = f" of source {name}" if name else ""
            raise SettingError(
                f"{len(sources[name])} training + validation image(s){where} cannot fill {num_folds} folds; "
                "choose a smaller --num_folds."
            )
        for unit in units:
            min(folds, key=len).extend(unit)
    return [sorted(fold, key=pair_key) for fold in folds]


def fold_split(
    datalist: dict[str, list[Pair]], fold: int | str | None, num_folds: int | str = DEFAULT_NUM_FOLDS, seed: int = 0
) -> dict[str, list[Pair]]:
    """train.json's ``fold_datalist``: ``datalist`` unchanged when ``fold`` is None; else its training + validation
    pairs in ``num_folds`` folds (:func:`assign_folds`, seeded by ``split_seed``), ``validation`` = fold ``fold``,
    ``training`` = the other folds, ``test`` unchanged."""
    index = fold_index(fold, num_folds)
    if index is None:
        return datalist
    folds = assign_folds(datalist["training"] + datalist.get("validation", []), int(num_folds), seed)
    training = [pair for k, members in enumerate(folds) if k != index for pair in members]
    return {**datalist, "training": sorted(training, key=pair_key), "validation": folds[index]}
