"""LH-UTANet: encoder -> lightweight ASPP -> (hierarchical MoE on the skips) -> depthwise-separable decoder -> head."""

import os
from collections.abc import Sequence

import torch
from torch import nn

from .blocks import NORMS, FullResolutionSkip, LightweightASPP, LightweightUpBlock, replace_batchnorm
from .encoders import DEFAULT_ENCODER, ENCODERS, build_encoder, load_encoder_weights
from .moe import HierarchicalMoE, is_exporting


class LightweightDecoder(nn.Module):
    """Bottom feature (B, C_b, H/32, W/32) + skips [e1..e4] (+ a full-resolution skip) -> (B, decoder_channels[-1], H, W).

    One :class:`LightweightUpBlock` per skip, deepest first, then one more ×2 block, which takes the full-resolution
    skip when ``full_resolution_channels`` > 0 and only upsamples otherwise.

    Args:
        in_channels: channels of the bottom (bottleneck) feature.
        skip_channels: channels of e1..e4, finest first.
        decoder_channels: output channels of the five up blocks, deepest first.
        full_resolution_channels: channels of the skip at the input's resolution (0: none).
    """

    def __init__(
        self,
        in_channels: int,
        skip_channels: Sequence[int],
        decoder_channels: Sequence[int],
        full_resolution_channels: int = 0,
    ) -> None:
        super().__init__()
        if len(decoder_channels) != len(skip_channels) + 1:
            raise ValueError(
                f"decoder_channels needs {len(skip_channels) + 1} entries (one per skip, deepest first, plus the "
                f"last ×2 block), got {list(decoder_channels)}."
            )
        skips_deepest_first = list(reversed(skip_channels)) + [full_resolution_channels]
        blocks = []
        for skip, out in zip(skips_deepest_first, decoder_channels):
            blocks.append(LightweightUpBlock(in_channels, skip, out))
            in_channels = out
        self.blocks = nn.ModuleList(blocks)

    def forward(
        self, x: torch.Tensor, skips: list[torch.Tensor], full_resolution: torch.Tensor | None = None
    ) -> list[torch.Tensor]:
        """The output of every block, coarsest first: [(B, decoder_channels[0], H/16, W/16) .. (B, ·, H, W)]."""
        depth = len(skips)
        outputs: list[torch.Tensor] = []
        for index, block in enumerate(self.blocks):
            x = block(x, skips[depth - 1 - index]) if index < depth else block(x, full_resolution)
            outputs.append(x)
        return outputs


