"""CPU cost benchmark: LH-UTANet against MONAI segmentation baselines, and the cost of its design choices.

Measures parameters, GMACs (``FlopCounterMode`` FLOPs / 2, i.e. conv and matmul
work only) and warm batch-1 CPU latency and writes a markdown report. Suites:

- ``main`` (default): LH-UTANet against MONAI networks, with the LH-UTANet budgets
  (``docs/benchmark_cpu.md``);
- ``architecture``: one group of variants per LH-UTANet design choice (MoE fusion
  resolution, last decoder width, bottleneck, encoder stem), with the latency
  difference to each group's reference row (``docs/architecture_costs.md``);
- ``throughput``: folder throughput (images/s) of the bundle's inference command
  (``configs/inference.json`` -> ``evaluator.run()``: decode, resize, model, inversion,
  post-processing, PNG and CSV writing) on the first 100 Kvasir-SEG images of
  ``../shared/data/kvasir-seg/images``, with randomly initialised checkpoints
  (``docs/benchmark_throughput.md``).

Latency is measured fairly: every row runs in a fresh subprocess (this script
re-invoked with the hidden ``--worker KEY`` option, answering with one JSON line),
over ``--repeats`` interleaved round-robin rounds; the reported latency is the
median of the per-round medians.

Usage (from the repository root)::

    python scripts/benchmark.py
    python scripts/benchmark.py --suite architecture
    python scripts/benchmark.py --suite throughput
    python scripts/benchmark.py --models basicunet,unet --repeats 1 --iters 5 --no-write
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

IN_CHANNELS = 3
OUT_CHANNELS = 1
WARMUP_ITERS = 5
NOISY_SPREAD = 1.25  # max/min of per-round medians above which a latency is flagged as disturbed
Results = dict[str, dict[str, float]]  # row key -> {"params_m", "gmacs", "latency_ms" or "images_per_s"}


@dataclass(frozen=True)
class Row:
    """A benchmark row: display name, zero-arg constructor and, for a part of a network, its input."""

    name: str
    make: Callable[[], nn.Module]
    part_input: tuple[int, int] | None = None  # (channels, stride) of a network part's input; None: a full model

    def input_shape(self, size: int) -> tuple[int, int, int, int]:
        """Batch-1 input shape for a size×size image."""
        channels, stride = self.part_input or (IN_CHANNELS, 1)
        return (1, channels, size // stride, size // stride)


def _lh_utanet(encoder: str, use_moe: bool, **kwargs: Any) -> nn.Module:
    """Build LH-UTANet; the import is deferred so MONAI-only runs work without it."""
    from bundle.networks import LightweightHierarchicalUTANet

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


_LH_ENCODERS = ("resnet34", "mobilenetv2")
_MONAI_CHANNELS = [32, 64, 128, 256, 512]
_MONAI_STRIDES = [2, 2, 2, 2]

#: MONAI peers of the main suite (and of scripts/compare_models.py): row key -> network.
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

#: main suite: row key -> row, in table order.
REGISTRY: dict[str, Row] = {
    **{
        f"lh-{enc}{'-moe' if moe else ''}": Row(
            f"LH-UTANet {enc} + MoE (stage 2)" if moe else f"LH-UTANet {enc} (stage 1)",
            functools.partial(_lh_utanet, enc, moe),
        )
        for enc in _LH_ENCODERS
        for moe in (False, True)
    },
    **{key: Row(peer.name, peer.make) for key, peer in MONAI_PEERS.items()},
}

#: latency-ratio columns: row key -> column header.
RATIO_REFS = {"basicunet": "× BasicUNet", "unet": "× UNet", "flexibleunet-resnet34": "× FlexibleUNet(resnet34)"}


@dataclass(frozen=True)
class Budget:
    """``metric(key)`` (divided by ``metric(ref)`` when ``ref`` is set) must be ≤ ``limit``."""

    label: str
    key: str
    metric: str  # "params_m", "gmacs" or "latency_ms"
    limit: float
    ref: str | None = None

    def value(self, results: Results) -> float:
        """The measured value compared against ``limit``."""
        value = results[self.key][self.metric]
        return value / results[self.ref][self.metric] if self.ref else value

    def describe(self, value: float) -> tuple[str, str]:
        """Formatted (measured, limit) strings."""
        if self.ref:
            return f"{value:.3f}×", f"≤ {self.limit:.2f}×"
        return f"{value:.2f}", f"≤ {self.limit:g}"


BUDGETS = (
    Budget("resnet34 + MoE: GMACs", "lh-resnet34-moe", "gmacs", 5.8),
    Budget("resnet34 + MoE: params (M)", "lh-resnet34-moe", "params_m", 24.0),
    Budget(
        "resnet34 + MoE: latency / FlexibleUNet(resnet34)",
        "lh-resnet34-moe",
        "latency_ms",
        1.0,
        "flexibleunet-resnet34",
    ),
    Budget("mobilenetv2 + MoE: GMACs", "lh-mobilenetv2-moe", "gmacs", 1.5),
    Budget("mobilenetv2 + MoE: params (M)", "lh-mobilenetv2-moe", "params_m", 4.0),
    Budget("mobilenetv2 + MoE: latency / UNet", "lh-mobilenetv2-moe", "latency_ms", 1.0, "unet"),
    *(
        Budget(f"{enc}: MoE latency / stage 1 (≤ 15% overhead)", f"lh-{enc}-moe", "latency_ms", 1.15, f"lh-{enc}")
        for enc in _LH_ENCODERS
    ),
)


def _conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int = 1, dilation: int = 1) -> nn.Sequential:
    """Dense Conv2d (size-preserving padding) -> BatchNorm2d -> ReLU."""
    padding = dilation * (kernel_size - 1) // 2
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, padding=padding, dilation=dilation, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class StandardASPP(nn.Module):
    """DeepLabv3 ASPP with dense convs: (B, in_channels, H, W) -> (B, out_channels, H, W).

    Branches 1×1, one 3×3 per atrous rate and image pooling, concatenated and projected by a 1×1 conv.
    """

    def __init__(self, in_channels: int = 512, out_channels: int = 256, rates: Sequence[int] = (6, 12, 18)) -> None:
        super().__init__()
        self.branches = nn.ModuleList(
            [_conv_bn_relu(in_channels, out_channels), *(_conv_bn_relu(in_channels, out_channels, 3, r) for r in rates)]
        )
        self.pooling = nn.Sequential(nn.AdaptiveAvgPool2d(1), _conv_bn_relu(in_channels, out_channels))
        self.project = _conv_bn_relu((len(rates) + 2) * out_channels, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.pooling(x).expand(-1, -1, x.shape[2], x.shape[3])
        return self.project(torch.cat([*(branch(x) for branch in self.branches), pooled], dim=1))


def _aspp_summary(results: Results) -> str:
    """Check the seed's claim that its ASPP has "about 70% fewer parameters than a standard ASPP"."""
    if not {"aspp-lightweight", "aspp-standard"} <= results.keys():
        return ""
    light, standard = results["aspp-lightweight"], results["aspp-standard"]
    ratio = light["params_m"] / standard["params_m"]
    return (
        f"LightweightASPP / standard ASPP: params × {ratio:.3f} ({1 - ratio:.0%} fewer; the seed claims about 70%), "
        f"GMACs × {light['gmacs'] / standard['gmacs']:.3f}."
    )


