"""CPU benchmarks: LH-UTANet against MONAI segmentation networks, the cost of its design choices, and folder
throughput. Suites (one module each in ``scripts/bench/``):

- ``main`` (default): parameters, GMACs and warm batch-1 latency in torch eager and ONNX Runtime (LH-UTANet + MoE
  also int8), with the LH-UTANet budgets (``docs/benchmark_cpu.md``);
- ``architecture``: one group of variants per LH-UTANet design choice, with the torch latency difference to each
  group's reference row (``docs/architecture_costs.md``);
- ``throughput``: images/s of the folder inference command on the 100 Kvasir-SEG test JPGs
  (``docs/benchmark_throughput.md``), randomly initialised checkpoints;
- ``video``: frames/s and latency of video inference at 576p and 1080p, and the CVC-ClinicDB temporal-smoothing
  study (``docs/benchmark_video.md``, ``scripts/bench/video.py``);
- ``tta``: test-time augmentation policies of the shipped model, validation Dice against folder images/s
  (``docs/benchmark_tta.md``, ``scripts/bench/tta.py``).

Every measurement runs in a fresh subprocess (this script re-invoked with the hidden ``--worker KEY --backend B``
options, answering with one JSON line), over ``--repeats`` interleaved round-robin rounds; the reported value is the
median of the per-round values. LH-UTANet rows come from the encoder registry, so a new encoder appears here with
no edit.

Usage (from the repository root)::

    python scripts/benchmark.py
    python scripts/benchmark.py --suite architecture
    python scripts/benchmark.py --suite throughput
    python scripts/benchmark.py --suite video
    python scripts/benchmark.py --suite tta
    python scripts/benchmark.py --models basicunet,unet --repeats 1 --iters 5 --no-write
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from bundle.atomic_files import atomic_write_text, check_output_dir
from bundle.errors import run_script
from scripts.bench import architecture, latency, throughput, tta, video
from scripts.bench.measure import (
    NOISY_SPREAD,
    WARMUP_ITERS,
    Results,
    Row,
    build,
    cpu_model,
    is_noisy,
    measure_cost,
    measure_latency,
    measure_onnx_latency,
)
from scripts.bench.peers import IN_CHANNELS
from scripts.doc_command import relative_command

REPO_ROOT = Path(__file__).resolve().parents[1]
Rounds = dict[tuple[str, str], list[float]]


@dataclass(frozen=True)
class Suite:
    """A benchmark suite: report title and default output, its rows, the backends each row is measured with, and
    its results sections."""

    title: str
    output: Path
    rows: dict[str, Row]
    backends: Callable[[str], tuple[str, ...]]
    results: Callable[[Results, Rounds, int], tuple[str, int]]  # -> (markdown, failed budgets)
    legend: str  # Method-section sentence on the suite's columns


SUITES: dict[str, Suite] = {
    "main": Suite(
        "CPU benchmark",
        REPO_ROOT / "docs" / "benchmark_cpu.md",
        latency.ROWS,
        latency.backends_of,
        latency.results_section,
        "ONNX Runtime: the model exported by `bundle.backends.predictors.export_onnx` (opset 17), CPU provider, all graph "
        "optimisations, the same thread count; int8: `scripts/quantize.py`'s static QDQ quantisation (per-channel), "
        'calibrated on 8 random inputs. "default" is the path `backend auto` takes on a CPU (ONNX Runtime); '
        "ratio columns divide it by the named reference.",
    ),
    "architecture": Suite(
        "Architecture costs (CPU)",
        REPO_ROOT / "docs" / "architecture_costs.md",
        architecture.ROWS,
        lambda key: ("torch",),
        architecture.results_section,
        "Δ latency = latency − latency of the group's first (reference) row, torch eager.\n"
        "Rows whose Input is not the image are network parts, fed a feature map of that shape.",
    ),
    "throughput": Suite(
        "Folder inference throughput (CPU)",
        REPO_ROOT / "docs" / "benchmark_throughput.md",
        throughput.ROWS,
        lambda key: ("pipeline",),
        throughput.results_section,
        "× UNet = images/s / images/s of MONAI UNet through the same pipeline with `--tta none`.",
    ),
    "tta": Suite(
        "Test-time augmentation policies (CPU)",
        REPO_ROOT / "docs" / "benchmark_tta.md",
        tta.ROWS,
        lambda key: ("pipeline",),
        tta.results_section,
        "× `--tta none` = images/s / images/s of the `--tta none` row.",
    ),
    "video": Suite(  # its own runner: scripts/bench/video.py
        "Video inference (CPU)", REPO_ROOT / "docs" / "benchmark_video.md", video.ROWS, None, None, ""
    ),
}


def measure(suite: str, key: str, backend: str, args: argparse.Namespace) -> float:
    """One measurement of row ``key``: latency (ms) with ``backend``, or images/s for the throughput suite."""
    if suite == "throughput":
        return throughput.measure_throughput(key)
    if suite == "tta":
        return tta.measure_policy(key)
    row = SUITES[suite].rows[key]
    model, shape = build(row), row.input_shape(args.size)
    if backend == "torch":
        return measure_latency(model, shape, args.iters)
    return measure_onnx_latency(model, shape, args.iters, args.threads, int8=backend == "onnx-int8")


def run_worker(key: str, backend: str, args: argparse.Namespace) -> float:
    """Measure ``key`` with ``backend`` in a fresh subprocess; NaN (with a warning) when it fails."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--suite", args.suite, "--worker", key, "--backend", backend]
    cmd += ["--size", str(args.size), "--threads", str(args.threads), "--iters", str(args.iters)]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, cwd=REPO_ROOT, env=env)
    if proc.returncode != 0:
        if backend == "torch" or args.suite != "main":
            raise RuntimeError(f"worker for {key!r} ({backend}) failed (exit {proc.returncode}):\n{proc.stderr}")
        print(f"WARNING: {key} with {backend} failed:\n{proc.stderr[-2000:]}", file=sys.stderr)
        return math.nan
    value = json.loads(proc.stdout.strip().splitlines()[-1])["value"]
    if isinstance(value, dict):  # the value and side figures (the tta suite's CPU time), kept in args.extras
        args.extras.setdefault((key, backend), []).append(value)
        value = value["value"]
    return value


