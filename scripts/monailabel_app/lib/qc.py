"""MONAI Label tasks around the bundle's per-image quality score ``qc_score`` (docs/quality.md; in [0, 1], higher
is better): the scoring method that stores it for every unlabeled image, and the strategy that hands out the lowest
first (:mod:`lib.ordering`)."""

from __future__ import annotations

import hashlib
import logging
import os
import time
from typing import Any

from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.scoring import ScoringMethod
from monailabel.interfaces.tasks.strategy import Strategy
from monailabel.tasks.infer.basic_infer import BasicInferTask
from monailabel.utils.others.generic import strtobool

from .ordering import QC_KEY, RESERVE_S, qc_value, worst_first

logger = logging.getLogger(__name__)

MODEL_KEY = "qc_score_model_sha256"  # the image info key of the weights that computed the stored qc_score
REVIEW_KEY = "needs_review"


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def scored_by(info: dict[str, Any], sha256: str) -> bool:
    """Whether an image info holds a qc_score computed with the weights of this sha256."""
    return qc_value(info) is not None and info.get(MODEL_KEY) == sha256


class QCScoring(ScoringMethod):
    """``qc_score`` and ``needs_review`` of every unlabeled image, stored in its datastore info.

    Each image runs through ``infer_task`` (the app's own task for the bundle: configs/inference.json's preprocessing,
    TTA inferer and postprocessing with the served ``models/model.pt``, as ``/infer``), which returns the score in its
    ``result``. An image whose stored score came from the same weights (sha256 in ``qc_score_model_sha256``) is skipped,
    so MONAI Label's automatic re-scoring (at start-up, after each training and each next-sample request) only scores
    new images, or all of them once new weights are served. Request options: ``force`` (re-score all),
    ``max_samples`` (at most this many, 0: all), ``device``, ``label_tag`` and ``labels`` (which images count as
    labelled, as for the strategies).
    """

    def __init__(self, infer_task: BasicInferTask, model: str) -> None:
        super().__init__(f"qc_score (quality of {model}'s mask, higher is better) of every unlabeled image")
        self.infer_task = infer_task

    def __call__(self, request: dict[str, Any], datastore: Datastore) -> dict[str, Any]:
        start = time.time()
        weights = self.infer_task.get_path()
        if not weights:
            raise FileNotFoundError(f"no model file among {self.infer_task.path}")
        sha256 = file_sha256(weights)
        images = datastore.get_unlabeled_images(request.get("label_tag"), request.get("labels"))
        force = strtobool(request.get("force", False))
        todo = [image for image in images if force or not scored_by(datastore.get_image_info(image), sha256)]
        skipped = len(images) - len(todo)
        max_samples = int(request.get("max_samples", 0) or 0)
        todo = todo[:max_samples] if max_samples > 0 else todo
        device = request.get("device") or "cuda"  # BasicInferTask falls back to the CPU without CUDA
        failed: list[str] = []
        for image in todo:
            try:
                _, data = self.infer_task(
                    {"image": datastore.get_image_uri(image), "device": device, "skip_writer": True}
                )
                result = data["result"]
                info = {QC_KEY: float(result[QC_KEY]), REVIEW_KEY: int(result[REVIEW_KEY]), MODEL_KEY: sha256}
            except Exception:  # one unreadable image must not stop the others; it stays unscored
                logger.exception(f"qc_score: scoring {image} failed")
                failed.append(image)
                continue
            datastore.update_image_info(image, info)
            logger.info(f"qc_score: {image} => {info[QC_KEY]:.6f}")
        summary = {
            "total": len(images),
            "scored": len(todo) - len(failed),
            "skipped": skipped,
            "failed": failed,
            "model": os.path.basename(weights),
            "model_sha256": sha256,
            "latency": round(time.time() - start, 3),
        }
        logger.info(f"qc_score: {summary}")
        return summary


class WorstQCFirst(Strategy):
    """The unlabeled image with the lowest stored ``qc_score`` first (:func:`lib.ordering.worst_first`); images
    handed out within ``reserve_s`` seconds (request option, default one hour) are passed over while others remain."""

    def __init__(self, reserve_s: float = RESERVE_S) -> None:
        super().__init__("Lowest qc_score first (run the qc_score scoring method first)")
        self.reserve_s = reserve_s

    def __call__(self, request: dict[str, Any], datastore: Datastore) -> dict[str, Any] | None:
        images = datastore.get_unlabeled_images(request.get("label_tag"), request.get("labels"))
        if not images:
            return None
        infos = {image: datastore.get_image_info(image) for image in images}
        reserve_s = float(request.get("reserve_s", self.reserve_s))
        order = worst_first(infos, request["strategy"], time.time(), reserve_s)
        image = order[0]
        unscored = sum(qc_value(info) is None for info in infos.values())
        logger.info(f"worst_qc_first: {image} ({QC_KEY} {qc_value(infos[image])}); {unscored} of {len(order)} unscored")
        return {"id": image, QC_KEY: qc_value(infos[image]), "unlabeled": len(order), "unscored": unscored}
