"""File output, all atomic (every file the bundle writes appears whole or not at all): text, JSON, CSV, PNG, .npy and
NIfTI masks, and the writers of evaluation (:class:`SaveMaskd`) and folder inference (:class:`FolderWriter`, with its
``predictions.csv`` report)."""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import logging
import os
import tempfile
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import nibabel as nib
import numpy as np
import torch
from ignite.engine import Engine, Events
from monai.config import KeysCollection
from monai.transforms import MapTransform
from PIL import Image

from .config import flag
from .formats import error_reason, is_nifti, split_suffix
from .postprocessing import contour_overlay, mask_statistics
from .transforms import ToImageLayoutd

if TYPE_CHECKING:  # the planning module imports this one
    from .inference import DecodedBatches, FolderPlan, InputPlan

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


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp)`` on a hidden temp file beside ``path``, then ``os.replace`` it onto ``path``.

    A crash or kill leaves either the old file or the new one, never a partial file; the temp file is
    removed when ``write`` raises.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def atomic_write_json(path: str | os.PathLike, data: object) -> None:
    """Write ``data`` as indented JSON to ``path`` atomically."""
    atomic_write_text(path, json.dumps(data, indent=4) + "\n")


def atomic_write_csv(path: str | os.PathLike, fieldnames: Sequence[str], rows: Iterable[Mapping[str, object]]) -> None:
    """Write ``rows`` as CSV with the header ``fieldnames`` (missing values empty, extra keys ignored), atomically."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(fieldnames), restval="", extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue())


def write_png(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write an (H, W) or (H, W, 3) uint8/uint16 array as PNG, atomically (rows stay rows).

    zlib level 1: lossless like the default 6, several times faster on masks, files a little larger.
    """
    atomic_write(path, lambda tmp: Image.fromarray(array).save(tmp, format="PNG", compress_level=1))


def write_npy(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write ``array`` as .npy, atomically."""

    def save(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.save(f, array)

    atomic_write(path, save)


def write_nifti_mask(path: str | os.PathLike, mask: np.ndarray, reference: str | os.PathLike) -> None:
    """Write an (X, Y) uint8 mask as gzipped NIfTI with ``reference``'s shape, affine and header, atomically."""
    image = nib.load(str(reference))
    header = image.header.copy()
    header.set_data_dtype(np.uint8)
    header.set_slope_inter(1, 0)
    out = nib.Nifti1Image(mask.reshape(image.shape[:3]), image.affine, header)
    atomic_write(path, lambda tmp: tmp.write_bytes(gzip.compress(out.to_bytes())))


def sha256_of(path: str | Path) -> str:
    """Hex sha256 of the file at ``path``, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def error_row(plan: InputPlan, reason: str) -> dict[str, object]:
    logger.warning("%s: %s", plan.relative, reason)
    return {"path": plan.relative, "status": f"error: {reason}"}


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


class FolderWriter:
    """Ignite handler of the folder evaluator: writes each input's outputs, then ``predictions.csv``.

    Per post-processed item: ``pred`` (the mask in the image's layout, :class:`~bundle.transforms.ToImageLayoutd`)
    and ``prob`` ((1, H, W) probabilities). Masks: 2D input -> ``<stem>_mask.png`` (uint8 0/255, (H, W)); NIfTI ->
    ``<stem>_mask.nii.gz`` (uint8 0/1, the input's shape, affine and header). Optional: ``<stem>_prob.npy`` (float32
    (H, W) probabilities in [0, 1], oriented as the mask) and ``<stem>_overlay.png`` (RGB image, mask outline in
    green). Writes are atomic; a failed write costs only its input (an error row). They run in a writer thread,
    beside the model's next batch; the report waits for them.

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
        self.pending: dict[int, Future] = {}
        self.pool: ThreadPoolExecutor | None = None
        self.finished = False  # the report is written: an error raised after it must not rewrite it

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.write_batch)
        engine.add_event_handler(Events.COMPLETED, self.finish)
        engine.add_event_handler(Events.EXCEPTION_RAISED, self.stopped)

    def write_batch(self, engine: Engine) -> None:
        self.pool = self.pool or ThreadPoolExecutor(max_workers=1, thread_name_prefix="mask-writer")
        for item, output in zip(engine.state.batch, engine.state.output):
            index = int(item["index"])
            plan = self.plan.inputs[index]
            self.pending[index] = self.pool.submit(self.save, plan, output["pred"], output["prob"], output["image"])

    def collect(self) -> None:
        """Wait for the writes in flight and record their report rows."""
        for index, future in self.pending.items():
            try:
                self.rows[index] = future.result()
            except Exception as error:  # a failed write costs only this input
                self.rows[index] = error_row(self.plan.inputs[index], error_reason(error))
        self.pending.clear()
        if self.pool is not None:
            self.pool.shutdown()
            self.pool = None

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
        self.collect()
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
