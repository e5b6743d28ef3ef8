"""The main suite: warm batch-1 CPU latency of LH-UTANet (every registered encoder) and MONAI's networks, in torch
eager and ONNX Runtime (LH-UTANet + MoE also int8), with the LH-UTANet budgets (``docs/benchmark_cpu.md``)."""

from __future__ import annotations

import functools
import math

import torch

from .measure import Budget, Results, Row, budget_table, markdown_table, median_ms, rounds_cell, value_cell
from .peers import LH_ENCODERS, MONAI_PEERS, lh_utanet

#: backend -> (result metric, column header)
BACKENDS: dict[str, tuple[str, str]] = {
    "torch": ("torch_ms", "torch eager (ms)"),
    "onnx": ("onnx_ms", "ONNX Runtime (ms)"),
    "onnx-int8": ("int8_ms", "ORT int8 (ms)"),
}
DEFAULT_CPU_BACKEND = "onnx"  # what inference.json's backend "auto" runs on a CPU

#: row key -> row, in table order
ROWS: dict[str, Row] = {
    **{
        f"lh-{enc}{'-moe' if moe else ''}": Row(
            f"LH-UTANet {enc} + MoE (stage 2)" if moe else f"LH-UTANet {enc} (stage 1)",
            functools.partial(lh_utanet, enc, moe),
        )
        for enc in LH_ENCODERS
        for moe in (False, True)
    },
    **{key: Row(peer.name, peer.make) for key, peer in MONAI_PEERS.items()},
}


def backends_of(key: str) -> tuple[str, ...]:
    """The backends a row is measured with: int8 for the LH-UTANet + MoE rows (the shipped kind) only."""
    return ("torch", "onnx", "onnx-int8") if key.startswith("lh-") and key.endswith("-moe") else ("torch", "onnx")


#: latency-ratio columns: (row key, backend) of the reference -> column header; each row uses its default CPU path
RATIO_REFS = {("unet", "torch"): "default ÷ UNet torch", ("unet", "onnx"): "default ÷ UNet ORT"}

FLEXIBLE = "flexibleunet-resnet34"
BUDGETS = (
    Budget("resnet34 + MoE: GMACs", "lh-resnet34-moe", "gmacs", 5.8),
    Budget("resnet34 + MoE: params (M)", "lh-resnet34-moe", "params_m", 24.0),
    Budget("resnet34 + MoE: torch / FlexibleUNet(resnet34) torch", "lh-resnet34-moe", "torch_ms", 1.0, FLEXIBLE),
    Budget("mobilenetv2 + MoE: GMACs", "lh-mobilenetv2-moe", "gmacs", 1.5),
    Budget("mobilenetv2 + MoE: params (M)", "lh-mobilenetv2-moe", "params_m", 4.0),
    Budget("mobilenetv2 + MoE: default CPU path (ORT), ms", "lh-mobilenetv2-moe", "onnx_ms", 10.0),
    Budget("mobilenetv2 + MoE: default (ORT) / UNet torch", "lh-mobilenetv2-moe", "onnx_ms", 0.25, "unet", "torch_ms"),
    Budget("mobilenetv2 + MoE: torch / UNet torch", "lh-mobilenetv2-moe", "torch_ms", 1.0, "unet"),
    *(
        Budget(f"{enc}: MoE torch latency / stage 1 (≤ 15% overhead)", f"lh-{enc}-moe", "torch_ms", 1.15, f"lh-{enc}")
        for enc in LH_ENCODERS
    ),
)


def _ms_cell(results: Results, rounds: dict[tuple[str, str], list[float]], key: str, backend: str) -> str:
    metric = BACKENDS[backend][0]
    value = results[key].get(metric)
    if value is None:
        return "—"
    return "failed" if math.isnan(value) else value_cell(value, rounds[key, backend])


def results_section(results: Results, rounds: dict[tuple[str, str], list[float]], size: int) -> tuple[str, int]:
    """Results and Budgets sections; also return the number of failed budgets."""
    header = ["Model", "Params (M)", f"GMACs @ {size}²", *(column for _, column in BACKENDS.values())]
    header += ["ORT speed-up", "ORT GFLOP/s", *RATIO_REFS.values(), "Per-round medians, torch / ORT (ms)"]
    default_metric = BACKENDS[DEFAULT_CPU_BACKEND][0]
    body = []
    for key, result in results.items():
        torch_ms, onnx_ms = result.get("torch_ms", math.nan), result.get(default_metric, math.nan)
        ratios = [
            f"{onnx_ms / results[ref][BACKENDS[backend][0]]:.2f}" if ref in results else "—"
            for ref, backend in RATIO_REFS
        ]
        per_round = " · ".join(rounds_cell(rounds[key, b]) for b in ("torch", DEFAULT_CPU_BACKEND))
        body.append(
            [
                ROWS[key].name,
                f"{result['params_m']:.2f}",
                f"{result['gmacs']:.2f}",
                *(_ms_cell(results, rounds, key, backend) for backend in BACKENDS),
                f"{torch_ms / onnx_ms:.1f}×",
                f"{2 * result['gmacs'] / onnx_ms * 1e3:.0f}",
                *ratios,
                per_round,
            ]
        )
    budgets, failures = budget_table(BUDGETS, results)
    peak = matmul_gflops()
    limit = (
        f"ORT GFLOP/s = 2 × GMACs / ORT latency. The CPU's float32 limit, measured as a 2048² matrix product in torch "
        f"with the same threads: {peak:.0f} GFLOP/s"
    )
    if "lh-mobilenetv2-moe" in results:
        result = results["lh-mobilenetv2-moe"]
        floor_ms = 2 * result["gmacs"] / peak * 1e3
        limit += (
            f"; at that rate LH-UTANet mobilenetv2 + MoE would take {floor_ms:.1f} ms, it takes "
            f"{result[default_metric]:.1f} ms ({floor_ms / result[default_metric]:.0%} of the limit)"
        )
    return f"## Results\n\n{markdown_table(header, body)}\n\n{limit}.\n\n{budgets}", failures


def matmul_gflops(size: int = 2048, iters: int = 10) -> float:
    """Float32 GFLOP/s of a ``size``² matrix product in torch (this process's threads): the CPU's practical limit."""
    a, b = torch.rand(size, size), torch.rand(size, size)
    return 2 * size**3 / median_ms(lambda: a @ b, iters) / 1e6
