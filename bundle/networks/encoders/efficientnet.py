"""EfficientNet-B0 encoder of LH-UTANet: MONAI's EfficientNet feature extractor (as in FlexibleUNet)."""

from __future__ import annotations

from monai.networks.nets import EfficientNetBNFeatures

from .base import register_encoder


@register_encoder("efficientnet-b0", moe_fusion_index=3)  # the MoE at H/16, as for MobileNetV2
class EfficientNetB0Encoder(EfficientNetBNFeatures):
    """MONAI ``EfficientNetBNFeatures('efficientnet-b0')``, randomly initialised, without its classifier head.

    (B, in_channels, H, W) -> [(B, 16, H/2), (B, 24, H/4), (B, 40, H/8), (B, 112, H/16), (B, 320, H/32)].
    The 320->1280 head conv and the classifier, which the features never use, are removed (1.7M parameters);
    Swish is the plain one, which TorchScript and ONNX export. 3.6M parameters. Pretrained weights: a local
    file of MONAI's EfficientNet key names (``_conv_stem.weight`` ...).
    """

    out_channels: tuple[int, ...] = (16, 24, 40, 112, 320)
    output_stride: int = 32
    stem_key: str = "_conv_stem.weight"
    unused_pretrained_prefixes: tuple[str, ...] = ("_conv_head.", "_bn1.", "_fc.")

    def __init__(self, in_channels: int = 3) -> None:
        super().__init__("efficientnet-b0", pretrained=False, spatial_dims=2, in_channels=in_channels)
        del self._conv_head, self._conv_head_padding, self._bn1, self._avg_pooling, self._dropout, self._fc
        self.set_swish(memory_efficient=False)
