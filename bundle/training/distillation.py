"""Knowledge distillation for stage 1 or 2: a trained teacher's soft masks as extra targets for the student.

The trainer's ``prepare_batch`` (:class:`DistillationBatch`) runs the teacher (one checkpoint, or the mean of several)
on each augmented batch and blends its probabilities into the label: ``(1 - weight) · label + weight · p_teacher``.
MONAI's DiceCE (sigmoid) takes the soft target as it is, so the student keeps its size and speed and nothing else in
the training changes. Without a teacher it is MONAI's ``default_prepare_batch``, exactly.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import torch
from monai.engines.utils import default_prepare_batch
from torch import nn

from ..errors import SettingError
from .checkpoints import network_from_checkpoint, read_network_settings

logger = logging.getLogger(__name__)

MATCHING_SETTINGS: tuple[str, ...] = ("in_channels", "out_channels")  # what a teacher must share with its student


def teacher_paths(teacher_ckpt: str | os.PathLike | Sequence[str | os.PathLike] | None) -> list[str]:
    """``teacher_ckpt`` as a list of paths: none, one checkpoint, or a list of them (an ensemble)."""
    if not teacher_ckpt:
        return []
    return [str(teacher_ckpt)] if isinstance(teacher_ckpt, (str, os.PathLike)) else [str(p) for p in teacher_ckpt]


def load_teacher(path: str | os.PathLike, student_settings: dict[str, object]) -> nn.Module:
    """The frozen LH-UTANet of checkpoint ``path`` in eval mode. Raises one line naming the file when it holds
    another number of input or output channels than the student's ``student_settings``."""
    settings = read_network_settings(path)
    differing = {key: settings[key] for key in MATCHING_SETTINGS if settings[key] != student_settings[key]}
    if differing:
        wanted = ", ".join(f"{key} {student_settings[key]}" for key in differing)
        found = ", ".join(f"{key} {value}" for key, value in differing.items())
        raise SettingError(
            f"teacher_ckpt {path} does not match the student: it has {found}, the student's data needs {wanted}; "
            "pass a teacher trained on the same kind of images and masks."
        )
    return network_from_checkpoint(path).requires_grad_(False)


class DistillationBatch:
    """``prepare_batch`` of MONAI's ``SupervisedTrainer``: (image (B, C, H, W), label (B, 1, H, W)), the label
    blended with the teachers' mean probability by ``weight`` (0 < weight <= 1) when ``teacher_ckpt`` is given."""

    def __init__(
        self,
        teacher_ckpt: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
        weight: float = 0.5,
        student_settings: dict[str, object] | None = None,
    ) -> None:
        paths = teacher_paths(teacher_ckpt)
        if paths and not 0 < float(weight) <= 1:
            raise SettingError(f"distillation_weight must be in (0, 1], got {weight}; 0.5 is the default.")
        self.teachers = nn.ModuleList(load_teacher(path, student_settings or {}) for path in paths)
        self.weight = float(weight)
        if paths:
            logger.info(f"distillation: {len(paths)} teacher(s), label weight {1 - self.weight:g}, teacher {weight:g}")

    @torch.no_grad()
    def soft_target(self, image: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) image -> (B, out_channels, H, W) mean sigmoid probability of the teachers."""
        self.teachers.to(image.device)
        return torch.stack([torch.sigmoid(teacher(image)) for teacher in self.teachers]).mean(0)

    def __call__(self, batchdata: dict, device: str | torch.device | None = None, non_blocking: bool = False, **kwargs):
        image, label = default_prepare_batch(batchdata, device, non_blocking, **kwargs)
        if not len(self.teachers):
            return image, label
        return image, (1 - self.weight) * label + self.weight * self.soft_target(image).to(label.dtype)
