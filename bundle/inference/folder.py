"""Folder inference for ``configs/inference.json``: which files to segment and where their outputs go (planning),
and decoding in DataLoader workers with bad files kept aside.

The config runs them through MONAI's ``SupervisedEvaluator``: ``plan`` (:class:`FolderPlan`) -> ``dataset``
(:class:`DecodingDataset`) -> ``dataloader`` (:class:`DecodedBatches`) -> ``predictor``
(:mod:`bundle.backends.predictors`) -> ``postprocessing`` (:mod:`bundle.inference.postprocessing`) -> ``writer``
(:class:`bundle.inference.writers.FolderWriter`). MONAI Label uses the same ``preprocessing``, ``inferer`` and ``postprocessing``.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from monai.data import Dataset, list_data_collate
from torch.utils.data import DataLoader

from ..atomic_files import check_output_dir
from ..config import flag
from ..data.readers import header_problem
from ..distributed import barrier
from ..errors import DatasetError
from ..formats import error_reason, is_nifti, is_video, split_suffix
from .outputs import (
    output_bases,
    remove_partial_folders,
    remove_stale_temporaries,
    video_outputs,
    without_earlier_outputs,
)
from .report import SKIPPED, error_row
from .sharding import check_shard, in_shard, merge_partial_reports, report_path

# ---------------------------------------------------------------- planning


@dataclass(frozen=True)
class InputPlan:
    """One file under ``dataset_dir`` and where its outputs go.

    ``outputs`` is empty when the file cannot be segmented (``error`` then says why).
    """

    source: Path
    relative: str
    outputs: dict[str, Path]
    error: str = ""


def discover_files(dataset_dir: str | os.PathLike, exclude: str | os.PathLike | None = None) -> list[Path]:
    """Every non-hidden entry under ``dataset_dir`` that is a file or looks like one (a dangling link, a folder with
    an image suffix: these get an error row), recursively and sorted, except those under ``exclude`` (the output
    folder, when it lies inside ``dataset_dir``; when it is ``dataset_dir`` itself, earlier outputs are left out).

    Raises DatasetError when the folder does not exist or holds no files.
    """
    root = Path(os.path.abspath(dataset_dir))
    if not root.is_dir():
        raise DatasetError(f"dataset_dir does not exist or is not a directory: {root}; pass --dataset_dir FOLDER.")
    excluded = Path(os.path.realpath(exclude)) if exclude else None
    # the output folder inside dataset_dir, as a prefix of real paths (checked once per file: a million files plan fast)
    inside = os.path.join(excluded, "") if excluded is not None and excluded != root.resolve() else None
    files = []
    for path in root.rglob("*"):
        if any(part.startswith(".") for part in path.relative_to(root).parts):
            continue
        if inside is not None and os.path.realpath(path).startswith(inside):
            continue
        if path.is_file() or (split_suffix(path.name)[1] and (path.is_dir() or not path.exists())):
            files.append(path)
    files = sorted(files)
    if excluded == root.resolve():
        files = without_earlier_outputs(files)
    if not files:
        raise DatasetError(f"dataset_dir holds no files to segment: {root}; pass a folder of images.")
    return files


def plan_outputs(
    files: Sequence[Path],
    dataset_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    save_probabilities: bool = False,
    save_overlay: bool = False,
    save_frames: bool = False,
) -> list[InputPlan]:
    """An :class:`InputPlan` per file; the output tree under ``output_dir`` mirrors ``dataset_dir``.

    Outputs: ``mask`` (``<base>_mask.png``, or ``<base>_mask.nii.gz`` for NIfTI input), optional
    ``probabilities`` (``<base>_prob.npy``) and ``overlay`` (``<base>_overlay.png``); a video's are
    :func:`~bundle.inference.outputs.video_outputs`.
    """
    root, out = Path(os.path.abspath(dataset_dir)), Path(os.path.abspath(output_dir))
    bases = output_bases(files, root)
    plans = []
    for path in files:
        relative = path.relative_to(root).as_posix()
        problem = unusable_entry(path, path in bases or is_video(path.name))
        if problem:
            plans.append(InputPlan(path, relative, {}, problem))
            continue
        if is_video(path.name):
            base = out / path.relative_to(root).parent / path.name.rsplit(".", 1)[0]
            plans.append(InputPlan(path, relative, video_outputs(path, base, files, save_frames)))
            continue
        base = str(out / bases[path])
        outputs = {"mask": Path(base + ("_mask.nii.gz" if is_nifti(path.name) else "_mask.png"))}
        if save_probabilities:
            outputs["probabilities"] = Path(base + "_prob.npy")
        if save_overlay:
            outputs["overlay"] = Path(base + "_overlay.png")
        plans.append(InputPlan(path, relative, outputs))
    return plans


def unusable_entry(path: Path, supported: bool) -> str:
    """Why the entry ``path`` cannot be segmented before it is even opened, or "" when it may be."""
    if path.is_symlink() and not path.exists():
        return f"dangling symbolic link to {os.readlink(path)}; fix or remove the link"
    if path.is_dir():
        return "a folder with an image suffix, not a file; rename it"
    if not supported:
        return "unsupported format"
    if not os.access(path, os.R_OK):
        return "permission denied; make the file readable (chmod +r)"
    if path.stat().st_size == 0:
        return "empty file"
    return ""


def estimated_output_bytes(plan: InputPlan) -> int:
    """A rough upper estimate of what segmenting ``plan`` writes: a mask about a tenth of the input file (PNG of a
    binary mask), probabilities 4 bytes and an overlay 3 bytes per pixel (pixels guessed from the file size)."""
    size = plan.source.stat().st_size
    estimate = size // 10 + 4096
    if "probabilities" in plan.outputs:
        estimate += 4 * size
    if "overlay" in plan.outputs:
        estimate += 3 * size
    return estimate


class FolderPlan:
    """The inputs under ``dataset_dir`` and what a run does with each: segment it, skip it (its outputs exist and
    not ``overwrite``) or report why it cannot (``rows``: report rows of the inputs not segmented, by index).
    With ``world_size`` > 1 (torchrun) it plans rank ``rank``'s share only (blocks of ``shard_block`` inputs); its
    rows go to ``report_path`` (:mod:`bundle.inference.sharding`).
    """

    def __init__(
        self,
        dataset_dir: str | os.PathLike,
        output_dir: str | os.PathLike,
        overwrite: bool | str = False,
        save_probabilities: bool | str = False,
        save_overlay: bool | str = False,
        save_frames: bool | str = False,
        rank: int | str = 0,
        world_size: int | str = 1,
        shard_block: int = 1,
    ) -> None:
        self.dataset_dir, self.output_dir = Path(dataset_dir), Path(output_dir)
        self.rank, self.world_size = check_shard(rank, world_size)
        self.overwrite = flag(overwrite, "overwrite")
        files = discover_files(dataset_dir, exclude=output_dir)
        self.inputs = plan_outputs(
            files,
            dataset_dir,
            output_dir,
            flag(save_probabilities, "save_probabilities"),
            flag(save_overlay, "save_overlay"),
            flag(save_frames, "save_frames"),
        )
        self.rows: dict[int, dict[str, object]] = {}
        self.todo: list[int] = []
        self.videos: list[int] = []  # segmented by bundle.video.runner.VideoRunner
        for index, plan in enumerate(self.inputs):
            if not in_shard(index, self.rank, self.world_size, shard_block):
                continue
            if plan.error:
                self.rows[index] = error_row(plan.relative, plan.error)
            elif not self.overwrite and any(path.exists() for path in plan.outputs.values()):
                self.rows[index] = {
                    "path": plan.relative,
                    "status": SKIPPED,
                    "mask": self.relative(plan.outputs["mask"]),
                }
            else:
                (self.videos if is_video(plan.source.name) else self.todo).append(index)
        check_output_dir(self.output_dir, sum(estimated_output_bytes(self.inputs[index]) for index in self.todo))
        if self.rank == 0:  # what a killed run left, before any rank writes
            self.merge_reports()
            remove_stale_temporaries(self.output_dir)
            remove_partial_folders(self.output_dir)
        barrier()
        self.report_path = report_path(self.output_dir, self.rank, self.world_size)

    def merge_reports(self) -> dict[str, dict[str, str]]:
        """Rank 0: the partial reports of a sharded run appended to ``predictions.csv`` in input order
        (:mod:`bundle.inference.sharding`); the current row of each path."""
        order = {plan.relative: index for index, plan in enumerate(self.inputs)}
        return merge_partial_reports(self.output_dir, order)

    def relative(self, path: Path) -> str:
        return Path(os.path.relpath(path, os.path.abspath(self.output_dir))).as_posix()

    def data(self) -> list[dict[str, object]]:
        """``[{"image": path, "index": i}]`` of the inputs to segment, ``i`` indexing ``inputs``."""
        return [{"image": str(self.inputs[index].source), "index": index} for index in self.todo]


# ---------------------------------------------------------------- decoding

DEFAULT_MAX_PIXELS = 50_000_000  # larger images are refused (a 50-megapixel RGB image decodes to 150 MB)


class DecodingDataset(Dataset):
    """MONAI ``Dataset`` whose items never raise: a file that fails its header check
    (:func:`~bundle.data.readers.header_problem`: unreadable, not an image, over ``max_pixels``) or fails to decode gives
    ``{"index", "error": reason}``, so one bad file never stops a DataLoader worker or its batch."""

    def __init__(self, data: Sequence[dict], transform: Callable, max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
        super().__init__(data, transform)
        self.max_pixels = int(max_pixels)

    def _transform(self, index: int) -> dict:
        item = self.data[index]
        try:
            problem = header_problem(item["image"], self.max_pixels)
            return {"index": item["index"], "error": problem} if problem else dict(super()._transform(index))
        except Exception as error:  # any decoder or transform failure becomes an error row
            return {"index": item["index"], "error": error_reason(error)}


def split_failures(items: list[dict]) -> tuple[list[dict], list[dict]]:
    """DataLoader ``collate_fn``: (decoded items, failure markers) of one batch, items left uncollated."""
    return [item for item in items if "error" not in item], [item for item in items if "error" in item]


def collate_signature(item: dict) -> tuple:
    """What must agree for items to collate into one batch: each image meta entry's name, type and shape
    (a PNG's 3×3 affine and a NIfTI's 4×4 one do not stack)."""
    meta = getattr(item["image"], "meta", {})
    return tuple((key, type(value).__name__, np.shape(value)) for key, value in sorted(meta.items()))


class DecodedBatches:
    """Batches of decoded items (MONAI ``list_data_collate``) for an engine; failures are kept in ``failures``.

    Workers decode ahead of the model (``num_workers``), so decoding overlaps inference. Items are batched with
    items of the same :func:`collate_signature` (in a mixed folder, PNGs with PNGs, NIfTIs with NIfTIs), so
    every batch keeps MONAI's full metadata. An iterable without a length: the engine's epoch ends when the
    files do, however many failed.
    """

    def __init__(self, dataset: DecodingDataset, batch_size: int = 8, num_workers: int = 2) -> None:
        self.batch_size = batch_size
        self.loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, collate_fn=split_failures)
        self.failures: list[dict] = []

    def __iter__(self) -> Iterator[dict]:
        pending: dict[tuple, list[dict]] = defaultdict(list)
        for items, failures in self.loader:
            self.failures += failures
            for item in items:
                group = pending[collate_signature(item)]
                group.append(item)
                if len(group) == self.batch_size:
                    yield list_data_collate(group)
                    group.clear()
        for group in pending.values():
            if group:
                yield list_data_collate(group)
