"""Folder inference for ``configs/inference.json``: which files to segment and where their outputs go, decoding
in DataLoader workers with bad files kept aside, binary masks, and the handler that writes masks and the report.

The config runs them through MONAI's ``SupervisedEvaluator``: ``dataset`` (:class:`DecodingDataset`) ->
``dataloader`` (:class:`DecodedBatches`) -> ``predictor`` -> ``postprocessing`` -> ``writer``
(:class:`FolderWriter`). MONAI Label uses the same ``preprocessing``, ``inferer`` and ``postprocessing``.
"""

from __future__ import annotations

import logging
import os
from collections import defaultdict
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from ignite.engine import Engine, Events
from monai.config import KeysCollection
from monai.data import Dataset, list_data_collate
from monai.transforms import FillHoles, KeepLargestConnectedComponent, MapTransform
from monai.utils import convert_to_dst_type
from skimage.measure import label as label_components
from skimage.morphology import remove_small_objects
from skimage.segmentation import find_boundaries
from torch.utils.data import DataLoader

from .config import flag
from .formats import error_reason, is_nifti, split_suffix
from .io import atomic_write_csv, write_nifti_mask, write_npy, write_png
from .transforms import ToImageLayoutd

logger = logging.getLogger(__name__)

REPORT_NAME = "predictions.csv"
REPORT_FIELDS: tuple[str, ...] = (
    "path",
    "status",
    "height",
    "width",
    "foreground_fraction",
    "components",
    "mean_foreground_probability",
    "mask",
)
OK, SKIPPED = "ok", "skipped: output exists"
OVERLAY_COLOUR = (0, 255, 0)


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
    """Every non-hidden file under ``dataset_dir``, recursively and sorted, except those in a subfolder ``exclude``.

    Raises FileNotFoundError when the folder does not exist and ValueError when it holds no files.
    """
    root = Path(os.path.abspath(dataset_dir))
    if not root.is_dir():
        raise FileNotFoundError(f"dataset_dir does not exist or is not a directory: {root}")
    excluded = Path(os.path.abspath(exclude)) if exclude else root
    files = sorted(
        path
        for path in root.rglob("*")
        if path.is_file()
        and not any(part.startswith(".") for part in path.relative_to(root).parts)
        and (excluded == root or excluded not in path.parents)
    )
    if not files:
        raise ValueError(f"dataset_dir holds no files to segment: {root}")
    return files


def output_bases(files: Sequence[Path], root: Path) -> dict[Path, Path]:
    """Output path stem, relative to ``root``, of each supported image: ``sub/a`` for ``sub/a.png``.

    When several images in one folder share a stem (``a.png``, ``a.jpg``), each gets its extension:
    ``sub/a_png``, ``sub/a_jpg``. Files with unsupported extensions get no entry.
    """
    groups: dict[tuple[Path, str], list[Path]] = defaultdict(list)
    for path in files:
        stem, suffix = split_suffix(path.name)
        if suffix:
            groups[(path.parent, stem)].append(path)
    bases = {}
    for (folder, stem), group in groups.items():
        for path in group:
            extension = path.name[len(stem) + 1 :].replace(".", "_")
            name = f"{stem}_{extension}" if len(group) > 1 else stem
            bases[path] = (folder / name).relative_to(root)
    return bases


def plan_outputs(
    files: Sequence[Path],
    dataset_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    save_probabilities: bool = False,
    save_overlay: bool = False,
) -> list[InputPlan]:
    """An :class:`InputPlan` per file; the output tree under ``output_dir`` mirrors ``dataset_dir``.

    Outputs: ``mask`` (``<base>_mask.png``, or ``<base>_mask.nii.gz`` for NIfTI input), optional
    ``probabilities`` (``<base>_prob.npy``) and ``overlay`` (``<base>_overlay.png``).
    """
    root, out = Path(os.path.abspath(dataset_dir)), Path(os.path.abspath(output_dir))
    bases = output_bases(files, root)
    plans = []
    for path in files:
        relative = path.relative_to(root).as_posix()
        if path not in bases:
            plans.append(InputPlan(path, relative, {}, "unsupported format"))
            continue
        if path.stat().st_size == 0:
            plans.append(InputPlan(path, relative, {}, "empty file"))
            continue
        base = str(out / bases[path])
        outputs = {"mask": Path(base + ("_mask.nii.gz" if is_nifti(path.name) else "_mask.png"))}
        if save_probabilities:
            outputs["probabilities"] = Path(base + "_prob.npy")
        if save_overlay:
            outputs["overlay"] = Path(base + "_overlay.png")
        plans.append(InputPlan(path, relative, outputs))
    return plans


