"""ONNX Runtime session options for LH-UTANet mobilenetv2 + MoE at 224² (``docs/benchmark_ort_options.md``): graph
optimisation level (ALL includes the NCHWc layout transformation), thread spinning, intra-op threads, execution
mode, memory pattern, denormals, a saved ORT-optimised graph, int8, batch size (the batched TTA runs 4 flips as
one batch) and channel counts that suit the vector width, each as ms per image, against the CPU's matrix-product
limit.

Usage (from the repository root)::

    python -m scripts.bench.ort_options [--rounds 3] [--iters 30] [--no-write]
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from unittest.mock import patch

import numpy as np
import onnxruntime
import torch
from bundle.backends.predictors import export_onnx
from bundle.errors import run_script
from bundle.networks import LHUTANet, MobileNetV2Encoder

from .latency import ROWS, matmul_gflops
from .measure import build, cpu_model, markdown_table, measure_cost, median_ms, publish, rounds_cell

REPO_ROOT = Path(__file__).resolve().parents[2]
DOC = REPO_ROOT / "docs" / "benchmark_ort_options.md"
KEY, SIZE = "lh-mobilenetv2-moe", 224
LEVELS = {
    "ALL": onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL,
    "EXTENDED": onnxruntime.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "DISABLE": onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL,
}


@dataclass(frozen=True)
class Variant:
    label: str
    level: str = "ALL"
    spinning: bool = True
    threads: int = 2
    batch: int = 1
    model: str = "fp32"  # a key of the models write_models() writes: fp32, optimised, int8, int8-full-range, c16
    parallel: bool = False  # ORT_PARALLEL execution mode (independent branches at once)
    mem_pattern: bool = True
    denormal_zero: bool = False


VARIANTS = (
    Variant("ALL optimisations, spinning, 2 threads, batch 1 (the latency suite's session)"),
    Variant("no spinning (the bundle's OnnxPredictor)", spinning=False),
    Variant("EXTENDED (no NCHWc layout transformation)", level="EXTENDED"),
    Variant("1 intra-op thread", threads=1),
    Variant("parallel execution mode (2 inter-op threads)", parallel=True),
    Variant("no memory pattern", mem_pattern=False),
    Variant("denormals as zero", denormal_zero=True),
    Variant("ORT-optimised model saved, loaded without optimisation", level="DISABLE", model="optimised"),
    Variant("int8 (scripts/quantize.py, reduce_range: the shipped kind)", model="int8"),
    Variant("int8 without reduce_range (full 8-bit weights; VNNI)", model="int8-full-range"),
    Variant("int8 (reduce_range), no spinning", spinning=False, model="int8"),
    Variant("batch 4 (the four flips of one image)", batch=4),
    Variant("batch 8 (folder inference's batch)", batch=8),
    Variant("batch 8, no spinning", spinning=False, batch=8),
    Variant("every channel count a multiple of 16 (the 24-channel stage at 32)", model="c16"),
    Variant("every channel count a multiple of 16, no spinning", spinning=False, model="c16"),
)


def multiple_of_16_network() -> torch.nn.Module:
    """mobilenetv2 + MoE with MobileNetV2's 24-channel stage widened to 32 (its expansion 144 -> 192, the decoder's
    48 -> 64), so that every convolution but the stem's input and the 1- and 4-channel heads has a multiple of 16
    channels: one AVX-512 register of float32, ONNX Runtime's NCHWc block there. More work than the shipped layout."""
    settings = list(MobileNetV2Encoder.settings)
    settings[1] = (6, 32, 2, 2)
    with patch.multiple(MobileNetV2Encoder, settings=tuple(settings), out_channels=(16, 32, 32, 96, 320)):
        torch.manual_seed(0)
        return LHUTANet(encoder="mobilenetv2", use_moe=True).eval()


