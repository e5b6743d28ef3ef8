"""ResNet34 encoder of LH-UTANet, from MONAI's ResNet in torchvision's layout."""

from __future__ import annotations

import torch
from monai.networks.nets.resnet import ResNet, ResNetBlock

from .base import register_encoder


@register_encoder("resnet34", moe_fusion_index=2)  # the MoE at H/8 (docs/architecture.md has the measured costs)
class ResNet34Encoder(ResNet):
    """ResNet34 from MONAI's ResNet, with torchvision's layout: 7×7 stride-2 stem, max-pool, conv shortcuts.

    (B, in_channels, H, W) -> [(B, 64, H/2), (B, 64, H/4), (B, 128, H/8), (B, 256, H/16), (B, 512, H/32)].
    21.3M parameters. MONAI's ``ResNetFeatures('resnet34')`` uses parameter-free type-A shortcuts
    instead, which torchvision weights do not fit.
    """

    out_channels: tuple[int, ...] = (64, 64, 128, 256, 512)
    output_stride: int = 32
    stem_key: str = "conv1.weight"
    unused_pretrained_prefixes: tuple[str, ...] = ("fc.",)

    def __init__(self, in_channels: int = 3) -> None:
        super().__init__(
            block=ResNetBlock,
            layers=[3, 4, 6, 3],
            block_inplanes=[64, 128, 256, 512],
            spatial_dims=2,
            n_input_channels=in_channels,
            conv1_t_size=7,
            conv1_t_stride=2,
            shortcut_type="B",
            bias_downsample=False,
            feed_forward=False,
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        e1 = self.act(self.bn1(self.conv1(x)))
        e2 = self.layer1(self.maxpool(e1))
        e3 = self.layer2(e2)
        e4 = self.layer3(e3)
        e5 = self.layer4(e4)
        return [e1, e2, e3, e4, e5]
