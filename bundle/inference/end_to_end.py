"""The whole folder-inference path of one image as one module, for ``scripts/export_onnx.py --end-to-end``: uint8
(H, W, 3) image -> uint8 (H, W) mask (0 / 255), written with traceable tensor operations only (any H and W in ONNX).

Inside: the anti-aliased bilinear resize to the network's size (``AntialiasedResized``'s operator, built for the
input's size), ImageNet normalisation, the network (optionally on the four flips, as one batch, as
:class:`~bundle.inference.tta.TTAInferer` "flips"), the probabilities' logits resized back bilinearly (``Invertd``), sigmoid
and ``>= threshold`` (``BinaryMaskd``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..backends.predictors import EPS
from .tta import FLIP_DIMS

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
TRUNCATED = 4.0  # the Gaussian's tail in sigmas (bundle.data.transforms.antialiased_resize_matrix)


def resize_matrix(length: torch.Tensor, size: int) -> torch.Tensor:
    """(size, length) matrix of MONAI's 1D bilinear resize with anti-aliasing (Gaussian, sigma ``max(0, (length /
    size - 1) / 2)``, ``erf`` taps within ``int(max(4 sigma, 0.5) + 0.5)``, zero padding; then linear interpolation
    without ``align_corners``), for a ``length`` known only at run time (a 0-d tensor). Equals
    :func:`bundle.data.transforms.antialiased_resize_matrix` up to float rounding; upsampling: plain bilinear."""
    length = length.to(torch.float32)
    sigma = ((length / size - 1) / 2).clamp(min=1e-4)  # 1e-4: a delta kernel (no smoothing), without dividing by 0
    tail = torch.floor(torch.maximum(sigma * TRUNCATED, torch.full_like(sigma, 0.5)) + 0.5)
    source = ((torch.arange(size, dtype=torch.float32) + 0.5) * (length / size) - 0.5).clamp(min=0)
    left = torch.floor(source)
    right = torch.minimum(left + 1, length - 1)
    right_weight = (source - left)[:, None]
    columns = torch.arange(length.to(torch.int64), dtype=torch.float32)[None, :]
    t = 0.70710678 / sigma

    def smoothed_at(centres: torch.Tensor) -> torch.Tensor:  # (size, length): the smoothed image read at centres
        offset = centres[:, None] - columns
        taps = 0.5 * (torch.erf(t * (offset + 0.5)) - torch.erf(t * (offset - 0.5)))
        return torch.where(offset.abs() <= tail, taps.clamp(min=0), torch.zeros_like(taps))

    return (1 - right_weight) * smoothed_at(left) + right_weight * smoothed_at(right)


class EndToEndSegmenter(nn.Module):
    """uint8 (H, W, 3) image -> uint8 (H, W) mask, 255 foreground: the bundle's folder inference of one image.

    Args:
        network: (B, 3, h, w) float -> (B, 1, h, w) logits, in eval mode.
        image_size: (h, w) the network runs at.
        flips: average the probabilities of the four flips (one batch of 4), as ``--tta flips``.
        threshold: foreground is ``sigmoid(logit) >= threshold``.
    """

    def __init__(
        self, network: nn.Module, image_size: Sequence[int], flips: bool = False, threshold: float = 0.5
    ) -> None:
        super().__init__()
        self.network, self.image_size = network.eval(), tuple(int(s) for s in image_size)
        self.flips, self.threshold = flips, float(threshold)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(3, 1, 1))

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """(1, 3, h, w) normalised image -> (1, 1, h, w) logits (of the flips' mean probability with ``flips``)."""
        if not self.flips:
            return self.network(images)
        batch = torch.cat([torch.flip(images, dims) if dims else images for dims in FLIP_DIMS])
        outputs = self.network(batch).chunk(len(FLIP_DIMS))
        flipped_back = [torch.flip(out, dims) if dims else out for out, dims in zip(outputs, FLIP_DIMS)]
        mean = torch.stack([torch.sigmoid(out) for out in flipped_back]).mean(dim=0)
        return torch.logit(mean.clamp(EPS, 1 - EPS))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        height, width = torch._shape_as_tensor(image)[0], torch._shape_as_tensor(image)[1]
        pixels = image.permute(2, 0, 1).to(torch.float32) / 255.0  # (3, H, W)
        rows, columns = resize_matrix(height, self.image_size[0]), resize_matrix(width, self.image_size[1])
        resized = rows @ (pixels @ columns.T)  # (3, h, w)
        normalised = ((resized - self.mean) / self.std)[None]
        logits = self.logits(normalised)  # (1, 1, h, w)
        restored = F.interpolate(logits, size=image.shape[:2], mode="bilinear", align_corners=False)
        return ((torch.sigmoid(restored[0, 0]) >= self.threshold).to(torch.uint8) * 255).to(torch.uint8)