def _stride1_resnet34_encoder() -> nn.Module:
    """ResNet34Encoder with UTANet's stem: MONAI ``ResNet(..., conv1_t_size=7, conv1_t_stride=1)``, same parameters."""
    from bundle.networks import ResNet34Encoder

    encoder = ResNet34Encoder(IN_CHANNELS)
    encoder.conv1 = nn.Conv2d(IN_CHANNELS, 64, kernel_size=7, stride=1, padding=3, bias=False)
    return encoder


@dataclass(frozen=True)
class Group:
    """Architecture-suite rows documenting one design choice; the first row is the Δ reference."""

    title: str
    rows: dict[str, Row]
    summary: Callable[[Results], str] | None = None  # a line under the group's table


@functools.cache
def _architecture_groups() -> tuple[Group, ...]:
    """The architecture suite; built on demand, as it imports the bundle (for the encoders' defaults)."""
    from bundle.networks import ENCODERS, LightweightASPP, ResNet34Encoder

    fusion_groups = (
        Group(
            f"MoE fusion resolution ({enc})",
            {
                f"{enc}-stage1": Row(f"LH-UTANet {enc} stage 1 (no MoE)", functools.partial(_lh_utanet, enc, False)),
                **{
                    f"{enc}-moe-fusion{index}": Row(
                        f"+ MoE, moe_fusion_index={index} (H/{2 ** (index + 1)})"
                        + (" — default" if index == ENCODERS[enc].moe_fusion_index else ""),
                        functools.partial(_lh_utanet, enc, True, moe_fusion_index=index),
                    )
                    for index in range(4)
                },
            },
        )
        for enc in _LH_ENCODERS
    )
    e5_input = (512, 32)  # ResNet34's deepest feature: 512 channels at stride 32
    return (
        *fusion_groups,
        Group(
            "Last decoder block width (resnet34 stage 1)",
            {
                f"resnet34-decoder{width}": Row(
                    f"decoder_channels=[256, 128, 64, 64, {width}]" + (" — default" if width == 16 else ""),
                    functools.partial(_lh_utanet, "resnet34", False, decoder_channels=[256, 128, 64, 64, width]),
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
                    e5_input,
                ),
                "aspp-standard": Row("standard DeepLabv3 ASPP(512, 256, (6, 12, 18))", StandardASPP, e5_input),
            },
            _aspp_summary,
        ),
        Group(
            "Encoder stem (ResNet34 encoder only)",
            {
                "stem-stride2": Row("ResNet34Encoder, 7×7 stride-2 stem — ours", ResNet34Encoder, (IN_CHANNELS, 1)),
                "stem-stride1": Row(
                    "the same with a 7×7 stride-1 stem (as UTANet)", _stride1_resnet34_encoder, (IN_CHANNELS, 1)
                ),
            },
        ),
    )


