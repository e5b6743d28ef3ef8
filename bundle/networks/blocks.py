"""Small building blocks of LH-UTANet: conv units, the lightweight ASPP bottleneck and the decoder block."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class ConvNormAct(nn.Sequential):
    """Conv2d -> BatchNorm2d -> activation. (B, in_channels, H, W) -> (B, out_channels, H/stride, W/stride).

    Args:
        in_channels: input channels.
        out_channels: output channels.
        kernel_size: square kernel size.
        stride: convolution stride.
        dilation: convolution dilation; padding keeps the size for stride 1.
        groups: convolution groups (``in_channels`` gives a depthwise conv).
        activation: activation class (ReLU; MobileNetV2 uses ReLU6).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        dilation: int = 1,
        groups: int = 1,
        activation: type[nn.Module] = nn.ReLU,
    ) -> None:
        padding = dilation * (kernel_size - 1) // 2
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias=False),
            nn.BatchNorm2d(out_channels),
            activation(inplace=True),
        )


class DepthwiseSeparableConv(nn.Sequential):
    """Depthwise k×k (optionally dilated) conv then pointwise 1×1 conv, each with BN + ReLU.

    (B, in_channels, H, W) -> (B, out_channels, H, W). Costs ``k²·C_in + C_in·C_out`` MACs per pixel
    instead of ``k²·C_in·C_out`` for a dense conv.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        kernel_size: depthwise kernel size.
        dilation: depthwise dilation (receptive field grows as ``dilation·(k-1)+1``).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, dilation: int = 1) -> None:
        super().__init__(
            ConvNormAct(in_channels, in_channels, kernel_size, dilation=dilation, groups=in_channels),
            ConvNormAct(in_channels, out_channels, kernel_size=1),
        )


class GlobalContext(nn.Module):
    """Global average pooling -> 1×1 conv -> ReLU, broadcast back to the input size.

    (B, in_channels, H, W) -> (B, out_channels, H, W). No normalisation, so it also trains at batch size 1.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.project = nn.Conv2d(in_channels, out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = F.relu(self.project(F.adaptive_avg_pool2d(x, 1)))
        return pooled.expand(-1, -1, x.shape[2], x.shape[3])


class LightweightASPP(nn.Module):
    """Atrous spatial pyramid pooling built from depthwise-separable branches.

    Branches: 1×1 conv; one depthwise-separable 3×3 conv per atrous rate; image pooling. They are
    concatenated and projected by a 1×1 conv. (B, in_channels, H, W) -> (B, out_channels, H, W).

    Args:
        in_channels: input channels (the deepest encoder feature).
        out_channels: channels of every branch and of the output.
        atrous_rates: dilation of each depthwise-separable branch; the LH-UTANet reference design uses (6, 12).
    """

    def __init__(self, in_channels: int, out_channels: int, atrous_rates: Sequence[int] = (6, 12)) -> None:
        super().__init__()
        if len(atrous_rates) == 0 or any(int(r) < 1 for r in atrous_rates):
            raise ValueError(f"atrous_rates must be a non-empty list of positive ints, got {atrous_rates}.")
        branches: list[nn.Module] = [ConvNormAct(in_channels, out_channels, kernel_size=1)]
        branches += [DepthwiseSeparableConv(in_channels, out_channels, dilation=int(r)) for r in atrous_rates]
        branches.append(GlobalContext(in_channels, out_channels))
        self.branches = nn.ModuleList(branches)
        self.project = ConvNormAct(len(branches) * out_channels, out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(torch.cat([branch(x) for branch in self.branches], dim=1))


class LightweightUpBlock(nn.Module):
    """×2 transposed conv, concatenation with the skip, depthwise-separable fusion.

    (B, in_channels, H, W) + skip (B, skip_channels, 2H, 2W) -> (B, out_channels, 2H, 2W).
    With ``skip_channels=0`` it only upsamples and refines (the last block, which has no skip).

    Args:
        in_channels: channels of the coarser decoder feature.
        skip_channels: channels of the encoder skip at the finer scale (0 for none).
        out_channels: output channels.
    """

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(in_channels, out_channels, kernel_size=2, stride=2)
        self.refine = DepthwiseSeparableConv(out_channels + skip_channels, out_channels)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        x = self.up(x)
        if skip is not None:
            x = torch.cat([x, skip], dim=1)
        return self.refine(x)


NORMS: tuple[str, ...] = ("batch", "group", "instance")
GROUP_NORM_GROUPS = 8


def norm_layer(norm: str, channels: int) -> nn.Module:
    """A normalisation of ``channels`` channels by name: "batch" (BatchNorm2d), "group" (GroupNorm with up to 8
    groups: independent of the batch size) or "instance" (GroupNorm with one channel per group)."""
    if norm == "batch":
        return nn.BatchNorm2d(channels)
    if norm == "group":
        return nn.GroupNorm(math.gcd(channels, GROUP_NORM_GROUPS), channels)
    if norm == "instance":
        return nn.GroupNorm(channels, channels)
    raise ValueError(f"Unknown norm {norm!r}; choose one of {NORMS}.")


def replace_batchnorm(module: nn.Module, norm: str) -> nn.Module:
    """Replace every BatchNorm2d inside ``module`` by :func:`norm_layer` ``(norm, channels)``, in place; returns it.

    "batch" leaves ``module`` unchanged, so its state_dict keeps BatchNorm's key names.
    """
    if norm == "batch":
        return module
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            setattr(module, name, norm_layer(norm, child.num_features))
        else:
            replace_batchnorm(child, norm)
    return module


class FullResolutionSkip(nn.Sequential):
    """A skip at the input's resolution, for the decoder's last block: dense 3×3 conv then a depthwise-separable 3×3.

    (B, in_channels, H, W) -> (B, out_channels, H, W). The encoders' first skip is at H/2; this one keeps the
    detail that the stem's stride discards (fine structures, boundaries) for ~``9·C_in·C + 10·C²`` MACs per pixel.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(ConvNormAct(in_channels, out_channels), DepthwiseSeparableConv(out_channels, out_channels))