def method_text(args: argparse.Namespace) -> str:
    suite = SUITES[args.suite]
    rounds = (
        f"{args.repeats} interleaved round-robin round(s); reported value = median of the rounds. {suite.legend} "
        f"⚠ = rounds spread more than {NOISY_SPREAD:g}× (max/min): likely disturbed by other load, re-run on a "
        "quiet machine."
    )
    if args.suite == "tta":
        return tta.method_text(rounds)
    if args.suite == "throughput":
        settings = throughput.inference_settings()
        return f"""\
`configs/inference.json` parsed with `monai.bundle.ConfigParser`, overrides `dataset_dir` (the 100 Kvasir-SEG
PraNet test JPGs of `../shared/data/kvasir-seg`, of varying size), `output_dir` (a fresh temporary folder),
`ckpt_path` (a temporary `torch.save(state_dict)` of randomly initialised weights; the network is read from it),
`onnx_cache_dir` (fresh; the one-off ONNX export happens when the evaluator is built, before the clock starts),
`image_size` {throughput.IMAGE_SIZE} (the shipped model's), `device` cpu, and the row's pipeline overrides; the
MONAI peers override `network_def` (and `network_settings`). Timed: running the `evaluator` (MONAI's
SupervisedEvaluator) end to end (DataLoader worker start, decode, resize, normalise, model with TTA, inversion to
the original size, post-processing, PNG masks in a writer thread, `predictions.csv`); images/s = 100 / seconds.
inference.json settings: `batch_size` {settings["batch_size"]}, `num_workers` {settings["num_workers"]}, `tta`
{settings["tta"]} with `tta_scales` {settings["tta_scales"]}; the main process runs the model with {args.threads}
thread(s). Each configuration in a fresh process; {rounds}"""
    return f"""\
Input 1×{IN_CHANNELS}×{args.size}×{args.size}, `model.eval()`, `torch.inference_mode()`.
GMACs = `torch.utils.flop_counter.FlopCounterMode` total FLOPs / 2 (conv/matmul work only).
Latency: each model and backend in a fresh process, {WARMUP_ITERS} warm-up + {args.iters} timed runs (median);
{rounds}"""


