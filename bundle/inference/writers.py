"""The writers of evaluation (:class:`SaveMaskd`) and of folder inference (:class:`FolderWriter`: masks, optional
probabilities and overlays, and the rows of ``predictions.csv``, :mod:`bundle.inference.report`)."""

from __future__ import annotations

import errno
import logging
import os
import time
from collections.abc import Callable, Hashable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from ignite.engine import Engine, Events
from monai.config import KeysCollection
from monai.transforms import MapTransform

from ..atomic_files import write_nifti_mask, write_npy, write_png
from ..config import flag
from ..data.datasets import data_root
from ..data.transforms import ToImageLayoutd
from ..distributed import sum_over_ranks
from ..errors import DatasetError, OutputError
from ..formats import error_reason, is_nifti, split_suffix
from .folder import DecodedBatches, FolderPlan, InputPlan
from .postprocessing import contour_overlay, mask_statistics
from .report import OK, REPORT_NAME, SKIPPED, PredictionReport, error_row, input_notes
from .review_page import PAGE_NAME, review_page_from_report, review_thumbnail, thumbnail_path

logger = logging.getLogger(__name__)


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
        self.output_dir, self.data_root_dir = Path(output_dir), Path(data_root(data_root_dir))
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
    """Ignite handler of the folder evaluator: writes each input's outputs and appends its row to ``predictions.csv``.

    Per post-processed item: ``pred`` (the mask in the image's layout, :class:`~bundle.data.transforms.ToImageLayoutd`)
    and ``prob`` ((1, H, W) probabilities). Masks: 2D input -> ``<stem>_mask.png`` (uint8 0/255, (H, W)); NIfTI ->
    ``<stem>_mask.nii.gz`` (uint8 0/1, the input's shape, affine and header). Optional: ``<stem>_prob.npy`` (float32
    (H, W) probabilities in [0, 1], oriented as the mask) and ``<stem>_overlay.png`` (RGB image, mask outline in
    green). Writes are atomic; a failed write costs only its input (an error row). They run in a writer thread,
    beside the model's next batch, which appends each row as soon as its files are written.

    The report only grows (:class:`~bundle.inference.report.PredictionReport`): an input keeps the row of the run that
    segmented it; a re-run adds rows for new inputs and new errors only. When no input gave a mask or was skipped
    the run raises at the end.

    Args:
        plan: the :class:`FolderPlan` the evaluator's data come from.
        batches: its :class:`DecodedBatches` (inputs that failed to decode).
        display_transform: ``{"image": path}`` -> ``{"image": (1 or 3, H, W) in [0, 1]}`` for overlays and the
            review page's thumbnails.
        review_page: write ``OUT/review.html`` (:mod:`bundle.inference.review_page`) and its thumbnails.
    """

    def __init__(
        self,
        plan: FolderPlan,
        batches: DecodedBatches,
        display_transform: Callable[[dict], dict] | None = None,
        review_page: bool | str = False,
    ) -> None:
        self.review_page = flag(review_page, "review_page")
        if (self.review_page or any("overlay" in item.outputs for item in plan.inputs)) and display_transform is None:
            raise ValueError("save_overlay and review_page need a display_transform.")
        self.plan, self.batches, self.display_transform = plan, batches, display_transform
        self.started = time.perf_counter()
        self.report = PredictionReport(plan.report_path)  # a sharded rank's partial report (bundle.inference.sharding)
        main = self.report if plan.world_size == 1 else PredictionReport(plan.output_dir / REPORT_NAME)
        self.latest = main.latest()  # the current row of each path, this run's included
        self.statuses: dict[int, str] = {}  # this run's status of each input
        self.failures_seen = 0
        self.pending: list[Future] = []
        self.pool: ThreadPoolExecutor | None = None
        self.full_disk: OSError | None = None  # set by the writer thread: the run stops at the next batch

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self.record_planned_rows)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.write_batch)
        engine.add_event_handler(Events.COMPLETED, self.finish)
        engine.add_event_handler(Events.EXCEPTION_RAISED, self.stopped)

    def record(self, index: int, row: dict[str, object]) -> None:
        """Append ``row`` of input ``index`` to the report unless it says nothing new (an error or a skip the report
        already holds for that path); a full or failing disk costs the row, not the run."""
        status = str(row["status"])
        self.statuses[index] = status
        earlier = self.latest.get(str(row["path"]), {}).get("status")
        if status != OK and (earlier == status or (status == SKIPPED and earlier == OK)):
            return
        self.latest[str(row["path"])] = row
        try:
            self.report.append(row)
        except OSError as error:
            logger.error("%s: could not append its row to %s: %s", row["path"], self.report.path, error)

    def record_planned_rows(self, engine: Engine | None = None) -> None:
        """Rows of the inputs not segmented (errors, skips)."""
        for index, row in self.plan.rows.items():
            self.record(index, row)

    def record_failures(self) -> None:
        """Rows of the inputs that failed to decode since the last call."""
        for failure in self.batches.failures[self.failures_seen :]:
            index = failure["index"]
            self.record(index, error_row(self.plan.inputs[index].relative, failure["error"]))
        self.failures_seen = len(self.batches.failures)

    def check_disk(self) -> None:
        """Stop the run once the writer thread found the output disk full."""
        if self.full_disk is not None:
            done = sum(status == OK for status in self.statuses.values())
            raise OutputError(
                f"the output folder {self.plan.output_dir} is full ({self.full_disk.strerror}) after {done} masks; "
                "free some space and run again (the masks and rows written are kept)."
            ) from self.full_disk

    def write_batch(self, engine: Engine) -> None:
        self.check_disk()
        self.record_failures()
        self.pool = self.pool or ThreadPoolExecutor(max_workers=1, thread_name_prefix="mask-writer")
        for item, output in zip(engine.state.batch, engine.state.output):
            index = int(item["index"])
            args = (index, output["pred"], output["prob"], output["image"], output.get("result", {}))
            self.pending.append(self.pool.submit(self.save_and_record, *args))

    def save_and_record(
        self, index: int, pred: torch.Tensor, prob: torch.Tensor, image: torch.Tensor, quality: dict[str, object]
    ) -> None:
        plan = self.plan.inputs[index]
        try:
            row = self.save(plan, pred, prob, image, quality)
        except Exception as error:  # a failed write costs only this input, unless the disk is full
            if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
                self.full_disk = error
            row = error_row(plan.relative, error_reason(error))
        self.record(index, row)

    def save(
        self, plan: InputPlan, pred: torch.Tensor, prob: torch.Tensor, image: torch.Tensor, quality: dict[str, object]
    ) -> dict[str, object]:
        """Write the outputs of one input; return its report row (``quality``: qc_score and needs_review)."""
        mask = ToImageLayoutd.to_rows_first(torch.as_tensor(pred).cpu().numpy(), image) > 0
        probabilities = torch.as_tensor(prob)[0].float().cpu().numpy()
        if is_nifti(plan.source.name):
            write_nifti_mask(plan.outputs["mask"], mask.astype(np.uint8), plan.source)
        else:
            write_png(plan.outputs["mask"], mask.astype(np.uint8) * 255)
        if "probabilities" in plan.outputs:
            write_npy(plan.outputs["probabilities"], probabilities)
        if "overlay" in plan.outputs or self.review_page:
            display = torch.as_tensor(self.display_transform({"image": str(plan.source)})["image"]).cpu().numpy()
            if "overlay" in plan.outputs:
                write_png(plan.outputs["overlay"], contour_overlay(display, mask))
            if self.review_page:
                rgb = (np.clip(np.moveaxis(display, 0, -1), 0, 1) * 255).round().astype(np.uint8)
                path = thumbnail_path(self.plan.output_dir, plan.relative)
                review_thumbnail(rgb, mask, path, overwrite=self.plan.overwrite)
        return {
            "path": plan.relative,
            "status": OK,
            **input_notes(image),
            **mask_statistics(mask, probabilities),
            **quality,
            "mask": self.plan.relative(plan.outputs["mask"]),
        }

    def wait(self) -> None:
        """Wait for the writes in flight (their rows are then in the report) and the failures seen so far."""
        for future in self.pending:
            future.result()
        self.pending.clear()
        if self.pool is not None:
            self.pool.shutdown()
            self.pool = None
        self.record_failures()

    def finish(self, engine: Engine) -> None:
        self.wait()
        self.check_disk()  # a write of the last batch may have found it full
        counts = {status: sum(s == status for s in self.statuses.values()) for status in (OK, SKIPPED)}
        counts = sum_over_ranks({**counts, "errors": len(self.statuses) - sum(counts.values())})  # waits for all ranks
        errors, path = counts.pop("errors"), self.plan.output_dir / REPORT_NAME
        if self.plan.world_size > 1 and self.plan.rank == 0:
            self.latest = self.plan.merge_reports()
        logger.info("%d ok, %d skipped, %d errors; report: %s", counts[OK], counts[SKIPPED], errors, path)
        engine.state.report = [self.latest.get(plan.relative, {}) for plan in self.plan.inputs]
        if self.review_page and self.plan.rank == 0:
            self.write_review_page()
        if not any(counts.values()):
            raise DatasetError(f"no input in {self.plan.dataset_dir} could be segmented; see {path}.")

    def write_review_page(self) -> None:
        """``OUT/review.html`` from the whole report (earlier runs' rows included); a failure costs only the page."""
        report, page = self.plan.output_dir / REPORT_NAME, self.plan.output_dir / PAGE_NAME
        if page.is_file() and report.is_file() and page.stat().st_mtime_ns >= report.stat().st_mtime_ns:
            return  # no row since the page was written
        try:
            seconds = time.perf_counter() - self.started
            path = review_page_from_report(self.plan.output_dir, {"time taken": f"{seconds:.0f} s (the last run)"})
            logger.info("review page: %s", path)
        except OSError as error:
            logger.warning("could not write the review page in %s: %s", self.plan.output_dir, error)

    def stopped(self, engine: Engine, error: BaseException) -> None:
        """The run stopped on ``error``: let the writes in flight finish (their rows are kept), then raise it again."""
        self.wait()
        raise error
