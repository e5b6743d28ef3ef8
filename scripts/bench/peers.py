"""The networks benchmarks compare: LH-UTANet with every registered encoder, and MONAI's segmentation networks."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bundle.networks import ENCODERS, LightweightHierarchicalUTANet
from torch import nn

IN_CHANNELS = 3
OUT_CHANNELS = 1
#: every registered encoder, in registration order (bundle/networks/encoders/)
LH_ENCODERS: tuple[str, ...] = tuple(ENCODERS)


def lh_utanet(encoder: str, use_moe: bool, **kwargs: Any) -> nn.Module:
    """LH-UTANet, 3 input / 1 output channels."""
    return LightweightHierarchicalUTANet(
        in_channels=IN_CHANNELS, out_channels=OUT_CHANNELS, encoder=encoder, use_moe=use_moe, **kwargs
    )


@dataclass(frozen=True)
class MonaiPeer:
    """A MONAI network compared with LH-UTANet: 2D, 3 input / 1 output channels plus ``kwargs``."""

    name: str  # display name
    network: str  # class name in monai.networks.nets
    kwargs: dict[str, Any]  # JSON-able constructor arguments

    def network_def(self) -> dict[str, Any]:
        """The bundle ``network_def`` override that builds this network."""
        return {
            "_target_": f"monai.networks.nets.{self.network}",
            "in_channels": "@in_channels",
            "out_channels": "@out_channels",
            "spatial_dims": 2,
            **self.kwargs,
        }

    def make(self) -> nn.Module:
        """Construct the network."""
        from monai.networks import nets

        return getattr(nets, self.network)(
            in_channels=IN_CHANNELS, out_channels=OUT_CHANNELS, spatial_dims=2, **self.kwargs
        )


_MONAI_CHANNELS = [32, 64, 128, 256, 512]
_MONAI_STRIDES = [2, 2, 2, 2]

#: MONAI peers of the benchmarks and of scripts/compare_models.py: row key -> network.
MONAI_PEERS: dict[str, MonaiPeer] = {
    "basicunet": MonaiPeer("MONAI BasicUNet (default features)", "BasicUNet", {}),
    "unet": MonaiPeer(
        "MONAI UNet (32-512, 2 res units)",
        "UNet",
        {"channels": _MONAI_CHANNELS, "strides": _MONAI_STRIDES, "num_res_units": 2},
    ),
    "attentionunet": MonaiPeer(
        "MONAI AttentionUnet (32-512)", "AttentionUnet", {"channels": _MONAI_CHANNELS, "strides": _MONAI_STRIDES}
    ),
    "flexibleunet-resnet34": MonaiPeer(
        "MONAI FlexibleUNet (resnet34)", "FlexibleUNet", {"backbone": "resnet34", "pretrained": False}
    ),
    "swinunetr": MonaiPeer("MONAI SwinUNETR 2D (feature_size 24)", "SwinUNETR", {"feature_size": 24}),
}


def peer_settings(image_size: list[int]) -> dict[str, Any]:
    """The ``network_settings`` override with which bundle configs run a MONAI peer (they read LH-UTANet
    checkpoints only)."""
    return {"in_channels": IN_CHANNELS, "out_channels": OUT_CHANNELS, "image_size": list(image_size)}