def _architecture_rows() -> dict[str, Row]:
    """All architecture-suite rows, in table order."""
    return {key: row for group in _architecture_groups() for key, row in group.rows.items()}


def build(row: Row) -> nn.Module:
    """Construct ``row``'s network in eval mode with deterministic weights."""
    torch.manual_seed(0)
    return row.make().eval()


def measure_cost(model: nn.Module, input_shape: Sequence[int], is_part: bool = False) -> tuple[float, float]:
    """Return (params in millions, GMACs of one forward pass); a full model (not ``is_part``) must return logits."""
    params = sum(p.numel() for p in model.parameters()) / 1e6
    x = torch.randn(*input_shape)
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        out = model(x)
    expected = (1, OUT_CHANNELS, *input_shape[2:])
    if not is_part and (not isinstance(out, torch.Tensor) or out.shape != expected):
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise RuntimeError(f"expected a logits tensor of shape {expected}, got {got}")
    return params, counter.get_total_flops() / 2 / 1e9


def measure_latency(model: nn.Module, input_shape: Sequence[int], iters: int) -> float:
    """Median warm batch-1 forward latency in milliseconds."""
    x = torch.randn(*input_shape)
    times = []
    with torch.inference_mode():
        for _ in range(WARMUP_ITERS):
            model(x)
        for _ in range(iters):
            start = time.perf_counter()
            model(x)
            times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def _run_worker(key: str, args: argparse.Namespace) -> float:
    """Measure ``key`` in a fresh subprocess: median latency (ms), or images/s for the throughput suite."""
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--suite",
        args.suite,
        "--worker",
        key,
        "--size",
        str(args.size),
        "--threads",
        str(args.threads),
        "--iters",
        str(args.iters),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, cwd=REPO_ROOT, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"worker for {key!r} failed (exit {proc.returncode}):\n{proc.stderr}")
    lines = proc.stdout.strip().splitlines()
    return json.loads(lines[-1])["value"]


