"""Batch inference on a folder of images: discovery, output naming, backends, post-processing, writing, report.

``configs/inference.json`` builds a :class:`FolderSegmenter` from its ``preprocessing``, ``inferer`` and
``postprocessing``; the same three objects serve MONAI Label on ``{"image": path}`` dicts.
"""

from __future__ import annotations

import csv
import gzip
import io
import logging
import os
from collections import defaultdict
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import FillHoles, KeepLargestConnectedComponent, MapTransform
from monai.utils import convert_to_dst_type
from PIL import Image
from skimage.measure import label as label_components
from skimage.morphology import remove_small_objects
from skimage.segmentation import find_boundaries
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from .checkpoints import network_kwargs_from_checkpoint, read_state_dict
from .config import flag
from .data import split_suffix
from .io import atomic_write, atomic_write_text

logger = logging.getLogger(__name__)

NIFTI_SUFFIXES: tuple[str, ...] = (".nii", ".nii.gz")
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
Predictor = Callable[[torch.Tensor], torch.Tensor]


# ---------------------------------------------------------------- discovery and naming


@dataclass(frozen=True)
class InputPlan:
    """One file under ``dataset_dir`` and where its outputs go.

    ``outputs`` is empty when the file cannot be segmented (``error`` then says why).
    """

    source: Path
    relative: str
    outputs: dict[str, Path]
    error: str = ""

    @property
    def is_nifti(self) -> bool:
        return self.source.name.lower().endswith(NIFTI_SUFFIXES)


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
        nifti = path.name.lower().endswith(NIFTI_SUFFIXES)
        outputs = {"mask": Path(base + ("_mask.nii.gz" if nifti else "_mask.png"))}
        if save_probabilities:
            outputs["probabilities"] = Path(base + "_prob.npy")
        if save_overlay:
            outputs["overlay"] = Path(base + "_overlay.png")
        plans.append(InputPlan(path, relative, outputs))
    return plans


# ---------------------------------------------------------------- backends


class OnnxPredictor:
    """ONNX Runtime model on the CPU: (B, C, H, W) float tensor -> logits (B, 1, H, W) on the input's device."""

    def __init__(self, path: str | os.PathLike) -> None:
        import onnxruntime

        self.session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        logits = self.session.run(None, {self.input_name: images.detach().cpu().numpy()})[0]
        return torch.from_numpy(logits).to(images.device)


def load_network(network: nn.Module, ckpt_path: str | os.PathLike) -> nn.Module:
    """Load the state_dict at ``ckpt_path`` strictly into ``network``; return it in eval mode.

    On a mismatch the ValueError names the network settings the checkpoint needs.
    """
    state = read_state_dict(ckpt_path)
    try:
        network.load_state_dict(state, strict=True)
    except RuntimeError as error:
        needed = " ".join(f"--{key} {value}" for key, value in network_kwargs_from_checkpoint(ckpt_path).items())
        raise ValueError(f"{ckpt_path} does not fit network_def; it needs: {needed}.\n{error}") from error
    return network.eval()


def load_predictor(
    backend: str,
    device: torch.device | str,
    network: nn.Module,
    ckpt_path: str | os.PathLike,
    ts_path: str | os.PathLike,
    onnx_path: str | os.PathLike,
) -> Predictor:
    """The model as a callable (B, C, H, W) -> logits (B, 1, H, W).

    ``backend``: "torch" (``network`` with ``ckpt_path`` loaded strictly), "torchscript" (``ts_path``)
    or "onnx" (``onnx_path``, ONNX Runtime on the CPU).
    """
    if backend == "torch":
        return load_network(network, ckpt_path)
    paths = {"torchscript": ts_path, "onnx": onnx_path}
    if backend not in paths:
        raise ValueError(f"backend must be 'torch', 'torchscript' or 'onnx', got {backend!r}.")
    if not Path(paths[backend]).is_file():
        raise FileNotFoundError(f"{backend} model not found: {paths[backend]}")
    try:
        if backend == "torchscript":
            return torch.jit.load(str(ts_path), map_location=device).eval()
        return OnnxPredictor(onnx_path)
    except Exception as error:  # torch and onnxruntime raise their own error types for broken files
        message = f"{backend} model {paths[backend]} is truncated or corrupt and cannot be read: {error}"
        raise ValueError(message) from error