class FolderPlan:
    """The inputs under ``dataset_dir`` and what a run does with each: segment it, skip it (its outputs exist and
    not ``overwrite``) or report why it cannot (``rows``: report rows of the inputs not segmented, by index).
    """

    def __init__(
        self,
        dataset_dir: str | os.PathLike,
        output_dir: str | os.PathLike,
        overwrite: bool | str = False,
        save_probabilities: bool | str = False,
        save_overlay: bool | str = False,
    ) -> None:
        self.dataset_dir, self.output_dir = Path(dataset_dir), Path(output_dir)
        self.overwrite = flag(overwrite, "overwrite")
        files = discover_files(dataset_dir, exclude=output_dir)
        self.inputs = plan_outputs(
            files,
            dataset_dir,
            output_dir,
            flag(save_probabilities, "save_probabilities"),
            flag(save_overlay, "save_overlay"),
        )
        self.rows: dict[int, dict[str, object]] = {}
        self.todo: list[int] = []
        for index, plan in enumerate(self.inputs):
            if plan.error:
                self.rows[index] = error_row(plan, plan.error)
            elif not self.overwrite and any(path.exists() for path in plan.outputs.values()):
                self.rows[index] = {
                    "path": plan.relative,
                    "status": SKIPPED,
                    "mask": self.relative(plan.outputs["mask"]),
                }
            else:
                self.todo.append(index)

    def relative(self, path: Path) -> str:
        return Path(os.path.relpath(path, os.path.abspath(self.output_dir))).as_posix()

    def data(self) -> list[dict[str, object]]:
        """``[{"image": path, "index": i}]`` of the inputs to segment, ``i`` indexing ``inputs``."""
        return [{"image": str(self.inputs[index].source), "index": index} for index in self.todo]


def error_row(plan: InputPlan, reason: str) -> dict[str, object]:
    logger.warning("%s: %s", plan.relative, reason)
    return {"path": plan.relative, "status": f"error: {reason}"}


# ---------------------------------------------------------------- decoding


class DecodingDataset(Dataset):
    """MONAI ``Dataset`` whose items never raise: a file that fails to decode gives ``{"index", "error": reason}``,
    so one bad file never stops a DataLoader worker or its batch."""

    def _transform(self, index: int) -> dict:
        try:
            return dict(super()._transform(index))
        except Exception as error:  # any decoder or transform failure becomes an error row
            return {"index": self.data[index]["index"], "error": error_reason(error)}


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


# ---------------------------------------------------------------- post-processing


def postprocess_mask(
    probabilities: np.ndarray,
    threshold: float = 0.5,
    keep_largest_component: bool = False,
    fill_holes: bool = False,
    min_component_size: int = 0,
) -> np.ndarray:
    """(H, W) foreground probabilities -> (H, W) bool mask.

    In order: ``>= threshold``; drop 8-connected components of fewer than ``min_component_size``
    pixels; fill holes; keep only the largest component.
    """
    mask = probabilities >= threshold
    if min_component_size > 0:
        mask = remove_small_objects(mask, max_size=min_component_size - 1, connectivity=2)
    if fill_holes:
        mask = FillHoles()(mask[None].astype(np.uint8))[0] > 0
    if keep_largest_component:
        mask = KeepLargestConnectedComponent()(mask[None].astype(np.uint8))[0] > 0
    return np.asarray(mask, dtype=bool)


