"""Test-time augmentation as a MONAI inferer: flips (and rescaled copies) of each batch, probabilities averaged."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from monai.data import MetaTensor
from monai.inferers import Inferer

from .errors import SettingError

TTA_MODES: tuple[str, ...] = ("none", "flips", "flips+scales")
FLIP_DIMS: tuple[tuple[int, ...], ...] = ((), (3,), (2,), (2, 3))  # identity, horizontal, vertical, both
EPS = 1e-6


def multiple_of(size: float, stride: int) -> int:
    """``size`` rounded to the nearest positive multiple of ``stride``."""
    return max(stride, int(round(size / stride)) * stride)


def probabilities(logits: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) logits -> probabilities: sigmoid for one channel, softmax over channels otherwise."""
    return torch.sigmoid(logits) if logits.shape[1] == 1 else torch.softmax(logits, dim=1)


def logits_of(probs: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`probabilities` (up to a constant per pixel for softmax), clamped away from 0 and 1."""
    probs = probs.clamp(EPS, 1 - EPS)
    return torch.logit(probs) if probs.shape[1] == 1 else torch.log(probs)


class TTAInferer(Inferer):
    """``mode`` "none": ``network(inputs)``, exactly. "flips": the mean probability over the identity and the
    horizontal, vertical and double flips, each flipped back. "flips+scales": the same at each of ``scales``
    (input resized bilinearly to ``scale`` × (H, W), rounded to multiples of ``stride``, and the probabilities
    resized back). Returns logits of the mean probability, (B, C, H, W), so post-processing is unchanged.
    ``member_spread`` then holds each image's mean |member - mean| probability, (B,), the members' disagreement
    (None with mode "none"), for the quality score (:mod:`bundle.quality`).

    Costs ``4 × len(scales)`` forward passes per batch ("flips": 4).
    """

    def __init__(self, mode: str = "none", scales: Sequence[float] = (1.0,), stride: int = 32) -> None:
        if mode not in TTA_MODES:
            raise SettingError(f"tta must be one of {', '.join(TTA_MODES)}, got {mode!r}.")
        if mode == "flips+scales" and (not scales or any(s <= 0 for s in scales)):
            raise SettingError(f"tta_scales must be positive factors, got {list(scales)}.")
        super().__init__()
        self.mode, self.stride = mode, stride
        self.scales = tuple(scales) if mode == "flips+scales" else (1.0,)
        self.member_spread: torch.Tensor | None = None

    def __call__(self, inputs: torch.Tensor, network: Callable[..., torch.Tensor], *args, **kwargs) -> torch.Tensor:
        self.member_spread = None
        if self.mode == "none":
            return network(inputs, *args, **kwargs)
        size = list(inputs.shape[2:])
        members = []
        for scale in self.scales:
            scaled_size = [multiple_of(s * scale, self.stride) for s in size]
            scaled = inputs if scaled_size == size else F.interpolate(inputs, scaled_size, mode="bilinear")
            for dims in FLIP_DIMS:
                logits = network(torch.flip(scaled, dims) if dims else scaled, *args, **kwargs)
                logits = logits.as_tensor() if isinstance(logits, MetaTensor) else logits
                probs = probabilities(torch.flip(logits, dims) if dims else logits)
                if scaled_size != size:
                    probs = F.interpolate(probs, size, mode="bilinear")
                members.append(probs)
        stacked = torch.stack(members)  # (members, B, C, H, W)
        mean = stacked.mean(dim=0)
        self.member_spread = (stacked - mean).abs().mean(dim=(0, 2, 3, 4)).float().cpu()
        result = logits_of(mean)
        return MetaTensor(result) if isinstance(inputs, MetaTensor) else result