def export_onnx(network: nn.Module, path: str | os.PathLike, image_size: Sequence[int], in_channels: int = 3) -> None:
    """Export ``network`` to ONNX (opset 17, TorchScript exporter) at ``path``, atomically.

    Input ``image`` (B, in_channels, H, W), output ``pred`` logits (B, 1, H, W); batch, height and
    width are dynamic axes (H and W multiples of 32). Traced at ``image_size`` (H, W).
    """
    network.eval()
    example = torch.zeros(1, in_channels, *image_size, device=next(network.parameters()).device)
    axes = {0: "batch", 2: "height", 3: "width"}
    atomic_write(
        path,
        lambda tmp: torch.onnx.export(
            network,
            (example,),
            str(tmp),
            dynamo=False,
            opset_version=17,
            input_names=["image"],
            output_names=["pred"],
            dynamic_axes={"image": axes, "pred": axes},
        ),
    )


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


# ---------------------------------------------------------------- decoding in workers

class SafeImageDataset(Dataset):
    """``transform({"image": path})`` per file, plus ``"index"``.

    A failure returns ``{"index": i, "error": reason}`` instead of raising, so one bad file never
    stops a DataLoader worker or its batch.
    """

    def __init__(self, files: Sequence[Path], transform: Callable[[dict], dict]) -> None:
        self.files = list(files)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict:
        try:
            item = dict(self.transform({"image": str(self.files[index])}))
        except Exception as error:  # any decoder or transform failure becomes an error row
            return {"index": index, "error": error_reason(error)}
        item["index"] = index
        return item


def split_failures(items: list[dict]) -> tuple[list[dict], list[dict]]:
    """DataLoader ``collate_fn``: (decoded items, failure markers) of one batch, items left uncollated."""
    return [item for item in items if "error" not in item], [item for item in items if "error" in item]


def error_reason(error: BaseException) -> str:
    """First sentence of the innermost exception (MONAI wraps decoder errors in RuntimeErrors), on one line."""
    while error.__cause__ is not None:
        error = error.__cause__
    message = " ".join(str(error).split()).split(". ")[0] or type(error).__name__
    return message[:200]


# ---------------------------------------------------------------- writing


def write_png(path: Path, array: np.ndarray) -> None:
    """Write an (H, W) or (H, W, 3) uint8/uint16 array as PNG, atomically (rows stay rows).

    zlib level 1: lossless like the default 6, several times faster on masks, files a little larger.
    """
    atomic_write(path, lambda tmp: Image.fromarray(array).save(tmp, format="PNG", compress_level=1))


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


def write_nifti_mask(path: Path, mask: np.ndarray, reference: Path) -> None:
    """Write an (X, Y) uint8 mask as gzipped NIfTI with ``reference``'s shape, affine and header, atomically."""
    image = nib.load(str(reference))
    header = image.header.copy()
    header.set_data_dtype(np.uint8)
    header.set_slope_inter(1, 0)
    out = nib.Nifti1Image(mask.reshape(image.shape[:3]), image.affine, header)
    atomic_write(path, lambda tmp: tmp.write_bytes(gzip.compress(out.to_bytes())))


