"""Self-configuration from the data, as nnU-Net's planner does: a dataset fingerprint, then a training plan (input size,
batch size, epochs, learning rate) from a few written rules, for a device and an optional time budget.

The plan is a config overlay for ``configs/train.json`` (``--config_file "['configs/train.json','plan.json']"``); ids
given on the command line still win. Every choice carries its reason (``plan#reasons``). The rules and the Dice each
dataset reaches with its plan: docs/planning.md.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from ..errors import DatasetError
from .masks import LabelValues, read_mask_array

logger = logging.getLogger(__name__)

FINGERPRINT_IMAGES = 200  # masks read for a fingerprint (evenly spaced over the training + validation pairs)
MIN_COMPONENT_PIXELS = 4  # connected components smaller than this are label noise, not objects


@dataclass(frozen=True)
class PlanRules:
    """The constants of the planning rules (docs/planning.md explains each)."""

    min_object_pixels: float = 12.0  # the small objects (10th percentile) must span this many input pixels
    # smallest input side per device: CPU the small-data studies' 128; a GPU affords 256 (a larger input helped the
    # shipped model: docs/shipped_model.md), never above the median image side
    min_size: dict[str, int] = field(default_factory=lambda: {"cpu": 128, "cuda": 256})
    max_size: dict[str, int] = field(default_factory=lambda: {"cpu": 256, "cuda": 512})  # largest side per device
    size_multiple: int = 32  # the encoders' output stride
    steps_per_epoch_min: int = 8  # the batch leaves at least this many optimizer steps per epoch
    min_batch: int = 4
    max_batch: dict[str, int] = field(default_factory=lambda: {"cpu": 16, "cuda": 32})
    target_steps: int = 1000  # optimizer steps of a training without a time budget
    min_epochs: int = 20
    max_epochs: int = 200
    reference_batch: int = 8  # the registry's learning rates were measured at batch 8 (docs/results.md)


def mask_statistics(mask: np.ndarray) -> dict[str, object]:
    """Size, foreground fraction and the equivalent diameters (pixels) of the connected objects of one (H, W) mask."""
    labels, count = ndimage.label(mask)
    areas = np.bincount(labels.ravel())[1:] if count else np.zeros(0, dtype=int)
    areas = areas[areas >= MIN_COMPONENT_PIXELS]
    return {
        "height": int(mask.shape[0]),
        "width": int(mask.shape[1]),
        "foreground": float(mask.mean()),
        "diameters": [float(d) for d in 2 * np.sqrt(areas / math.pi)],
    }


def fingerprint(label_paths: Sequence[str], training_images: int | None = None) -> dict[str, object]:
    """The dataset fingerprint from its training + validation masks (at most FINGERPRINT_IMAGES, evenly spaced).

    Masks are binarised as training binarises them (:mod:`bundle.data.masks`). Returns image count, median size,
    median foreground fraction, median objects per image, object diameters relative to the image's shorter side
    (median and 10th percentile over all objects) and the label values seen (:meth:`LabelValues.summary`).
    ``training_images``: the count of images that train (default: all of ``label_paths``). Raises DatasetError,
    naming the values found, when no mask read has foreground.
    """
    if not label_paths:
        raise DatasetError("the dataset has no training masks to fingerprint.")
    step = max(1, math.ceil(len(label_paths) / FINGERPRINT_IMAGES))
    label_values = LabelValues()
    stats = [
        mask_statistics(label_values.add(read_mask_array(path), path).foreground) for path in list(label_paths)[::step]
    ]
    if not label_values.with_foreground:
        folder = os.path.commonpath([os.path.dirname(os.path.abspath(path)) for path in label_paths])
        raise DatasetError(f"no foreground in any mask of {folder}: {label_values}; nothing to plan for.")
    relative = [d / min(s["height"], s["width"]) for s in stats for d in s["diameters"]]
    return {
        "images": len(label_paths),
        "training_images": int(training_images if training_images is not None else len(label_paths)),
        "masks_read": len(stats),
        "median_size": [int(np.median([s[key] for s in stats])) for key in ("height", "width")],
        "foreground_fraction": round(float(np.median([s["foreground"] for s in stats])), 4),
        "objects_per_image": float(np.median([len(s["diameters"]) for s in stats])),
        "object_diameter": round(float(np.median(relative)), 4) if relative else 1.0,
        "small_object_diameter": round(float(np.percentile(relative, 10)), 4) if relative else 1.0,
        **label_values.summary(),
    }


def _round_to(value: float, multiple: int, up: bool) -> int:
    return int((math.ceil if up else math.floor)(value / multiple) * multiple)


def _power_of_two_at_most(value: float) -> int:
    return 2 ** int(math.floor(math.log2(max(value, 1))))


def plan_training(
    fingerprint: dict[str, object],
    device: str = "cpu",
    minutes: float | None = None,
    base_learning_rate: float = 3e-3,
    seconds_per_step: float | None = None,
    rules: PlanRules | None = None,
) -> dict[str, object]:
    """The training plan for ``fingerprint`` on ``device`` ("cpu" or "cuda"): ``{"image_size", "batch_size",
    "epochs", "learning_rate", "reasons"}``.

    ``minutes``: a time budget for training; it caps the epochs using ``seconds_per_step`` (one optimizer step at
    the planned size and batch on this device, e.g. from :func:`measure_seconds_per_step`).
    ``base_learning_rate``: the encoder registry's stage-1 rate (MobileNetV2: 3e-3).
    """
    kind = "cuda" if str(device).startswith("cuda") else "cpu"
    rules = rules or PlanRules()
    reasons: dict[str, str] = {}
    shorter = min(fingerprint["median_size"])
    small = float(fingerprint["small_object_diameter"])
    wanted = rules.min_object_pixels / max(small, 1e-6)
    floor = rules.min_size[kind]
    ceiling = max(rules.min_size["cpu"], min(rules.max_size[kind], _round_to(shorter, rules.size_multiple, up=False)))
    size = min(ceiling, max(floor, _round_to(wanted, rules.size_multiple, up=True)))
    reasons["image_size"] = (
        f"small objects (10th percentile) are {small:.3f} of the {shorter}-px side: {rules.min_object_pixels:g} px "
        f"need {wanted:.0f} px, kept within [{floor}, {ceiling}] (the {kind} bounds {floor}-{rules.max_size[kind]}, "
        f"at most the median image side) and a multiple of {rules.size_multiple}"
    )
    training = int(fingerprint["training_images"])
    batch = _power_of_two_at_most(training / rules.steps_per_epoch_min)
    batch = min(rules.max_batch[kind], max(rules.min_batch, batch))
    reasons["batch_size"] = (
        f"{training} training images: the largest power of two leaving >= {rules.steps_per_epoch_min} steps per "
        f"epoch, within [{rules.min_batch}, {rules.max_batch[kind]}] for {kind}"
    )
    steps_per_epoch = math.ceil(training / batch)
    epochs = min(rules.max_epochs, max(rules.min_epochs, math.ceil(rules.target_steps / steps_per_epoch)))
    reasons["epochs"] = (
        f"{rules.target_steps} optimizer steps at {steps_per_epoch} per epoch, within "
        f"[{rules.min_epochs}, {rules.max_epochs}]"
    )
    if minutes is not None and seconds_per_step:
        affordable = max(1, int(minutes * 60 / (seconds_per_step * steps_per_epoch * 1.15)))
        if affordable < epochs:
            epochs = affordable
            reasons["epochs"] += (
                f"; the {minutes:g}-minute budget affords {affordable} at {seconds_per_step:.2f} s per step "
                "(+15% for validation)"
            )
    learning_rate = base_learning_rate * min(1.0, batch / rules.reference_batch)
    reasons["learning_rate"] = (
        f"the encoder's rate {base_learning_rate:g} (measured at batch {rules.reference_batch})"
        + (f", scaled linearly to batch {batch}" if batch < rules.reference_batch else "")
    )
    return {
        "image_size": [size, size],
        "batch_size": batch,
        "epochs": int(epochs),
        "learning_rate": float(f"{learning_rate:.3g}"),
        "reasons": reasons,
    }


def plan_overlay(fingerprint: dict[str, object], plan: dict[str, object], device: str) -> dict[str, object]:
    """The plan as a ``train.json`` overlay: the chosen ids, plus ``plan`` (fingerprint, device, reasons)."""
    chosen = {key: value for key, value in plan.items() if key != "reasons"}
    return {**chosen, "plan": {"device": device, "fingerprint": fingerprint, "reasons": plan["reasons"]}}


def log_plan(plan: dict[str, object]) -> None:
    """Log each choice with its reason."""
    for key, reason in plan["reasons"].items():
        logger.info("plan: %s = %s (%s)", key, plan[key], reason)


def measure_seconds_per_step(
    network_kwargs: dict[str, object], image_size: Sequence[int], batch_size: int, device: str = "cpu"
) -> float:
    """Median seconds of one training step (forward, DiceCE backward, AdamW) of LH-UTANet at this size and batch."""
    import time

    import torch
    from monai.losses import DiceCELoss

    from ..networks import LightweightHierarchicalUTANet

    network = LightweightHierarchicalUTANet(**network_kwargs).to(device).train()
    optimizer = torch.optim.AdamW(network.parameters())
    image = torch.randn(batch_size, network_kwargs.get("in_channels", 3), *image_size, device=device)
    label = (torch.rand(batch_size, 1, *image_size, device=device) > 0.5).float()
    loss_function, times = DiceCELoss(sigmoid=True), []
    for _ in range(4):
        start = time.perf_counter()
        optimizer.zero_grad()
        loss_function(network(image), label).backward()
        optimizer.step()
        if str(device).startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return float(np.median(times[1:]))
