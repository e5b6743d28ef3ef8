"""The LH-UTANet reference design's call style, kept for code written against it.

The LH-UTANet reference design is the network description this bundle implements (README, "Reference design"); its
factory returns a model called as ``logits, moe_loss = model(x)``, and its ``pretrained`` flag means "use the MoE".
Bundle code uses :class:`~bundle.networks.LightweightHierarchicalUTANet`, whose ``forward`` returns the logits.
"""

from __future__ import annotations

import torch

from .lh_utanet import LightweightHierarchicalUTANet


class LHUTANetWithBalanceLoss(LightweightHierarchicalUTANet):
    """(B, C, H, W) -> ``(logits (B, out_channels, H, W), balance_loss ())``: the reference design's return value.

    Same parameters and state_dict as :class:`LightweightHierarchicalUTANet`.
    """

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
        logits = super().forward(x)
        return logits, self.balance_loss


def lightweight_hierarchical_utanet(
    input_channel: int = 3, num_classes: int = 1, pretrained: bool = True, use_mobilenet: bool = False, **kwargs
) -> LHUTANetWithBalanceLoss:
    """The reference design's factory: ``output, moe_loss = lightweight_hierarchical_utanet(...)(x)``.

    ``pretrained`` switches the MoE on (stage 2), as in the reference design; it loads no ImageNet weights (use
    ``encoder_weights=PATH`` for that). Extra keyword arguments go to the class.
    """
    return LHUTANetWithBalanceLoss(
        in_channels=input_channel,
        out_channels=num_classes,
        encoder="mobilenetv2" if use_mobilenet else "resnet34",
        use_moe=pretrained,
        **kwargs,
    )
