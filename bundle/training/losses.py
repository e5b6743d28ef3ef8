"""Training losses beyond MONAI's: a boundary-weighted Dice + cross-entropy and deep supervision for LH-UTANet.

Both take logits (B, 1, H, W) (sigmoid, binary) and a {0, 1} label (B, 1, H, W), like ``DiceCELoss(sigmoid=True)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss
from torch import nn


def boundary_band(label: torch.Tensor, width: int) -> torch.Tensor:
    """1 on pixels within ``width`` pixels of a label edge (inside or outside), else 0. (B, C, H, W) -> same shape."""
    kernel = 2 * width + 1
    dilated = F.max_pool2d(label, kernel, stride=1, padding=width)
    eroded = -F.max_pool2d(-label, kernel, stride=1, padding=width)
    return dilated - eroded


class BoundaryDiceCELoss(nn.Module):
    """``DiceCELoss(sigmoid=True)`` plus a binary cross-entropy on the band around the label's edges.

    The band term weighs the pixels that decide a thin or touching object's outline (nuclei, vessels, lesion rims),
    which the region Dice barely sees. (B, 1, H, W) logits and labels -> scalar.

    Args:
        band_width: half-width in pixels of the band around every edge.
        boundary_weight: weight of the band's cross-entropy (mean over the band's pixels) against DiceCE.
    """

    def __init__(self, band_width: int = 2, boundary_weight: float = 1.0) -> None:
        super().__init__()
        if band_width < 1 or boundary_weight < 0:
            raise ValueError(f"band_width must be >= 1 and boundary_weight >= 0, got {band_width}, {boundary_weight}.")
        self.dice_ce = DiceCELoss(sigmoid=True)
        self.band_width, self.boundary_weight = band_width, boundary_weight

    def forward(self, logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        label = label.float()
        band = boundary_band(label, self.band_width)
        per_pixel = F.binary_cross_entropy_with_logits(logits, label, reduction="none")
        boundary = (per_pixel * band).sum() / band.sum().clamp(min=1.0)
        return self.dice_ce(logits, label) + self.boundary_weight * boundary


class DeepSupervisionLoss(nn.Module):
    """``loss(logits, label)`` plus ``weights[i] · loss`` of the network's auxiliary logits, upsampled to the label.

    The auxiliary logits are what the network's latest training forward left in ``aux_logits`` (LH-UTANet with
    ``deep_supervision=True``: H/4 then H/2); outside training the list is empty and this is ``loss`` alone.

    Args:
        loss: the segmentation loss, ``loss(logits, label) -> scalar``.
        network: the network (or its DistributedDataParallel wrapper) whose ``aux_logits`` are read.
        weights: weight of each auxiliary output, coarsest first (nnU-Net halves the weight per scale).
    """

    def __init__(self, loss: nn.Module, network: nn.Module, weights: tuple[float, ...] = (0.25, 0.5)) -> None:
        super().__init__()
        self.loss, self.weights = loss, tuple(weights)
        self.network = [getattr(network, "module", network)]  # a list: not registered as a submodule

    def forward(self, logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        total = self.loss(logits, label)
        for weight, aux in zip(self.weights, getattr(self.network[0], "aux_logits", [])):
            total = total + weight * self.loss(F.interpolate(aux, size=label.shape[2:], mode="bilinear"), label)
        return total


def with_deep_supervision(loss: nn.Module, network: nn.Module, enabled: bool) -> nn.Module:
    """``loss`` wrapped in :class:`DeepSupervisionLoss` when ``enabled`` (train.json's ``deep_supervision``)."""
    return DeepSupervisionLoss(loss, network) if enabled else loss


class StructureLoss(nn.Module):
    """PraNet's structure loss: a weighted binary cross-entropy plus a weighted IoU loss, each pixel weighted by how
    much its label differs from the label's local mean (``1 + 5 |avg_pool(label) - label|``, so edges weigh up to 6).

    PraNet pools over 31 pixels at 352²; here the window is ``window_fraction`` of the image height (odd, at least
    3), so the weighting keeps its reach at any training size. (B, 1, H, W) logits and labels -> scalar.
    """

    def __init__(self, window_fraction: float = 31 / 352) -> None:
        super().__init__()
        self.window_fraction = window_fraction

    def forward(self, logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        label = label.float()
        window = max(3, int(round(label.shape[2] * self.window_fraction)) // 2 * 2 + 1)
        weight = 1 + 5 * (F.avg_pool2d(label, window, stride=1, padding=window // 2) - label).abs()
        bce = F.binary_cross_entropy_with_logits(logits, label, reduction="none")
        weighted_bce = (weight * bce).sum(dim=(2, 3)) / weight.sum(dim=(2, 3))
        probability = torch.sigmoid(logits)
        intersection = (probability * label * weight).sum(dim=(2, 3))
        union = ((probability + label) * weight).sum(dim=(2, 3))
        weighted_iou = 1 - (intersection + 1) / (union - intersection + 1)
        return (weighted_bce + weighted_iou).mean()