def write_npy(path: Path, array: np.ndarray) -> None:
    """Write ``array`` as .npy, atomically."""

    def save(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.save(f, array)

    atomic_write(path, save)


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


def write_report(path: Path, rows: Sequence[Mapping[str, object]]) -> None:
    """Write ``rows`` (keys from REPORT_FIELDS) as CSV, atomically."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=REPORT_FIELDS, restval="", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue())


# ---------------------------------------------------------------- the workflow


class FolderSegmenter:
    """Segment every image under ``dataset_dir``; masks at original size, mirrored folders, ``predictions.csv``.

    Masks: 2D input -> ``<stem>_mask.png`` (uint8 0/255, (H, W)); NIfTI -> ``<stem>_mask.nii.gz`` (uint8
    0/1, the input's shape, affine and header). Stems shared in a folder get the extension
    (``a_png_mask.png``). Optional: ``<stem>_prob.npy`` (float32 (H, W) foreground probabilities in
    [0, 1], same orientation as the mask) and ``<stem>_overlay.png`` (RGB image, mask outline in green).

    Bad files (unreadable, corrupt, empty, unsupported extension) get an ``error: <reason>`` row and
    the run goes on; an input whose outputs exist gets ``skipped: output exists`` and is not
    touched unless ``overwrite``. ``predictions.csv`` is rewritten when the run wrote a mask (also when
    it stops midway), so a re-run with nothing new writes nothing. Raises at the end when no input gave
    a mask or was skipped.

    Args:
        dataset_dir: input folder, searched recursively (hidden files skipped).
        output_dir: output folder (files under it are not treated as inputs).
        preprocessing: ``{"image": path}`` -> ``{"image": (C, H', W') MetaTensor}`` at the model size.
        postprocessing: ``{"image", "pred": (1, H', W') logits}`` -> ``{"pred": (1, H, W) {0,1}, "prob": (1, H, W)}``.
        predictor: (B, C, H', W') -> logits (B, 1, H', W'); see :func:`load_predictor`.
        inferer: MONAI inferer called as ``inferer(images, predictor)``.
        display_transform: ``{"image": path}`` -> ``{"image": (1 or 3, H, W) in [0, 1]}`` for overlays.
    """

    def __init__(
        self,
        dataset_dir: str | os.PathLike,
        output_dir: str | os.PathLike,
        preprocessing: Callable[[dict], dict],
        postprocessing: Callable[[dict], dict],
        predictor: Predictor,
        inferer: Callable[[torch.Tensor, Predictor], torch.Tensor],
        device: torch.device | str = "cpu",
        batch_size: int = 8,
        num_workers: int = 2,
        overwrite: bool | str = False,
        save_probabilities: bool | str = False,
        save_overlay: bool | str = False,
        display_transform: Callable[[dict], dict] | None = None,
    ) -> None:
        if flag(save_overlay, "save_overlay") and display_transform is None:
            raise ValueError("save_overlay needs a display_transform.")
        self.dataset_dir, self.output_dir = Path(dataset_dir), Path(output_dir)
        self.preprocessing, self.postprocessing = preprocessing, postprocessing
        self.predictor, self.inferer, self.device = predictor, inferer, torch.device(device)
        self.batch_size, self.num_workers, self.overwrite = batch_size, num_workers, flag(overwrite, "overwrite")
        self.save_probabilities = flag(save_probabilities, "save_probabilities")
        self.save_overlay = flag(save_overlay, "save_overlay")
        self.display_transform = display_transform

    def run(self) -> list[dict[str, object]]:
        """Segment the folder; return the report rows (also written to ``output_dir/predictions.csv``)."""
        files = discover_files(self.dataset_dir, exclude=self.output_dir)
        plans = plan_outputs(files, self.dataset_dir, self.output_dir, self.save_probabilities, self.save_overlay)
        rows: dict[int, dict[str, object]] = {}
        todo = []
        for index, plan in enumerate(plans):
            if plan.error:
                rows[index] = self._error_row(plan, plan.error)
            elif not self.overwrite and any(path.exists() for path in plan.outputs.values()):
                rows[index] = {"path": plan.relative, "status": SKIPPED, "mask": self._relative(plan.outputs["mask"])}
            else:
                todo.append(index)
        try:
            for position, row in self._segment([plans[index] for index in todo]):
                rows[todo[position]] = row
        finally:
            report = [rows.get(index) or self._error_row(plan, "not processed") for index, plan in enumerate(plans)]
            report_path = self.output_dir / REPORT_NAME
            if self.overwrite or not report_path.exists() or any(row["status"] == OK for row in report):
                write_report(report_path, report)
            else:  # a re-run that segmented nothing new writes nothing, not even the report
                logger.info("no new mask written; %s left as it was", report_path)
        counts = {status: sum(row["status"] == status for row in report) for status in (OK, SKIPPED)}
        logger.info(
            "%d ok, %d skipped, %d errors; report: %s",
            counts[OK],
            counts[SKIPPED],
            len(report) - sum(counts.values()),
            self.output_dir / REPORT_NAME,
        )
        if not any(counts.values()):
            raise RuntimeError(
                f"no input in {self.dataset_dir} could be segmented; see {self.output_dir / REPORT_NAME}."
            )
        return report

    def _segment(self, plans: list[InputPlan]) -> Iterator[tuple[int, dict[str, object]]]:
        """Decode ``plans`` in DataLoader workers, run the model per batch; yield (index in plans, report row)."""
        if not plans:
            return
        loader = DataLoader(
            SafeImageDataset([plan.source for plan in plans], self.preprocessing),
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            collate_fn=split_failures,
        )
        with tqdm(total=len(plans), unit="image", desc="segmenting") as bar:
            for items, failures in loader:
                for failure in failures:
                    yield failure["index"], self._error_row(plans[failure["index"]], failure["error"])
                if items:
                    yield from self._segment_batch(plans, items)
                bar.update(len(items) + len(failures))

    @torch.inference_mode()
    def _segment_batch(self, plans: list[InputPlan], items: list[dict]) -> list[tuple[int, dict[str, object]]]:
        """Model forward on decoded ``items`` ({"image": (C, H', W'), "index"}), then post-process and write each."""
        images = torch.stack([item["image"].as_tensor() for item in items]).to(self.device)
        logits = self.inferer(images, self.predictor)
        rows = []
        for item, pred in zip(items, logits):
            plan = plans[item["index"]]
            pred = MetaTensor(pred)  # Invertd inverts MetaTensors only, whatever the backend returned
            try:
                rows.append((item["index"], self._save(plan, self.postprocessing({**item, "pred": pred}))))
            except Exception as error:  # a failed inversion or write costs only this input
                rows.append((item["index"], self._error_row(plan, error_reason(error))))
        return rows

    def _save(self, plan: InputPlan, result: Mapping[str, torch.Tensor]) -> dict[str, object]:
        """Write the outputs of one post-processed input; return its report row."""
        mask = torch.as_tensor(result["pred"])[0].cpu().numpy() > 0
        probabilities = torch.as_tensor(result["prob"])[0].float().cpu().numpy()
        if plan.is_nifti:
            write_nifti_mask(plan.outputs["mask"], mask.astype(np.uint8), plan.source)
        else:
            write_png(plan.outputs["mask"], mask.astype(np.uint8) * 255)
        if "probabilities" in plan.outputs:
            write_npy(plan.outputs["probabilities"], probabilities)
        if "overlay" in plan.outputs:
            image = torch.as_tensor(self.display_transform({"image": str(plan.source)})["image"]).cpu().numpy()
            write_png(plan.outputs["overlay"], contour_overlay(image, mask))
        return {
            "path": plan.relative,
            "status": OK,
            **mask_statistics(mask, probabilities),
            "mask": self._relative(plan.outputs["mask"]),
        }

    def _error_row(self, plan: InputPlan, reason: str) -> dict[str, object]:
        logger.warning("%s: %s", plan.relative, reason)
        return {"path": plan.relative, "status": f"error: {reason}"}

    def _relative(self, path: Path) -> str:
        return Path(os.path.relpath(path, self.output_dir)).as_posix()