def session(path: Path, variant: Variant, optimised_path: Path | None = None) -> onnxruntime.InferenceSession:
    """An ONNX Runtime CPU session of ``variant``'s options (with ``optimised_path``: save the optimised graph)."""
    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = LEVELS[variant.level]
    options.intra_op_num_threads = variant.threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if variant.spinning else "0")
    if variant.parallel:
        options.execution_mode = onnxruntime.ExecutionMode.ORT_PARALLEL
        options.inter_op_num_threads = 2
    options.enable_mem_pattern = variant.mem_pattern
    if variant.denormal_zero:
        options.add_session_config_entry("session.set_denormal_as_zero", "1")
    if optimised_path is not None:
        options.optimized_model_filepath = str(optimised_path)
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def write_models(folder: Path) -> dict[str, Path]:
    """The fp32 export of the benchmark network, its ORT-optimised graph, two int8 quantisations (calibrated on
    8 random inputs, as the latency suite's int8 column) and the multiple-of-16 channel layout."""
    from scripts.quantize import quantize_onnx

    paths = {"fp32": folder / "model.onnx", "optimised": folder / "optimised.onnx"}
    export_onnx(build(ROWS[KEY]), paths["fp32"], (SIZE, SIZE))
    paths["c16"] = folder / "c16.onnx"
    export_onnx(multiple_of_16_network(), paths["c16"], (SIZE, SIZE))
    session(paths["fp32"], VARIANTS[0], paths["optimised"])
    calibration = [np.random.default_rng(i).random((1, 3, SIZE, SIZE), dtype=np.float32) for i in range(8)]
    for key, reduce_range in (("int8", True), ("int8-full-range", False)):
        paths[key] = quantize_onnx(paths["fp32"], folder / f"{key}.onnx", calibration, reduce_range=reduce_range)
    return paths


def measure(rounds: int, iters: int) -> dict[str, list[float]]:
    """Per-round median ms per image of each variant, the variants interleaved round by round."""
    times: dict[str, list[float]] = {variant.label: [] for variant in VARIANTS}
    with tempfile.TemporaryDirectory(prefix="ort-options-") as tmp:
        paths = write_models(Path(tmp))
        sessions = {variant.label: session(paths[variant.model], variant) for variant in VARIANTS}
        for _ in range(rounds):
            for variant in VARIANTS:
                x = np.random.default_rng(0).random((variant.batch, 3, SIZE, SIZE), dtype=np.float32)
                run = sessions[variant.label].run
                times[variant.label].append(median_ms(lambda: run(None, {"image": x}), iters) / variant.batch)
    return times


def report(rounds: int, iters: int) -> str:
    load = os.getloadavg()[0]
    torch.set_num_threads(2)
    shape = (1, 3, SIZE, SIZE)
    gmacs = measure_cost(build(ROWS[KEY]), shape)[1]
    variant_gmacs = {"c16": measure_cost(multiple_of_16_network(), shape)[1]}  # the other models: the same work
    times = measure(rounds, iters)
    peak = matmul_gflops()
    body, reference = [], statistics.median(times[VARIANTS[0].label])
    for variant in VARIANTS:
        values, work = times[variant.label], 2 * variant_gmacs.get(variant.model, gmacs)
        ms = statistics.median(values)
        body.append([variant.label, f"{ms:.2f}", f"{ms / reference - 1:+.0%}", f"{work / ms * 1e3:.0f}"])
        body[-1] += [f"{work / peak / ms * 1e3:.0%}", rounds_cell(values)]
    date = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    head = ["session", "ms / image", "vs the first row", "GFLOP/s", "of the limit", "per-round ms / image"]
    table = markdown_table(head, body)
    return f"""_Generated by `python -m scripts.bench.ort_options --rounds {rounds} --iters {iters}` — do not edit by hand._

# ONNX Runtime options (CPU)

- CPU: {cpu_model()} ({os.cpu_count()} logical cores); onnxruntime {onnxruntime.__version__}, torch {torch.__version__}
- 1-min load average at start / end: {load:.2f} / {os.getloadavg()[0]:.2f} (other processes slow every row)
- Date: {date}

LH-UTANet mobilenetv2 + MoE, random weights, exported by `bundle.backends.predictors.export_onnx`, input {SIZE}², {2 * gmacs:.2f}
GFLOP per image. Limit: a 2048² float32 matrix product in torch with 2 threads, {peak:.0f} GFLOP/s, i.e.
{2 * gmacs / peak * 1e3:.1f} ms per image. Each session: {iters} timed runs after warm-up per round (median), {rounds}
interleaved rounds (median of the rounds). int8 rows: `scripts/quantize.py`'s static QDQ quantisation calibrated on
8 random inputs (their work, not their accuracy: the shipped int8 model's Dice is in `docs/shipped_model.md`).
Multiple-of-16 rows: the 24-channel stage of MobileNetV2 widened to 32, {2 * variant_gmacs["c16"]:.2f} GFLOP per image
(their GFLOP/s count their own work); it would need a new training, so it ships only if it is faster per image.

{table}
"""


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--iters", type=int, default=30)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    return publish(report(args.rounds, args.iters), DOC, not args.no_write)


if __name__ == "__main__":
    sys.exit(run_script(main))