def cpu_model() -> str:
    """CPU model name from /proc/cpuinfo (falls back to ``platform.processor()``)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _ratio(results: Results, key: str, ref: str) -> str:
    """Latency of ``key`` relative to ``ref``, or a dash when ``ref`` was not measured."""
    return f"{results[key]['latency_ms'] / results[ref]['latency_ms']:.2f}" if ref in results else "—"


def _delta(results: Results, key: str, ref: str) -> str:
    """Latency of ``key`` minus that of ``ref``, in ms and %, or a dash when ``ref`` was not measured."""
    if key == ref:
        return "reference"
    if ref not in results:
        return "—"
    delta = results[key]["latency_ms"] - results[ref]["latency_ms"]
    return f"{delta:+.1f} ms ({delta / results[ref]['latency_ms']:+.0%})"


def _is_noisy(times: Sequence[float]) -> bool:
    """Whether the per-round medians disagree enough to suggest interference from other load."""
    return max(times) / min(times) > NOISY_SPREAD


def _cost_cells(result: dict[str, float], times: list[float], gmacs_digits: int = 2) -> list[str]:
    """Params, GMACs and latency cells (⚠ on a noisy latency)."""
    latency = f"{result['latency_ms']:.1f}" + (" ⚠" if _is_noisy(times) else "")
    return [f"{result['params_m']:.2f}", f"{result['gmacs']:.{gmacs_digits}f}", latency]


def _rounds_cell(times: list[float]) -> str:
    """The per-round medians, slash-separated."""
    return " / ".join(f"{t:.1f}" for t in times)


def markdown_table(head: Sequence[str], body: list[list[str]]) -> str:
    """Render a markdown table."""
    lines = [head, ["---"] * len(head), *body]
    return "\n".join("| " + " | ".join(cells) + " |" for cells in lines)


def _main_results(results: Results, rounds: dict[str, list[float]], size: int) -> tuple[str, int]:
    """Results and Budgets sections of the main suite; also return the number of failed budgets."""
    header = ["Model", "Params (M)", f"GMACs @ {size}²", "Latency (ms)", *RATIO_REFS.values(), "Per-round medians (ms)"]
    rows = [
        [
            REGISTRY[key].name,
            *_cost_cells(r, rounds[key]),
            *(_ratio(results, key, ref) for ref in RATIO_REFS),
            _rounds_cell(rounds[key]),
        ]
        for key, r in results.items()
    ]
    budget_rows, failures = [], 0
    for budget in BUDGETS:
        needed = {budget.key, budget.ref} - {None}
        if not needed <= results.keys():
            budget_rows.append([budget.label, "—", "—", "SKIP (not measured)"])
            continue
        value = budget.value(results)
        passed = value <= budget.limit
        failures += not passed
        budget_rows.append([budget.label, *budget.describe(value), "PASS" if passed else "**FAIL**"])
    sections = f"""\
## Results

{markdown_table(header, rows)}

## Budgets

