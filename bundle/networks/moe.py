"""Hierarchical mixture of receptive-field experts on the skip connections (UTANet's TA-MoSC, made light).

The encoder skips e1..e4 are fused into one ``emb_size``-channel map at one scale. Four shared experts
(small, medium, large, global receptive field) process it. One top-k gate per skip scale mixes the
experts, and a 1×1 "docker" per scale projects the mixture back to that skip's channels and size,
where it is added to the skip. Dockers start at zero, so stage 2 starts from stage 1's function.
Optionally a shared expert (DeepSeekMoE's fix for redundant experts) is always on, added to every gate's mixture.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import DepthwiseSeparableConv, GlobalContext

EXPERT_NAMES: tuple[str, ...] = ("small", "medium", "large", "global")


def build_expert(name: str, channels: int) -> nn.Module:
    """Expert by receptive field: small 3×3, medium dilation 2, large dilation 4 (all depthwise-separable),
    global (pooling + 1×1, broadcast). (B, C, H, W) -> (B, C, H, W)."""
    dilations = {"small": 1, "medium": 2, "large": 4}
    if name == "global":
        return GlobalContext(channels, channels)
    if name not in dilations:
        raise ValueError(f"Unknown expert {name!r}; choose from {EXPERT_NAMES}.")
    return DepthwiseSeparableConv(channels, channels, dilation=dilations[name])


def cv_squared(usage: torch.Tensor) -> torch.Tensor:
    """Squared coefficient of variation ``var / (mean² + 1e-10)`` of a (num_experts,) usage vector.

    0 when usage is uniform; grows as the usage concentrates on few experts (unbiased variance, as in
    the reference design's ``usage.var()``).
    """
    usage = usage.float()
    return usage.var() / (usage.mean() ** 2 + 1e-10)


def balance_loss(gate_weights: list[torch.Tensor]) -> torch.Tensor:
    """Sum over gates of the CV² of per-expert gate mass in the batch. Each item is (B, num_experts)."""
    return torch.stack([cv_squared(weights.sum(dim=0)) for weights in gate_weights]).sum()


def resize(x: torch.Tensor, size: list[int]) -> torch.Tensor:
    """Bilinear resize of (B, C, H, W) to (B, C, *size); identity when the size already matches."""
    if x.shape[2] == size[0] and x.shape[3] == size[1]:
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class ResizingPointwiseConv(nn.Conv2d):
    """1×1 conv whose output is resized: (B, in_channels, H, W) -> (B, out_channels, *size).

    A 1×1 conv and a bilinear resize commute (both are linear, per pixel and per channel), so the conv
    runs at the lower of the two resolutions: up to 16× fewer MACs than resizing first.
    """

    def __init__(self, in_channels: int, out_channels: int, bias: bool = True) -> None:
        super().__init__(in_channels, out_channels, kernel_size=1, bias=bias)

    def forward(self, x: torch.Tensor, size: list[int]) -> torch.Tensor:
        if x.shape[2] > size[0]:
            return self._conv_forward(resize(x, size), self.weight, self.bias)
        return resize(self._conv_forward(x, self.weight, self.bias), size)


def is_exporting() -> bool:
    """True while tracing, exporting to ONNX or compiling: code must then avoid data-dependent shapes."""
    return torch.jit.is_tracing() or torch.onnx.is_in_onnx_export() or torch.compiler.is_compiling()


class TopKGate(nn.Module):
    """1×1 conv on globally pooled features -> softmax over experts, keep the top k, renormalise.

    (B, C, 1, 1) pooled features (global average pooling, shared by all gates) -> (B, num_experts)
    weights with exactly ``top_k`` non-zeros per row summing to 1.
    """

    def __init__(self, channels: int, num_experts: int, top_k: int) -> None:
        super().__init__()
        self.top_k = top_k
        self.logits = nn.Conv2d(channels, num_experts, kernel_size=1)

    @torch.no_grad()
    def route_to_nearest(self, centroids: torch.Tensor, sharpness: float) -> None:
        """Set the logits so that ``logit_e = -sharpness / 2 * (|x - c_e|² - |x|²)``: the nearest of the (E, C)
        ``centroids`` gets the highest probability (k-means gate initialisation)."""
        self.logits.weight.copy_(sharpness * centroids.reshape(self.logits.weight.shape))
        self.logits.bias.copy_(-sharpness / 2 * centroids.pow(2).sum(dim=1))

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        probabilities = torch.softmax(self.logits(pooled).flatten(1), dim=1)
        top_values, top_indices = probabilities.topk(self.top_k, dim=1)
        top_values = top_values / top_values.sum(dim=1, keepdim=True)
        return torch.zeros_like(probabilities).scatter(1, top_indices, top_values)


class SkipFusion(nn.Module):
    """Fuse skips [(B, C_i, H_i, W_i)] into (B, emb_size, *size): per-skip 1×1 projections, summed, BN, ReLU.

    Equal to a 1×1 conv over the concatenation of the resized skips, but cheaper (see ResizingPointwiseConv).
    """

    def __init__(self, skip_channels: Sequence[int], emb_size: int) -> None:
        super().__init__()
        self.projections = nn.ModuleList(ResizingPointwiseConv(c, emb_size, bias=False) for c in skip_channels)
        self.norm = nn.BatchNorm2d(emb_size)

    def forward(self, skips: list[torch.Tensor], size: list[int]) -> torch.Tensor:
        fused = torch.zeros(1, device=skips[0].device, dtype=skips[0].dtype)
        for index, projection in enumerate(self.projections):
            fused = fused + projection(skips[index], size)
        return F.relu(self.norm(fused))


class HierarchicalMoE(nn.Module):
    """Skips [e1..e4] -> refined skips of the same shapes, with one top-k gate per skip scale.

    Args:
        skip_channels: channels of e1..e4 (finest first).
        emb_size: channels of the fused map the experts work on.
        top_k: experts mixed per gate and sample, 1..num_experts.
        fusion_index: which skip's resolution the experts run at (0 = e1 at H/2, 1 = e2 at H/4, ...).
        experts: expert names, a subset of ``EXPERT_NAMES`` in any order.
        shared_expert: add an always-on "small" expert to every gate's mixture (not gated, not in the balance loss).

    ``forward`` returns ``(refined_skips, balance_loss, gate_weights)``; gate_weights holds one
    (B, num_experts) tensor per skip scale.
    """

    def __init__(
        self,
        skip_channels: Sequence[int],
        emb_size: int = 64,
        top_k: int = 2,
        fusion_index: int = 1,
        experts: Sequence[str] = EXPERT_NAMES,
        shared_expert: bool = False,
    ) -> None:
        super().__init__()
        if not 1 <= top_k <= len(experts):
            raise ValueError(f"top_k must be between 1 and the number of experts ({len(experts)}), got {top_k}.")
        if not 0 <= fusion_index < len(skip_channels):
            raise ValueError(f"fusion_index must index one of the {len(skip_channels)} skips, got {fusion_index}.")
        self.expert_names = tuple(experts)
        self.fusion_index = fusion_index
        self.fuse = SkipFusion(skip_channels, emb_size)
        self.experts = nn.ModuleList(build_expert(name, emb_size) for name in experts)
        self.shared_expert = build_expert("small", emb_size) if shared_expert else None
        self.gates = nn.ModuleList(TopKGate(emb_size, len(experts), top_k) for _ in skip_channels)
        self.dockers = nn.ModuleList(ResizingPointwiseConv(emb_size, c) for c in skip_channels)
        for docker in self.dockers:
            nn.init.zeros_(docker.weight)
            nn.init.zeros_(docker.bias)

    @staticmethod
    def combine(gate_weights: list[torch.Tensor], expert_outputs: list[torch.Tensor]) -> torch.Tensor:
        """Weight expert outputs [(B, C, H, W)] * E by the gates [(B, E)] * G -> (G, B, C, H, W), in one einsum."""
        return torch.einsum("gbe,ebchw->gbchw", torch.stack(gate_weights), torch.stack(expert_outputs))

    def mix_dense(self, fused: torch.Tensor, gate_weights: list[torch.Tensor]) -> torch.Tensor:
        """Run every expert on every sample and weight by the (sparse) gates; used for export."""
        return self.combine(gate_weights, [expert(fused) for expert in self.experts])

    def mix_sparse(self, fused: torch.Tensor, gate_weights: list[torch.Tensor]) -> torch.Tensor:
        """Run each expert only on the samples that some gate routed to it (eager mode).

        An expert no gate chose for any sample is skipped (zeros stand in for it, weighted by zeros);
        one chosen for part of the batch runs on that part only (``index_select``, then ``index_copy``).
        """
        used = torch.stack(gate_weights).gt(0).any(dim=0)  # (B, experts)
        outputs: list[torch.Tensor] = []
        for index, expert in enumerate(self.experts):
            samples = used[:, index].nonzero().flatten()
            if samples.numel() == fused.shape[0]:
                outputs.append(expert(fused))
            elif samples.numel() == 0:
                outputs.append(torch.zeros_like(fused))
            else:
                outputs.append(torch.zeros_like(fused).index_copy(0, samples, expert(fused.index_select(0, samples))))
        return self.combine(gate_weights, outputs)

    def fuse_and_pool(self, skips: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Skips [e1..e4] -> the fused map (B, emb_size, h, w) at the fusion scale and its average (B, emb_size, 1, 1),
        which every gate reads."""
        size = [skips[self.fusion_index].shape[2], skips[self.fusion_index].shape[3]]
        fused = self.fuse(skips, size)
        return fused, F.adaptive_avg_pool2d(fused, 1)

    def forward(self, skips: list[torch.Tensor]) -> tuple[list[torch.Tensor], torch.Tensor, list[torch.Tensor]]:
        fused, pooled = self.fuse_and_pool(skips)
        gate_weights = [gate(pooled) for gate in self.gates]
        if torch.jit.is_scripting():
            mixed = self.mix_dense(fused, gate_weights)
        else:
            mixed = self.mix_dense(fused, gate_weights) if is_exporting() else self.mix_sparse(fused, gate_weights)
        if self.shared_expert is not None:
            mixed = mixed + self.shared_expert(fused)  # (G, B, C, h, w) + (B, C, h, w)
        refined: list[torch.Tensor] = []
        for index, docker in enumerate(self.dockers):
            skip = skips[index]
            refined.append(skip + docker(mixed[index], [skip.shape[2], skip.shape[3]]))
        return refined, balance_loss(gate_weights), gate_weights