def format_report(
    results: Results, rounds: Rounds, args: argparse.Namespace, command: str, load: tuple[float, float]
) -> tuple[str, int]:
    """Render the markdown report; also return the number of failed budgets."""
    import monai

    suite = SUITES[args.suite]
    sections, failures = suite.results(results, rounds, args.size)
    suite_option = [] if args.suite == "main" else ["--suite", args.suite]
    generator = shlex.join(["python", "scripts/benchmark.py", *suite_option])
    date = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    report = f"""\
_Generated by `{generator}` — do not edit by hand; re-run the script to update._

# {suite.title}

Command: `{command}`

## Machine

- CPU: {cpu_model()} ({os.cpu_count()} logical cores), no GPU used
- torch {torch.__version__}, monai {monai.__version__}, Python {platform.python_version()}
- threads: {args.threads}
- 1-min load average at start / end of run: {load[0]:.2f} / {load[1]:.2f} (other processes add timing noise)
- Date: {date}

## Method

{method_text(args)}

{sections}"""
    return report, failures


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """Parse and validate the command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=224, help="input height = width (multiple of 32)")
    parser.add_argument("--threads", type=int, default=2, help="torch / ONNX Runtime threads")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds")
    parser.add_argument("--iters", type=int, default=30, help="timed iterations per round")
    parser.add_argument("--suite", choices=SUITES, default="main", help="main, architecture, throughput, video or tta")
    parser.add_argument("--models", help="comma-separated row keys of the suite (default all; a wrong key lists them)")
    parser.add_argument("--output", type=Path, help="markdown report path (default: the suite's file in docs/)")
    parser.add_argument("--no-write", action="store_true", help="print the report without writing it")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--backend", default="torch", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.extras = {}  # (key, backend) -> per-round side figures of the workers (run_worker)
    rows = SUITES[args.suite].rows
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
    """Run a suite (or, with ``--worker``, one measurement); return the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    suite = SUITES[args.suite]
    if args.worker:
        print(json.dumps({"key": args.worker, "value": measure(args.suite, args.worker, args.backend, args)}))
        return 0
    if not args.no_write:  # before minutes of measurement, not after
        check_output_dir(args.output.parent, option="--output")
    if args.suite == "video":
        return video.run_suite(args, argv)
    if args.suite in ("throughput", "tta") and not throughput.KVASIR.is_dir():
        print(f"error: the {args.suite} suite needs Kvasir-SEG in {throughput.KVASIR}; not found.", file=sys.stderr)
        return 2
    if args.suite == "tta":
        tta.prepare_study()  # the validation member cache, before any worker reads it

    start, load_start = time.perf_counter(), os.getloadavg()[0]
    keys = [key for key in suite.rows if key in args.models]  # table order
    results: Results = {}
    for key in keys:
        row = suite.rows[key]
        params_m, gmacs = measure_cost(build(row), row.input_shape(args.size), is_part=row.part_input is not None)
        results[key] = {"params_m": params_m, "gmacs": gmacs}
        print(f"[cost] {key}: {params_m:.2f} M params, {gmacs:.2f} GMACs", file=sys.stderr)
    units = [(key, backend) for key in keys for backend in suite.backends(key)]
    rounds: Rounds = {unit: [] for unit in units}
    for r in range(args.repeats):
        for key, backend in units[r % len(units) :] + units[: r % len(units)]:  # rotate the start: spread order effects
            rounds[key, backend].append(run_worker(key, backend, args))
            print(f"[round {r + 1}/{args.repeats}] {key} {backend}: {rounds[key, backend][-1]:.1f}", file=sys.stderr)
    metric = {"pipeline": "images_per_s", **{b: m for b, (m, _) in latency.BACKENDS.items()}}
    for (key, backend), values in rounds.items():
        results[key][metric[backend]] = statistics.median(values)
    for (key, _), extras in args.extras.items():  # side figures: the median of the rounds, each under its name
        results[key] |= {name: statistics.median(e[name] for e in extras) for name in extras[0] if name != "value"}

    command = relative_command(["python", "scripts/benchmark.py"], argv)
    report, failures = format_report(results, rounds, args, command, (load_start, os.getloadavg()[0]))
    print(report)
    if not args.no_write:
        atomic_write_text(args.output, report)
        print(f"wrote {args.output}", file=sys.stderr)
    noisy = [f"{key} ({backend})" for (key, backend), values in rounds.items() if is_noisy(values)]
    if noisy:
        print(f"WARNING: noisy measurements (⚠) for {', '.join(noisy)}; re-run on a quiet machine", file=sys.stderr)
    if failures:
        print(f"WARNING: {failures} budget(s) FAIL (see Budgets table)", file=sys.stderr)
    print(f"total runtime: {time.perf_counter() - start:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(run_script(main))