class LightweightHierarchicalUTANet(nn.Module):
    """Lightweight Hierarchical UTANet for 2D segmentation. (B, in_channels, H, W) -> logits (B, out_channels, H, W).

    H and W must be multiples of the encoder's ``output_stride`` (32 for every registered encoder). Stage 1
    (``use_moe=False``) feeds the encoder skips straight to the decoder; stage 2 (``use_moe=True``) refines them with a
    :class:`HierarchicalMoE`. Both stages share parameter names, so a stage-1 state_dict loads into
    stage 2 with only the ``moe.*`` keys missing.

    ``forward`` returns the logits Tensor (no sigmoid/softmax). The balance loss of the latest forward
    is kept in ``self.balance_loss`` (0 in stage 1) and the detached gate weights in
    ``self.gate_weights`` for training handlers. The reference design's call style
    ``logits, moe_loss = model(x)`` lives in :mod:`bundle.networks.compat`.

    Args:
        in_channels: image channels (1 or more).
        out_channels: 1 for binary segmentation (sigmoid), N for N-class (softmax).
        encoder: a registered encoder (``bundle.networks.ENCODERS``): "mobilenetv2" (width 1.0; the default,
            ``DEFAULT_ENCODER``), "resnet34" (MONAI ResNet, torchvision layout) or "efficientnet-b0" (MONAI
            EfficientNet).
        use_moe: stage 2: route the skips through the hierarchical MoE.
        top_k: experts mixed per gate and sample, 1..4.
        emb_size: channels of the fused map the MoE experts work on.
        moe_fusion_index: skip whose resolution the MoE runs at (0: H/2, 1: H/4, 2: H/8, 3: H/16); default:
            the encoder's registry entry (resnet34: 2, mobilenetv2 and efficientnet-b0: 3).
        moe_shared_expert: give the MoE an always-on shared expert beside the routed ones (stage-2 recipe (d)).
        aspp_rates: dilations of the ASPP's depthwise-separable branches.
        aspp_channels: ASPP output channels; default: the deepest skip's channels.
        decoder_channels: five up-block widths, deepest first; default: the skip widths, deepest first,
            then 16 for the full-resolution block (memory-bound on CPU: 32 channels cost ~15 ms more at 224²).
        encoder_weights: optional path to a local torchvision-format ImageNet state_dict for the encoder.
        full_resolution_skip: channels of a skip taken from the input at full resolution, before the encoder's
            stride-2 stem (:class:`FullResolutionSkip`), for the decoder's last block; 0 (default): none.
        norm: normalisation of every layer: "batch" (default), "group" (8 groups) or "instance"; the last two do
            not depend on the batch size.
        deep_supervision: add 1×1 heads on the decoder's H/4 and H/2 outputs; in training mode their logits are
            kept in ``self.aux_logits`` for :class:`bundle.training.losses.DeepSupervisionLoss` (inference ignores them).
    """

    gate_weights: list[torch.Tensor]  # class-level, so that TorchScript knows the type of the empty list
    aux_logits: list[torch.Tensor]

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 1,
        encoder: str = DEFAULT_ENCODER,
        use_moe: bool = False,
        top_k: int = 2,
        emb_size: int = 64,
        moe_fusion_index: int | None = None,
        moe_shared_expert: bool = False,
        aspp_rates: Sequence[int] = (6, 12),
        aspp_channels: int | None = None,
        decoder_channels: Sequence[int] | None = None,
        encoder_weights: str | os.PathLike | None = None,
        full_resolution_skip: int = 0,
        norm: str = "batch",
        deep_supervision: bool = False,
    ) -> None:
        super().__init__()
        if in_channels < 1 or out_channels < 1:
            raise ValueError(f"in_channels and out_channels must be >= 1, got {in_channels} and {out_channels}.")
        if full_resolution_skip < 0 or norm not in NORMS:
            raise ValueError(
                f"full_resolution_skip must be >= 0 and norm one of {NORMS}, got {full_resolution_skip} and {norm!r}."
            )
        self.encoder = build_encoder(encoder, in_channels)
        self.total_stride = int(self.encoder.output_stride)
        if encoder_weights:
            load_encoder_weights(self.encoder, encoder_weights)
        *skip_channels, bottom_channels = self.encoder.out_channels
        aspp_channels = aspp_channels or skip_channels[-1]
        if decoder_channels is None:
            decoder_channels = [*reversed(skip_channels), 16]
        self.bottleneck = LightweightASPP(bottom_channels, aspp_channels, aspp_rates)
        if moe_fusion_index is None:
            moe_fusion_index = ENCODERS[encoder].moe_fusion_index
        self.moe = (
            HierarchicalMoE(skip_channels, emb_size, top_k, moe_fusion_index, shared_expert=moe_shared_expert)
            if use_moe
            else None
        )
        self.full_resolution = (
            FullResolutionSkip(in_channels, full_resolution_skip) if full_resolution_skip > 0 else None
        )
        self.decoder = LightweightDecoder(aspp_channels, skip_channels, decoder_channels, full_resolution_skip)
        self.head = nn.Conv2d(decoder_channels[-1], out_channels, kernel_size=1)
        self.aux_heads = (
            nn.ModuleList(nn.Conv2d(c, out_channels, kernel_size=1) for c in decoder_channels[-3:-1])
            if deep_supervision
            else None
        )
        replace_batchnorm(self, norm)
        self.use_moe = use_moe
        self.balance_loss = torch.zeros(())
        self.gate_weights = []
        self.aux_logits = []

    def check_input_size(self, x: torch.Tensor) -> None:
        """Raise a ValueError unless x is (B, C, H, W) with H and W multiples of the total stride."""
        if x.dim() != 4 or x.shape[2] % self.total_stride != 0 or x.shape[3] % self.total_stride != 0:
            raise ValueError(
                f"LightweightHierarchicalUTANet expects input (B, C, H, W) with H and W multiples of "
                f"{self.total_stride}, got shape {list(x.shape)}. Resize or pad the image, e.g. with "
                f"monai.transforms.DivisiblePad(k={self.total_stride})."
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input_size(x)
        features = self.encoder(x)
        skips, bottom = features[:-1], features[-1]
        balance = torch.zeros((), device=x.device)
        gate_weights: list[torch.Tensor] = []
        if self.moe is not None:
            skips, balance, gate_weights = self.moe(skips)
        full_resolution = self.full_resolution(x) if self.full_resolution is not None else None
        outputs = self.decoder(self.bottleneck(bottom), skips, full_resolution)
        logits = self.head(outputs[-1])
        if not torch.jit.is_scripting():  # nested: TorchScript compiles both operands of an ``and``
            if not is_exporting():
                self.balance_loss = balance
                self.gate_weights = [weights.detach() for weights in gate_weights]
                self.aux_logits = self.auxiliary_logits(outputs[-3:-1])
        return logits

    def auxiliary_logits(self, outputs: list[torch.Tensor]) -> list[torch.Tensor]:
        """Deep supervision in training mode: logits of the H/4 and H/2 decoder outputs [(B, out_channels, H/4, W/4),
        (B, out_channels, H/2, W/2)]; otherwise []."""
        if self.aux_heads is None or not self.training:
            return []
        return [head(output) for head, output in zip(self.aux_heads, outputs)]


LHUTANet = LightweightHierarchicalUTANet
