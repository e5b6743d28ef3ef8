"""Encoders of LH-UTANet, registered by name, and loading of local torchvision-format ImageNet weights.

Every encoder maps (B, in_channels, H, W) to five features ``[e1, e2, e3, e4, e5]`` at strides
2, 4, 8, 16 and 32, with ``encoder.out_channels`` giving their channel counts. Parameter names follow
torchvision's, so a torchvision state_dict loads by name (see :func:`load_encoder_weights`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
from monai.networks.nets.resnet import ResNet, ResNetBlock
from torch import nn

from .blocks import ConvNormAct


class ResNet34Encoder(ResNet):
    """ResNet34 from MONAI's ResNet, with torchvision's layout: 7×7 stride-2 stem, max-pool, conv shortcuts.

    (B, in_channels, H, W) -> [(B, 64, H/2), (B, 64, H/4), (B, 128, H/8), (B, 256, H/16), (B, 512, H/32)].
    21.3M parameters. MONAI's ``ResNetFeatures('resnet34')`` uses parameter-free type-A shortcuts
    instead, which torchvision weights do not fit.
    """

    out_channels: tuple[int, ...] = (64, 64, 128, 256, 512)
    unused_pretrained_prefixes: tuple[str, ...] = ("fc.",)
    moe_fusion_index: int = 2  # the MoE runs at H/8 (see docs/architecture.md for the measured costs)

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


class MobileNetV2Encoder(nn.Module):
    """MobileNetV2 (width 1.0) features ``features.0`` .. ``features.17``, in torchvision's layout.

    (B, in_channels, H, W) -> [(B, 16, H/2), (B, 24, H/4), (B, 32, H/8), (B, 96, H/16), (B, 320, H/32)].
    The final 320->1280 conv (torchvision's ``features.18``) is left out: 0.4M parameters the
    decoder does not need. 1.8M parameters.
    """

    out_channels: tuple[int, ...] = (16, 24, 32, 96, 320)
    unused_pretrained_prefixes: tuple[str, ...] = ("features.18.", "classifier.")
    moe_fusion_index: int = 3  # the MoE runs at H/16: at H/8 it would add > 15% to this small network's latency
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


ENCODERS: dict[str, type[nn.Module]] = {"resnet34": ResNet34Encoder, "mobilenetv2": MobileNetV2Encoder}


def build_encoder(name: str, in_channels: int = 3) -> nn.Module:
    """Build a registered encoder by name ("resnet34" or "mobilenetv2")."""
    if name not in ENCODERS:
        raise ValueError(f"Unknown encoder {name!r}; choose one of {sorted(ENCODERS)}.")
    return ENCODERS[name](in_channels=in_channels)


def _adapt_input_channels(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """Turn a (O, 3, k, k) RGB stem kernel into (O, in_channels, k, k), keeping the response to grey input."""
    if in_channels == 1:
        return weight.sum(dim=1, keepdim=True)
    repeats = -(-in_channels // weight.shape[1])
    return weight.repeat(1, repeats, 1, 1)[:, :in_channels] * (weight.shape[1] / in_channels)


def _describe(keys: Sequence[str], limit: int = 10) -> str:
    shown = ", ".join(list(keys)[:limit])
    return shown + (f" ... and {len(keys) - limit} more" if len(keys) > limit else "")


def load_encoder_weights(encoder: nn.Module, path: str | os.PathLike) -> None:
    """Load a local torchvision-format state_dict (e.g. ``resnet34-b627a593.pth``) into ``encoder``.

    Keys are matched by name after dropping a ``module.`` prefix and the classifier keys the encoder
    does not use. A stem for ``in_channels != 3`` is adapted from the RGB kernel. Any missing,
    unexpected or mis-shaped key raises a ValueError that lists them. Nothing is downloaded.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"encoder_weights file not found: {path} (weights are never downloaded).")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    state = {k.removeprefix("module."): v for k, v in state.items()}
    ignored = tuple(getattr(encoder, "unused_pretrained_prefixes", ()))
    state = {k: v for k, v in state.items() if not k.startswith(ignored)}

    own = encoder.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise ValueError(
            f"{path} does not match the {type(encoder).__name__} key names. "
            f"Missing from the file: [{_describe(missing)}]. Not in the encoder: [{_describe(unexpected)}]."
        )
    stem_key = next(iter(own))  # the stem conv kernel comes first in both encoders
    if state[stem_key].ndim == 4 and state[stem_key].shape[1] != own[stem_key].shape[1]:
        state[stem_key] = _adapt_input_channels(state[stem_key], own[stem_key].shape[1])
    mismatched = [
        f"{k}: file {tuple(state[k].shape)} vs encoder {tuple(v.shape)}"
        for k, v in own.items()
        if state[k].shape != v.shape
    ]
    if mismatched:
        raise ValueError(
            f"{path} has tensors of the wrong shape for {type(encoder).__name__}: {_describe(mismatched)}."
        )
    encoder.load_state_dict(state, strict=True)
