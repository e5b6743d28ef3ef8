"""Common measurement of the benchmarks: parameters, GMACs, warm batch-1 latency in torch and ONNX Runtime (fp32 and
int8), budgets, and markdown helpers."""

from __future__ import annotations

import platform
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from bundle.atomic_files import atomic_write_text
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .peers import IN_CHANNELS, OUT_CHANNELS

WARMUP_ITERS = 5
NOISY_SPREAD = 1.25  # max/min of per-round medians above which a latency is flagged as disturbed
Results = dict[str, dict[str, float]]  # row key -> {"params_m", "gmacs", "<backend>_ms" or "images_per_s"}


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


def median_ms(run: Callable[[], object], iters: int) -> float:
    """Median wall time of ``run()`` in milliseconds over ``iters`` calls after WARMUP_ITERS warm-up calls."""
    for _ in range(WARMUP_ITERS):
        run()
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        run()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def measure_latency(model: nn.Module, input_shape: Sequence[int], iters: int) -> float:
    """Median warm batch-1 torch eager forward latency in milliseconds."""
    x = torch.randn(*input_shape)
    with torch.inference_mode():
        return median_ms(lambda: model(x), iters)


def onnx_session(path: str | Path, threads: int):
    """An ONNX Runtime CPU session with all graph optimisations and ``threads`` intra-op threads."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def measure_onnx_latency(
    model: nn.Module, input_shape: Sequence[int], iters: int, threads: int, int8: bool = False
) -> float:
    """Median warm batch-1 latency (ms) of ``model`` exported to ONNX (``bundle.backends.predictors.export_onnx``) in ONNX
    Runtime; ``int8``: after ``scripts/quantize.py``'s static QDQ quantisation, calibrated on 8 random inputs (the
    calibration changes the scales, not the work)."""
    from bundle.backends.predictors import export_onnx
    from scripts.quantize import quantize_onnx

    x = np.random.default_rng(0).random(input_shape, dtype=np.float32)
    with tempfile.TemporaryDirectory(prefix="bench-onnx-") as tmp:
        path = Path(tmp) / "model.onnx"
        export_onnx(model, path, input_shape[2:], input_shape[1])
        if int8:
            calibration = [np.random.default_rng(i).random(input_shape, dtype=np.float32) for i in range(8)]
            path = quantize_onnx(path, Path(tmp) / "model.int8.onnx", calibration)
        session = onnx_session(path, threads)
        name = session.get_inputs()[0].name
        return median_ms(lambda: session.run(None, {name: x}), iters)


def cpu_model() -> str:
    """CPU model name from /proc/cpuinfo (falls back to ``platform.processor()``)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def is_noisy(times: Sequence[float]) -> bool:
    """Whether the per-round medians disagree enough to suggest interference from other load."""
    return len(times) > 0 and max(times) / min(times) > NOISY_SPREAD


def value_cell(value: float, times: Sequence[float], digits: int = 1) -> str:
    """A measured value, ⚠ when its rounds are noisy."""
    return f"{value:.{digits}f}" + (" ⚠" if is_noisy(times) else "")


def rounds_cell(times: Sequence[float]) -> str:
    """The per-round values, slash-separated."""
    return " / ".join(f"{t:.1f}" for t in times)


def markdown_table(head: Sequence[str], body: list[list[str]]) -> str:
    """Render a markdown table."""
    lines = [head, ["---"] * len(head), *body]
    return "\n".join("| " + " | ".join(cells) + " |" for cells in lines)


@dataclass(frozen=True)
class Budget:
    """``results[key][metric]`` (divided by ``results[ref][ref_metric or metric]`` when ``ref`` is set) must be
    ≤ ``limit`` (``at_least``: ≥ ``limit``)."""

    label: str
    key: str
    metric: str
    limit: float
    ref: str | None = None
    ref_metric: str | None = None
    at_least: bool = False

    def needed(self) -> set[str]:
        return {self.key} | ({self.ref} if self.ref else set())

    def value(self, results: Results) -> float:
        value = results[self.key][self.metric]
        return value / results[self.ref][self.ref_metric or self.metric] if self.ref else value

    def passes(self, value: float) -> bool:
        return value >= self.limit if self.at_least else value <= self.limit

    def describe(self, value: float) -> tuple[str, str]:
        """Formatted (measured, limit) strings."""
        sign = "≥" if self.at_least else "≤"
        if self.ref:
            return f"{value:.3f}×", f"{sign} {self.limit:.2f}×"
        return f"{value:.2f}", f"{sign} {self.limit:g}"


def budget_table(budgets: Sequence[Budget], results: Results) -> tuple[str, int]:
    """The Budgets section (skipping budgets whose rows were not measured) and the number of failures."""
    body, failures = [], 0
    for budget in budgets:
        if not budget.needed() <= results.keys():
            body.append([budget.label, "—", "—", "SKIP (not measured)"])
            continue
        value = budget.value(results)
        passed = budget.passes(value)
        failures += not passed
        body.append([budget.label, *budget.describe(value), "PASS" if passed else "**FAIL**"])
    return "## Budgets\n\n" + markdown_table(["Budget", "Measured", "Limit", "Result"], body) + "\n", failures


def publish(text: str, path: Path, write: bool = True) -> int:
    """Print a generated report and, when ``write``, write it (atomically) to ``path``; exit code 0."""
    print(text)
    if write:
        atomic_write_text(path, text)
    return 0
