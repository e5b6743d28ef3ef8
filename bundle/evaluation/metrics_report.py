"""Per-image segmentation metrics of an evaluation run, written as one CSV plus a JSON summary."""

from __future__ import annotations

import math
import os
from pathlib import Path

import ignite.distributed as idist
import numpy as np
import torch
from ignite.engine import Engine, Events
from monai.metrics import (
    compute_confusion_matrix_metric,
    compute_dice,
    compute_hausdorff_distance,
    compute_iou,
    get_confusion_matrix,
)
from monai.utils import ImageMetaKey

from ..atomic_files import atomic_write_csv, atomic_write_json
from ..config import flag
from ..inference.quality import FEATURES

METRIC_NAMES: tuple[str, ...] = ("dice", "iou", "precision", "recall", "hd95")


def binary_metrics(pred: torch.Tensor, label: torch.Tensor) -> dict[str, float]:
    """Dice, IoU, precision, recall and HD95 (pixels) of one binary (1, H, W) prediction against its label.

    As in MONAI's metric handlers, Dice and IoU are NaN when the label is empty; precision is NaN
    when nothing is predicted; HD95 is NaN when either mask is empty.
    """
    pred, label = pred[None].float(), label[None].float()
    confusion = get_confusion_matrix(pred, label, include_background=True)
    values = {
        "dice": compute_dice(pred, label, include_background=True),
        "iou": compute_iou(pred, label, include_background=True),
        "precision": compute_confusion_matrix_metric("precision", confusion),
        "recall": compute_confusion_matrix_metric("recall", confusion),
        "hd95": (
            compute_hausdorff_distance(pred, label, include_background=True, percentile=95)
            if pred.any() and label.any()
            else torch.tensor(float("nan"))
        ),
    }
    return {name: float(value.flatten()[0]) for name, value in values.items()}


class SegmentationMetricsWriter:
    """Collect :func:`binary_metrics` for every image an evaluator sees; write them when the run ends.

    Writes ``{prefix}_per_image.csv`` (image, source when the data name one, dice, iou, precision, recall, hd95, and
    after :class:`~bundle.inference.quality.QualityScored` the quality score ``qc_score``, ``needs_review`` and its features) and
    ``{prefix}_summary.json`` (mean, median, std and count of non-NaN values per metric) into
    ``output_dir``, atomically, with the rows sorted by image. Refuses to start when those files exist,
    unless ``overwrite``. Expects post-processed, decollated outputs with binary ``pred`` and ``label`` of
    equal size (at the original resolution when the evaluator inverts its resizing).

    In a distributed run (multi_gpu_evaluate.json) it runs on every rank: each rank measures its own
    images, the rows are gathered from all ranks when the run ends, and rank 0 writes the files.

    Args:
        output_dir: folder for the two files.
        prefix: file name prefix.
        overwrite: replace existing reports instead of refusing to start.
    """

    def __init__(self, output_dir: str | os.PathLike, prefix: str = "metrics", overwrite: bool | str = False) -> None:
        self.csv_path = Path(output_dir) / f"{prefix}_per_image.csv"
        self.summary_path = Path(output_dir) / f"{prefix}_summary.json"
        self.overwrite = flag(overwrite, "overwrite")
        self.rows: list[dict[str, object]] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self.start)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.collect)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.write)

    def start(self, engine: Engine) -> None:
        existing = [str(p) for p in (self.csv_path, self.summary_path) if p.exists()]
        if existing and not self.overwrite:
            raise FileExistsError(
                f"{', '.join(existing)} already exist; set overwrite=True or choose another output_dir."
            )
        self.rows = []

    def collect(self, engine: Engine) -> None:
        for data, item in zip(engine.state.batch, engine.state.output):
            name = getattr(item["image"], "meta", {}).get(ImageMetaKey.FILENAME_OR_OBJ, f"image_{len(self.rows)}")
            source = {"source": data["source"]} if "source" in data else {}
            quality = {**item.get("result", {}), **item.get("quality", {})}  # bundle.inference.quality.QualityScored
            self.rows.append({"image": str(name), **source, **binary_metrics(item["pred"], item["label"]), **quality})

    def summary(self, rows: list[dict[str, object]] | None = None) -> dict[str, dict[str, float]]:
        """Mean, median, std and count of the non-NaN per-image values of each metric (of ``rows``, default all)."""
        rows = self.rows if rows is None else rows
        result = {}
        for metric in METRIC_NAMES:
            values = np.array([row[metric] for row in rows], dtype=float)
            values = values[np.isfinite(values)]
            stats = (np.mean(values), np.median(values), np.std(values)) if len(values) else (math.nan,) * 3
            result[metric] = {
                "mean": float(stats[0]),
                "median": float(stats[1]),
                "std": float(stats[2]),
                "count": len(values),
            }
        return result

    def write(self, engine: Engine) -> None:
        gathered = idist.all_gather(self.rows)  # one list of rows per rank
        self.rows = sorted((row for rank_rows in gathered for row in rank_rows), key=lambda row: row["image"])
        if idist.get_rank() != 0:
            return
        sources = ["source"] if any("source" in row for row in self.rows) else []
        quality = ["qc_score", "needs_review", *FEATURES] if any("qc_score" in row for row in self.rows) else []
        atomic_write_csv(self.csv_path, ["image", *sources, *METRIC_NAMES, *quality], self.rows)
        summary = {"images": len(self.rows), "metrics": self.summary()}
        for source in sorted({str(row["source"]) for row in self.rows if "source" in row}):
            rows = [row for row in self.rows if row.get("source") == source]
            summary.setdefault("sources", {})[source] = {"images": len(rows), "metrics": self.summary(rows)}
        atomic_write_json(self.summary_path, summary)
        engine.logger.info("per-image metrics: %s; summary: %s", self.csv_path, self.summary_path)
