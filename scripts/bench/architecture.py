"""The architecture suite: one group of variants per LH-UTANet design choice (MoE fusion resolution, last decoder
width, bottleneck, encoder stem), with the torch latency difference to each group's reference row
(``docs/architecture_costs.md``)."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from bundle.networks import ENCODERS, ConvNormAct, LightweightASPP, ResNet34Encoder
from torch import nn

from .measure import Results, Row, markdown_table, rounds_cell, value_cell
from .peers import IN_CHANNELS, LH_ENCODERS, lh_utanet


class StandardASPP(nn.Module):
    """DeepLabv3 ASPP with dense convs: (B, in_channels, H, W) -> (B, out_channels, H, W).

    Branches 1×1, one 3×3 per atrous rate and image pooling, concatenated and projected by a 1×1 conv.
    """

    def __init__(self, in_channels: int = 512, out_channels: int = 256, rates: Sequence[int] = (6, 12, 18)) -> None:
        super().__init__()
        self.branches = nn.ModuleList(
            [
                ConvNormAct(in_channels, out_channels, kernel_size=1),
                *(ConvNormAct(in_channels, out_channels, dilation=rate) for rate in rates),
            ]
        )
        self.pooling = nn.Sequential(nn.AdaptiveAvgPool2d(1), ConvNormAct(in_channels, out_channels, kernel_size=1))
        self.project = ConvNormAct((len(rates) + 2) * out_channels, out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.pooling(x).expand(-1, -1, x.shape[2], x.shape[3])
        return self.project(torch.cat([*(branch(x) for branch in self.branches), pooled], dim=1))


def aspp_summary(results: Results) -> str:
    """Check the reference design's claim that its ASPP has "about 70% fewer parameters than a standard ASPP"."""
    if not {"aspp-lightweight", "aspp-standard"} <= results.keys():
        return ""
    light, standard = results["aspp-lightweight"], results["aspp-standard"]
    ratio = light["params_m"] / standard["params_m"]
    return (
        f"LightweightASPP / standard ASPP: params × {ratio:.3f} ({1 - ratio:.0%} fewer; the reference design claims "
        f"about 70%), GMACs × {light['gmacs'] / standard['gmacs']:.3f}."
    )


def stride1_resnet34_encoder() -> nn.Module:
    """ResNet34Encoder with UTANet's stem: MONAI ``ResNet(..., conv1_t_size=7, conv1_t_stride=1)``, same parameters."""
    encoder = ResNet34Encoder(IN_CHANNELS)
    encoder.conv1 = nn.Conv2d(IN_CHANNELS, 64, kernel_size=7, stride=1, padding=3, bias=False)
    return encoder


@dataclass(frozen=True)
class Group:
    """Rows documenting one design choice; the first row is the Δ reference."""

    title: str
    rows: dict[str, Row]
    summary: Callable[[Results], str] | None = None  # a line under the group's table


def fusion_group(encoder: str) -> Group:
    """Stage 1 against the MoE at each skip resolution."""
    rows = {
        f"{encoder}-stage1": Row(f"LH-UTANet {encoder} stage 1 (no MoE)", functools.partial(lh_utanet, encoder, False))
    }
    for index in range(4):
        default = " — default" if index == ENCODERS[encoder].moe_fusion_index else ""
        rows[f"{encoder}-moe-fusion{index}"] = Row(
            f"+ MoE, moe_fusion_index={index} (H/{2 ** (index + 1)}){default}",
            functools.partial(lh_utanet, encoder, True, moe_fusion_index=index),
        )
    return Group(f"MoE fusion resolution ({encoder})", rows)


E5_INPUT = (512, 32)  # ResNet34's deepest feature: 512 channels at stride 32

GROUPS: tuple[Group, ...] = (
    *(fusion_group(encoder) for encoder in LH_ENCODERS),
    Group(
        "Last decoder block width (resnet34 stage 1)",
        {
            f"resnet34-decoder{width}": Row(
                f"decoder_channels=[256, 128, 64, 64, {width}]" + (" — default" if width == 16 else ""),
                functools.partial(lh_utanet, "resnet34", False, decoder_channels=[256, 128, 64, 64, width]),
            )
            for width in (16, 32)
        },
    ),
    Group(
        "Bottleneck (on ResNet34's e5)",
        {
            "aspp-lightweight": Row(
                "LightweightASPP(512, 256, (6, 12)) — ours",
                functools.partial(LightweightASPP, 512, 256, (6, 12)),
                E5_INPUT,
            ),
            "aspp-standard": Row("standard DeepLabv3 ASPP(512, 256, (6, 12, 18))", StandardASPP, E5_INPUT),
        },
        aspp_summary,
    ),
    Group(
        "Encoder stem (ResNet34 encoder only)",
        {
            "stem-stride2": Row("ResNet34Encoder, 7×7 stride-2 stem — ours", ResNet34Encoder, (IN_CHANNELS, 1)),
            "stem-stride1": Row(
                "the same with a 7×7 stride-1 stem (as UTANet)", stride1_resnet34_encoder, (IN_CHANNELS, 1)
            ),
        },
    ),
)

#: all rows, in table order
ROWS: dict[str, Row] = {key: row for group in GROUPS for key, row in group.rows.items()}


def results_section(results: Results, rounds: dict[tuple[str, str], list[float]], size: int) -> tuple[str, int]:
    """One table per design choice (no budgets: 0 failures)."""
    header = ["Variant", "Input", "Params (M)", f"GMACs @ {size}²", "Latency (ms)", "Δ latency vs reference"]
    header.append("Per-round medians (ms)")
    sections = []
    for group in GROUPS:
        ref = next(iter(group.rows))
        body = []
        for key, row in group.rows.items():
            if key not in results:
                continue
            result, times = results[key], rounds[key, "torch"]
            if key == ref:
                delta = "reference"
            elif ref in results:
                change = result["torch_ms"] - results[ref]["torch_ms"]
                delta = f"{change:+.1f} ms ({change / results[ref]['torch_ms']:+.0%})"
            else:
                delta = "—"
            shape = "×".join(map(str, row.input_shape(size)))
            body.append(
                [
                    row.name,
                    shape,
                    f"{result['params_m']:.2f}",
                    f"{result['gmacs']:.3f}",
                    value_cell(result["torch_ms"], times),
                ]
                + [delta, rounds_cell(times)]
            )
        if body:
            summary = group.summary(results) if group.summary else ""
            sections.append("\n\n".join(filter(None, [f"### {group.title}", markdown_table(header, body), summary])))
    return "## Results\n\n" + "\n\n".join(sections) + "\n", 0
