"""Where the checkpoints of a cross-validation go and how they are found again: fold K of ``ckpt_dir`` trains into
``ckpt_dir/fold_K`` (stage 1 in ``fold_K/stage1``, stage 2 in ``fold_K``), and a ``ckpt_dir`` that holds folds and no
model of its own is predicted with the ensemble of its folds (configs/inference.json's ``ckpt_paths``)."""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

from ..data.folds import fold_index, parse_fold
from ..errors import MissingFileError
from .checkpoints import final_or_stage1_checkpoint

logger = logging.getLogger(__name__)

FOLD_PREFIX = "fold_"
RESUME_FILE = "resume.pt"  # train.json's resume_ckpt: present while a training is unfinished
_FOLD_NAME = re.compile(rf"{FOLD_PREFIX}(\d+)")


def fold_dir(folder: str | os.PathLike, fold: int | str | None, num_folds: int | str = 5) -> str:
    """``folder`` when ``fold`` is None, else ``folder/fold_<fold>`` (train.json's ``fold_ckpt_dir``, and the
    TensorBoard ``output_dir`` of a fold)."""
    index = fold_index(fold, num_folds)
    return str(folder) if index is None else str(Path(folder) / f"{FOLD_PREFIX}{index}")


def fold_folders(ckpt_dir: str | os.PathLike) -> list[Path]:
    """The ``fold_K`` folders of ``ckpt_dir``, by K (none when it does not exist)."""
    root = Path(ckpt_dir)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := _FOLD_NAME.fullmatch(p.name))]
    return [path for _, path in sorted(found)]


def has_own_model(ckpt_dir: str | os.PathLike) -> bool:
    """Whether ``ckpt_dir`` holds a model of its own (``model.pt`` or ``stage1/model.pt``), beside any folds."""
    return any((Path(ckpt_dir) / name).is_file() for name in ("model.pt", "stage1/model.pt"))


def is_finished(folder: str | os.PathLike) -> bool:
    """Whether the training into ``folder`` (a fold's folder) has a model and no resume checkpoint left."""
    folder = Path(folder)
    unfinished = any((folder / sub / RESUME_FILE).is_file() for sub in ("", "stage1"))
    return has_own_model(folder) and not unfinished


def fold_checkpoints(ckpt_dir: str | os.PathLike) -> list[str]:
    """The best checkpoint of every fold of ``ckpt_dir`` (stage 2's when a fold has one, else stage 1's), by fold;
    for ``--ckpt_paths "$bundle.training.folds.fold_checkpoints('runs/cv')"``.

    Raises MissingFileError naming the folds that are missing or unfinished (a resume checkpoint is left)."""
    folders = fold_folders(ckpt_dir)
    if not folders:
        raise MissingFileError(f"{ckpt_dir} holds no fold_K folders; train them with scripts/train_folds.py.")
    unfinished = [folder.name for folder in folders if not is_finished(folder)]
    if unfinished:
        raise MissingFileError(
            f"{ckpt_dir}: {', '.join(unfinished)} unfinished (no model.pt, or a resume.pt left); finish them with "
            "scripts/train_folds.py (it resumes), or predict with one fold: --fold K."
        )
    return [final_or_stage1_checkpoint(folder) for folder in folders]


def model_checkpoint(ckpt_dir: str | os.PathLike, fold: int | str | None = None) -> str:
    """inference.json's ``ckpt_path``: with ``fold``, that fold's checkpoint; else ``ckpt_dir``'s own model (stage 2,
    else stage 1) or, in a folder of folds only, the first fold's (its network settings and input size serve the
    ensemble)."""
    index = parse_fold(fold)
    if index is not None:
        return final_or_stage1_checkpoint(Path(ckpt_dir) / f"{FOLD_PREFIX}{index}")
    if has_own_model(ckpt_dir) or not fold_folders(ckpt_dir):
        return final_or_stage1_checkpoint(ckpt_dir)
    return fold_checkpoints(ckpt_dir)[0]


def ensemble_checkpoints(ckpt_dir: str | os.PathLike, fold: int | str | None = None) -> list[str]:
    """inference.json's ``ckpt_paths``: :func:`fold_checkpoints` of ``ckpt_dir`` when it holds folds and no model of
    its own and no ``fold`` is chosen; else ``[]`` (one model)."""
    if parse_fold(fold) is not None or has_own_model(ckpt_dir) or not fold_folders(ckpt_dir):
        return []
    paths = fold_checkpoints(ckpt_dir)
    logger.info("ensemble of the %d folds of %s", len(paths), ckpt_dir)
    return paths