{markdown_table(["Budget", "Measured", "Limit", "Result"], budget_rows)}
"""
    return sections, failures


def _architecture_results(results: Results, rounds: dict[str, list[float]], size: int) -> tuple[str, int]:
    """Results section of the architecture suite, one table per design choice (no budgets: 0 failures)."""
    header = [
        "Variant",
        "Input",
        "Params (M)",
        f"GMACs @ {size}²",
        "Latency (ms)",
        "Δ latency vs reference",
        "Per-round medians (ms)",
    ]
    sections = []
    for group in _architecture_groups():
        ref = next(iter(group.rows))
        body = [
            [
                row.name,
                "×".join(map(str, row.input_shape(size))),
                *_cost_cells(results[key], rounds[key], gmacs_digits=3),
                _delta(results, key, ref),
                _rounds_cell(rounds[key]),
            ]
            for key, row in group.rows.items()
            if key in results
        ]
        if body:
            summary = group.summary(results) if group.summary else ""
            sections.append("\n\n".join(filter(None, [f"### {group.title}", markdown_table(header, body), summary])))
    return "## Results\n\n" + "\n\n".join(sections) + "\n", 0


THROUGHPUT_IMAGES = 100
THROUGHPUT_SIZE = (224, 224)
KVASIR_IMAGES = REPO_ROOT.parent / "shared" / "data" / "kvasir-seg" / "images"
INFERENCE_CONFIG = REPO_ROOT / "configs" / "inference.json"


@dataclass(frozen=True)
class PipelineRow:
    """Throughput-suite row: a main-suite row (its network, for the random checkpoint) and config overrides."""

    row: str  # REGISTRY key
    overrides: dict[str, Any]
    min_images_per_s: float | None = None  # budget, None: a peer without budget


THROUGHPUT_ROWS: dict[str, PipelineRow] = {
    "lh-mobilenetv2-moe": PipelineRow("lh-mobilenetv2-moe", {"encoder": "mobilenetv2", "use_moe": True}, 15.0),
    "lh-resnet34-moe": PipelineRow("lh-resnet34-moe", {"encoder": "resnet34", "use_moe": True}, 6.0),
    **{
        key: PipelineRow(
            key,
            {  # inference.json reads network_settings from LH-UTANet checkpoints only
                "network_def": MONAI_PEERS[key].network_def(),
                "in_channels": IN_CHANNELS,
                "out_channels": OUT_CHANNELS,
                "network_settings": {
                    "in_channels": IN_CHANNELS,
                    "out_channels": OUT_CHANNELS,
                    "image_size": list(THROUGHPUT_SIZE),
                },
            },
        )
        for key in ("unet", "flexibleunet-resnet34")
    },
}


def _inference_settings() -> dict[str, Any]:
    """``batch_size`` and ``num_workers`` of configs/inference.json (the throughput suite keeps them)."""
    config = json.loads(INFERENCE_CONFIG.read_text())
    return {key: config[key] for key in ("batch_size", "num_workers")}


def measure_throughput(key: str) -> float:
    """Images/s of the ``evaluator`` of configs/inference.json on the first Kvasir-SEG images, for row ``key``.

    Builds a random checkpoint of the row's network, links the images into a temporary folder
    and times the whole run (worker start, decode, resize, model, inversion, post-processing, writing).
    """
    from monai.bundle import ConfigParser

    pipeline = THROUGHPUT_ROWS[key]
    sources = sorted(path for path in KVASIR_IMAGES.iterdir() if path.is_file())[:THROUGHPUT_IMAGES]
    with tempfile.TemporaryDirectory(prefix="throughput-") as tmp:
        images, output, ckpt = Path(tmp) / "images", Path(tmp) / "predictions", Path(tmp) / "model.pt"
        images.mkdir()
        for source in sources:
            (images / source.name).symlink_to(source.resolve())
        torch.save(build(REGISTRY[pipeline.row]).state_dict(), ckpt)
        parser = ConfigParser()
        parser.read_config(str(INFERENCE_CONFIG))
        parser.update(
            {
                "dataset_dir": str(images),
                "output_dir": str(output),
                "ckpt_path": str(ckpt),
                "image_size": list(THROUGHPUT_SIZE),
                "device": "$torch.device('cpu')",
                **pipeline.overrides,
            }
        )
        evaluator = parser.get_parsed_content("evaluator")
        start = time.perf_counter()
        evaluator.run()
        seconds = time.perf_counter() - start
        report = evaluator.state.report
    failed = [row["path"] for row in report if row["status"] != "ok"]
    if failed:
        raise RuntimeError(f"{len(failed)} image(s) not segmented, e.g. {failed[0]}")
    return len(report) / seconds


def _throughput_results(results: Results, rounds: dict[str, list[float]], size: int) -> tuple[str, int]:
    """Results and Budgets sections of the throughput suite; also return the number of failed budgets."""
    header = [
        "Model",
        "Params (M)",
        "Images/s",
        "ms / image",
        "× UNet",
        "× FlexibleUNet(resnet34)",
        "Per-round images/s",
    ]

    def relative(key: str, ref: str) -> str:
        return f"{results[key]['images_per_s'] / results[ref]['images_per_s']:.2f}" if ref in results else "—"

    rows = [
        [
            REGISTRY[key].name,
            f"{r['params_m']:.2f}",
            f"{r['images_per_s']:.1f}" + (" ⚠" if _is_noisy(rounds[key]) else ""),
            f"{1e3 / r['images_per_s']:.0f}",
            relative(key, "unet"),
            relative(key, "flexibleunet-resnet34"),
            _rounds_cell(rounds[key]),
        ]
        for key, r in results.items()
    ]
    budget_rows, failures = [], 0
    for key, pipeline in THROUGHPUT_ROWS.items():
        if pipeline.min_images_per_s is None:
            continue
        label = f"{REGISTRY[key].name}: images/s"
        if key not in results:
            budget_rows.append([label, "—", "—", "SKIP (not measured)"])
            continue
        value = results[key]["images_per_s"]
        passed = value >= pipeline.min_images_per_s
        failures += not passed
        budget_rows.append(
            [label, f"{value:.1f}", f"≥ {pipeline.min_images_per_s:g}", "PASS" if passed else "**FAIL**"]
        )
    sections = f"""\
## Results

{markdown_table(header, rows)}

## Budgets