class BinaryMaskd(MapTransform):
    """(1, H, W) foreground probabilities -> (1, H, W) float {0, 1} mask by :func:`postprocess_mask`.

    The probabilities are kept under ``prob_key``.
    """

    def __init__(
        self,
        keys: KeysCollection,
        threshold: float = 0.5,
        keep_largest_component: bool = False,
        fill_holes: bool = False,
        min_component_size: int = 0,
        prob_key: str = "prob",
    ) -> None:
        super().__init__(keys)
        self.options = {
            "threshold": threshold,
            "keep_largest_component": keep_largest_component,
            "fill_holes": fill_holes,
            "min_component_size": min_component_size,
        }
        self.prob_key = prob_key

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            probabilities = d[key]
            if probabilities.ndim != 3 or probabilities.shape[0] != 1:
                raise ValueError(f"expected one-channel probabilities (1, H, W), got {tuple(probabilities.shape)}.")
            mask = postprocess_mask(probabilities[0].detach().cpu().numpy(), **self.options)
            d[self.prob_key] = probabilities
            d[key] = convert_to_dst_type(mask[None].astype(np.float32), probabilities)[0]
        return d


# ---------------------------------------------------------------- writing


class SaveMaskd(MapTransform):
    """Write a (1, H, W) binary ``pred`` as ``output_dir/<subfolder>/<stem>_mask.png`` (uint8 0/255, rows kept).

    The subfolder mirrors the source image's folder relative to ``data_root_dir``; the source comes from
    ``source_key``'s ``filename_or_obj`` metadata. An existing file raises FileExistsError unless
    ``overwrite``. Writes are atomic.
    """

    def __init__(
        self,
        keys: KeysCollection,
        output_dir: str | os.PathLike,
        data_root_dir: str | os.PathLike,
        source_key: str = "image",
        overwrite: bool | str = False,
    ) -> None:
        super().__init__(keys)
        self.output_dir, self.data_root_dir = Path(output_dir), Path(os.path.abspath(data_root_dir))
        self.source_key, self.overwrite = source_key, flag(overwrite, "overwrite")

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        source = Path(os.path.abspath(d[self.source_key].meta["filename_or_obj"]))
        stem = split_suffix(source.name)[0]
        for key in self.key_iterator(d):
            path = self.output_dir / source.parent.relative_to(self.data_root_dir) / f"{stem}_mask.png"
            if path.exists() and not self.overwrite:
                raise FileExistsError(f"{path} already exists; set overwrite=True or choose another output_dir.")
            write_png(path, (torch.as_tensor(d[key])[0].cpu().numpy() > 0).astype(np.uint8) * 255)
        return d


