"""MobileNetV2 (width 1.0) encoder of LH-UTANet, in torchvision's layout."""

from __future__ import annotations

import torch
from torch import nn

from ..blocks import ConvNormAct
from .base import register_encoder


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1×1 expansion, depthwise 3×3, linear 1×1 projection; residual when shapes match.

    (B, in_channels, H, W) -> (B, out_channels, H/stride, W/stride).
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = in_channels * expand_ratio
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(ConvNormAct(in_channels, hidden, kernel_size=1, activation=nn.ReLU6))
        layers += [
            ConvNormAct(hidden, hidden, stride=stride, groups=hidden, activation=nn.ReLU6),
            nn.Conv2d(hidden, out_channels, kernel_size=1, bias=False),
            nn.BatchNorm2d(out_channels),
        ]
        self.conv = nn.Sequential(*layers)
        self.use_residual = stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_residual:
            return x + self.conv(x)
        return self.conv(x)


# the MoE at H/16: at H/8 it would add > 15% to the latency; lr 3e-3: from scratch on 85 images, 1e-3 left it 0.03-0.04
# validation Dice behind (docs/results.md, "Small training sets")
@register_encoder("mobilenetv2", moe_fusion_index=3, learning_rate=3e-3)
class MobileNetV2Encoder(nn.Module):
    """MobileNetV2 (width 1.0) features ``features.0`` .. ``features.17``, in torchvision's layout.

    (B, in_channels, H, W) -> [(B, 16, H/2), (B, 24, H/4), (B, 32, H/8), (B, 96, H/16), (B, 320, H/32)].
    The final 320->1280 conv (torchvision's ``features.18``) is left out: 0.4M parameters the
    decoder does not need. 1.8M parameters.
    """

    out_channels: tuple[int, ...] = (16, 24, 32, 96, 320)
    output_stride: int = 32
    stem_key: str = "features.0.0.weight"
    unused_pretrained_prefixes: tuple[str, ...] = ("features.18.", "classifier.")
    # (expand_ratio, out_channels, repeats, first stride), the standard width-1.0 table
    settings: tuple[tuple[int, int, int, int], ...] = (
        (1, 16, 1, 1),
        (6, 24, 2, 2),
        (6, 32, 3, 2),
        (6, 64, 4, 2),
        (6, 96, 3, 1),
        (6, 160, 3, 2),
        (6, 320, 1, 1),
    )

    def __init__(self, in_channels: int = 3) -> None:
        super().__init__()
        self.stage_ends = [1, 3, 6, 13, 17]  # last ``features`` layer of each stage (strides 2..32)
        layers: list[nn.Module] = [ConvNormAct(in_channels, 32, stride=2, activation=nn.ReLU6)]
        channels = 32
        for expand_ratio, out_channels, repeats, stride in self.settings:
            for i in range(repeats):
                layers.append(InvertedResidual(channels, out_channels, stride if i == 0 else 1, expand_ratio))
                channels = out_channels
        self.features = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outputs: list[torch.Tensor] = []
        for index, layer in enumerate(self.features):
            x = layer(x)
            if index in self.stage_ends:
                outputs.append(x)
        return outputs