{markdown_table(["Budget", "Measured", "Limit", "Result"], budget_rows)}
"""
    return sections, failures


@dataclass(frozen=True)
class Suite:
    """A benchmark suite: report title and default output, its rows (built on demand) and results sections."""

    title: str
    output: Path
    rows: Callable[[], dict[str, Row]]
    results: Callable[[Results, dict[str, list[float]], int], tuple[str, int]]  # -> (markdown, failed budgets)
    legend: str  # Method-section sentence on the suite's extra columns


SUITES: dict[str, Suite] = {
    "main": Suite(
        "CPU benchmark",
        REPO_ROOT / "docs" / "benchmark_cpu.md",
        lambda: REGISTRY,
        _main_results,
        "Ratio columns = latency / latency of the named model.",
    ),
    "architecture": Suite(
        "Architecture costs (CPU)",
        REPO_ROOT / "docs" / "architecture_costs.md",
        _architecture_rows,
        _architecture_results,
        "Δ latency = latency − latency of the group's first (reference) row.\n"
        "Rows whose Input is not the image are network parts, fed a feature map of that shape.",
    ),
    "throughput": Suite(
        "Folder inference throughput (CPU)",
        REPO_ROOT / "docs" / "benchmark_throughput.md",
        lambda: {key: REGISTRY[key] for key in THROUGHPUT_ROWS},
        _throughput_results,
        "× columns = images/s / images/s of the named model.",
    ),
}


def format_report(
    results: Results, rounds: dict[str, list[float]], args: argparse.Namespace, command: str, load: tuple[float, float]
) -> tuple[str, int]:
    """Render the markdown report; also return the number of failed budgets."""
    import monai

    suite = SUITES[args.suite]
    sections, failures = suite.results(results, rounds, args.size)
    if args.suite == "throughput":
        settings = _inference_settings()
        method = f"""\
`configs/inference.json` parsed with `monai.bundle.ConfigParser`, overrides `dataset_dir` (the first
{THROUGHPUT_IMAGES} files, sorted, of `../shared/data/kvasir-seg/images`: Kvasir-SEG JPGs of varying size),
`output_dir` (a fresh temporary folder), `ckpt_path` (a temporary `torch.save(state_dict)` of randomly
initialised weights; the network is read from it), `image_size` {list(THROUGHPUT_SIZE)}, `device` cpu; the MONAI
peers override `network_def` with the MONAI network (and `network_settings`), everything else identical.
Timed: the `evaluator` (MONAI's SupervisedEvaluator) end to end (DataLoader worker start, decode, resize,
normalise, model, inversion to the original size, post-processing, PNG masks, `predictions.csv`);
images/s = {THROUGHPUT_IMAGES} / seconds.
inference.json settings used: `batch_size` {settings["batch_size"]}, `num_workers` {settings["num_workers"]}
(decoding processes beside the main process, which runs the model with {args.threads} torch thread(s)).
Each configuration in a fresh process; {args.repeats} interleaved round-robin round(s);
reported value = median of the rounds. {suite.legend} ⚠ = rounds spread more than
{NOISY_SPREAD:g}× (max/min): likely disturbed by other load, re-run on a quiet machine."""
    else:
        method = f"""\
Input 1×{IN_CHANNELS}×{args.size}×{args.size}, `model.eval()`, `torch.inference_mode()`.
GMACs = `torch.utils.flop_counter.FlopCounterMode` total FLOPs / 2 (conv/matmul work only).
Latency: each model in a fresh process, {WARMUP_ITERS} warm-up + {args.iters} timed runs (median);
{args.repeats} interleaved round-robin round(s); reported value = median of the per-round medians.
{suite.legend} ⚠ = per-round medians spread more than
{NOISY_SPREAD:g}× (max/min): likely disturbed by other load, re-run on a quiet machine."""
    suite_option = [] if args.suite == "main" else ["--suite", args.suite]
    generator = shlex.join(["python", "scripts/benchmark.py", *suite_option])
    date = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    report = f"""\
_Generated by `{generator}` — do not edit by hand; re-run the script to update._

# {suite.title}

Command: `{command}`

## Machine

- CPU: {cpu_model()} ({os.cpu_count()} logical cores)
- torch {torch.__version__}, monai {monai.__version__}, Python {platform.python_version()}
- torch threads: {args.threads}
- 1-min load average at start / end of run: {load[0]:.2f} / {load[1]:.2f} (other processes add timing noise)
- Date: {date}