def contour_overlay(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """(1 or 3, H, W) image in [0, 1] and (H, W) bool mask -> (H, W, 3) uint8 RGB with the mask outline drawn."""
    rgb = (np.clip(np.moveaxis(image, 0, -1), 0, 1) * 255).round().astype(np.uint8)
    rgb = np.repeat(rgb, 3, axis=-1) if rgb.shape[-1] == 1 else rgb
    outline = find_boundaries(np.pad(mask, 1), mode="inner")[1:-1, 1:-1]  # padded: the image edge closes it
    rgb[outline] = OVERLAY_COLOUR
    return rgb


def mask_statistics(mask: np.ndarray, probabilities: np.ndarray) -> dict[str, object]:
    """Report columns of one (H, W) bool mask and its (H, W) probabilities.

    ``mean_foreground_probability`` is empty when the mask is empty.
    """
    foreground = probabilities[mask]
    return {
        "height": mask.shape[0],
        "width": mask.shape[1],
        "foreground_fraction": f"{mask.mean():.6f}",
        "components": int(label_components(mask).max()),
        "mean_foreground_probability": f"{foreground.mean():.6f}" if foreground.size else "",
    }


class FolderWriter:
    """Ignite handler of the folder evaluator: writes each input's outputs, then ``predictions.csv``.

    Per post-processed item: ``pred`` (the mask in the image's layout, :class:`~bundle.transforms.ToImageLayoutd`)
    and ``prob`` ((1, H, W) probabilities). Masks: 2D input -> ``<stem>_mask.png`` (uint8 0/255, (H, W)); NIfTI ->
    ``<stem>_mask.nii.gz`` (uint8 0/1, the input's shape, affine and header). Optional: ``<stem>_prob.npy`` (float32
    (H, W) probabilities in [0, 1], oriented as the mask) and ``<stem>_overlay.png`` (RGB image, mask outline in
    green). Writes are atomic; a failed write costs only its input (an error row).

    ``predictions.csv`` has a row per input in ``plan`` order (segmented, skipped, bad file, or "not processed"
    when the run stopped early). It is rewritten when the run wrote a mask (also when it stops midway), so a
    re-run with nothing new writes nothing. When no input gave a mask or was skipped the run raises at the end.

    Args:
        plan: the :class:`FolderPlan` the evaluator's data come from.
        batches: its :class:`DecodedBatches` (inputs that failed to decode).
        display_transform: ``{"image": path}`` -> ``{"image": (1 or 3, H, W) in [0, 1]}`` for overlays.
    """

    def __init__(
        self, plan: FolderPlan, batches: DecodedBatches, display_transform: Callable[[dict], dict] | None = None
    ) -> None:
        if any("overlay" in item.outputs for item in plan.inputs) and display_transform is None:
            raise ValueError("save_overlay needs a display_transform.")
        self.plan, self.batches, self.display_transform = plan, batches, display_transform
        self.rows: dict[int, dict[str, object]] = {}
        self.finished = False  # the report is written: an error raised after it must not rewrite it

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.write_batch)
        engine.add_event_handler(Events.COMPLETED, self.finish)
        engine.add_event_handler(Events.EXCEPTION_RAISED, self.stopped)

    def write_batch(self, engine: Engine) -> None:
        for item, output in zip(engine.state.batch, engine.state.output):
            index = int(item["index"])
            plan = self.plan.inputs[index]
            try:
                self.rows[index] = self.save(plan, output["pred"], output["prob"], output["image"])
            except Exception as error:  # a failed write costs only this input
                self.rows[index] = error_row(plan, error_reason(error))

    def save(self, plan: InputPlan, pred: torch.Tensor, prob: torch.Tensor, image: torch.Tensor) -> dict[str, object]:
        """Write the outputs of one input; return its report row."""
        mask = ToImageLayoutd.to_rows_first(torch.as_tensor(pred).cpu().numpy(), image) > 0
        probabilities = torch.as_tensor(prob)[0].float().cpu().numpy()
        if is_nifti(plan.source.name):
            write_nifti_mask(plan.outputs["mask"], mask.astype(np.uint8), plan.source)
        else:
            write_png(plan.outputs["mask"], mask.astype(np.uint8) * 255)
        if "probabilities" in plan.outputs:
            write_npy(plan.outputs["probabilities"], probabilities)
        if "overlay" in plan.outputs:
            display = torch.as_tensor(self.display_transform({"image": str(plan.source)})["image"]).cpu().numpy()
            write_png(plan.outputs["overlay"], contour_overlay(display, mask))
        return {
            "path": plan.relative,
            "status": OK,
            **mask_statistics(mask, probabilities),
            "mask": self.plan.relative(plan.outputs["mask"]),
        }

    def report(self) -> list[dict[str, object]]:
        """Write ``predictions.csv`` (unless the run wrote nothing new); return its rows."""
        rows = {**self.plan.rows, **self.rows}
        for failure in self.batches.failures:
            rows[failure["index"]] = error_row(self.plan.inputs[failure["index"]], failure["error"])
        report = [rows.get(index) or error_row(plan, "not processed") for index, plan in enumerate(self.plan.inputs)]
        path = self.plan.output_dir / REPORT_NAME
        if self.plan.overwrite or not path.exists() or any(row["status"] == OK for row in report):
            atomic_write_csv(path, REPORT_FIELDS, report)
        else:  # a re-run that segmented nothing new writes nothing, not even the report
            logger.info("no new mask written; %s left as it was", path)
        return report

    def finish(self, engine: Engine) -> None:
        report = self.report()
        counts = {status: sum(row["status"] == status for row in report) for status in (OK, SKIPPED)}
        path = self.plan.output_dir / REPORT_NAME
        errors = len(report) - sum(counts.values())
        logger.info("%d ok, %d skipped, %d errors; report: %s", counts[OK], counts[SKIPPED], errors, path)
        engine.state.report = report
        self.finished = True
        if not any(counts.values()):
            raise RuntimeError(f"no input in {self.plan.dataset_dir} could be segmented; see {path}.")

    def stopped(self, engine: Engine, error: BaseException) -> None:
        """The run stopped on ``error``: report what was done, then raise it again."""
        if not self.finished:
            self.report()
        raise error