## Method

{method}

{sections}"""
    return report, failures


def _parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """Parse and validate the command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=224, help="input height = width (multiple of 32)")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads value")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved latency rounds")
    parser.add_argument("--iters", type=int, default=30, help="timed iterations per round")
    parser.add_argument(
        "--suite",
        choices=SUITES,
        default="main",
        help="main: LH-UTANet vs MONAI baselines, with budgets; architecture: cost of each LH-UTANet design choice; "
        "throughput: images/s of the folder inference command on Kvasir-SEG, with budgets",
    )
    parser.add_argument("--models", help="comma-separated row keys of the suite (default all; a wrong key lists them)")
    parser.add_argument(
        "--output",
        type=Path,
        help="markdown report path (default docs/benchmark_cpu.md; docs/architecture_costs.md or "
        "docs/benchmark_throughput.md for --suite architecture or throughput)",
    )
    parser.add_argument("--no-write", action="store_true", help="print the report without writing it")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    rows = SUITES[args.suite].rows()
    args.output = args.output or SUITES[args.suite].output
    args.models = list(rows) if args.models is None else [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in args.models if m not in rows]
    if unknown or not args.models:
        parser.error(f"unknown or empty --models {unknown}; choose from {', '.join(rows)}")
    if args.worker is not None and args.worker not in rows:
        parser.error(f"unknown --worker {args.worker!r}")
    if args.size <= 0 or args.size % 32:
        parser.error("--size must be a positive multiple of 32")
    if min(args.threads, args.repeats, args.iters) < 1:
        parser.error("--threads, --repeats and --iters must be ≥ 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark (or, with ``--worker``, one latency measurement); return the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parse_args(argv)
    torch.set_num_threads(args.threads)

    rows = SUITES[args.suite].rows()

    if args.worker:
        if args.suite == "throughput":
            value = measure_throughput(args.worker)
        else:
            value = measure_latency(build(rows[args.worker]), rows[args.worker].input_shape(args.size), args.iters)
        print(json.dumps({"key": args.worker, "value": value}))
        return 0
    if args.suite == "throughput" and not KVASIR_IMAGES.is_dir():
        print(
            f"error: the throughput suite needs the Kvasir-SEG images in {KVASIR_IMAGES} "
            "(../shared/data/kvasir-seg/images from the repository root); not found.",
            file=sys.stderr,
        )
        return 2

    start, load_start = time.perf_counter(), os.getloadavg()[0]
    keys = [k for k in rows if k in args.models]  # registry order
    results: Results = {}
    for key in keys:
        row = rows[key]
        params_m, gmacs = measure_cost(build(row), row.input_shape(args.size), is_part=row.part_input is not None)
        results[key] = {"params_m": params_m, "gmacs": gmacs}
        print(f"[cost] {key}: {params_m:.2f} M params, {gmacs:.2f} GMACs", file=sys.stderr)

    rounds: dict[str, list[float]] = {key: [] for key in keys}
    metric, unit = ("images_per_s", "images/s") if args.suite == "throughput" else ("latency_ms", "ms")
    for r in range(args.repeats):
        for key in keys[r % len(keys) :] + keys[: r % len(keys)]:  # rotate start to spread order effects
            rounds[key].append(_run_worker(key, args))
            print(f"[{metric}] round {r + 1}/{args.repeats} {key}: {rounds[key][-1]:.1f} {unit}", file=sys.stderr)
    for key in keys:
        results[key][metric] = statistics.median(rounds[key])

    command = shlex.join(["python", "scripts/benchmark.py", *argv])
    report, failures = format_report(results, rounds, args, command, (load_start, os.getloadavg()[0]))
    print(report)
    if not args.no_write:
        from bundle.io import atomic_write_text

        atomic_write_text(args.output, report)
        print(f"wrote {args.output}", file=sys.stderr)
    noisy = [key for key in keys if _is_noisy(rounds[key])]
    if noisy:
        print(f"WARNING: noisy {metric} (⚠) for {', '.join(noisy)}; re-run on a quiet machine", file=sys.stderr)
    if failures:
        print(f"WARNING: {failures} budget(s) FAIL (see Budgets table)", file=sys.stderr)
    print(f"total runtime: {time.perf_counter() - start:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
