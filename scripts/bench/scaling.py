"""Scale-out benchmarks of folder inference (``docs/distributed.md``, the block between its ``scaling`` markers):

- planning: time and peak Python memory of :class:`bundle.inference.folder.FolderPlan` (rank 0 of 1 and of 8) over
  ``--files`` generated tiny files (a few bytes each: planning lists and stats files, it never decodes them);
- ranks: images/s of ``configs/inference.json`` on the Kvasir-SEG test JPGs (each linked ``--copies`` times) in one
  process with 2 threads, and with ``torchrun --nproc_per_node 2`` (``multi_gpu_inference.json``) with 1 thread per
  rank, default settings (backend auto, TTA flips+scales), and whether both ``predictions.csv`` are identical.

Usage (from the repository root)::

    python -m scripts.bench.scaling [--files 100000] [--copies 4] [--no-write]
"""

from __future__ import annotations

import argparse
import csv
import datetime
import os
import re
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Sequence
from pathlib import Path

from bundle.atomic_files import atomic_write_text
from bundle.errors import run_script
from bundle.inference.folder import FolderPlan

from .measure import cpu_model, markdown_table
from .throughput import kvasir_test_images

REPO_ROOT = Path(__file__).resolve().parents[2]
DOC = REPO_ROOT / "docs" / "distributed.md"
BEGIN, END = "<!-- scaling:begin (python -m scripts.bench.scaling) -->", "<!-- scaling:end -->"
CONFIGS = REPO_ROOT / "configs"


def plan_cost(files: int, world_size: int) -> dict[str, float]:
    """Seconds (untraced) and peak traced MB (a second, traced run) of planning ``files`` tiny PNG-named files
    (1,000 per folder), as rank 0 of ``world_size`` (no process group: the barrier is a no-op), and the inputs it
    gives to the DataLoader."""
    with tempfile.TemporaryDirectory(prefix="plan-") as tmp:
        root = Path(tmp) / "in"
        for index in range(files):
            folder = root / f"{index // 1000:04d}"
            if index % 1000 == 0:
                folder.mkdir(parents=True)
            (folder / f"{index:07d}.png").write_bytes(b"\x89PNG....")
        start = time.perf_counter()
        FolderPlan(root, Path(tmp) / "out", rank=0, world_size=world_size).data()
        seconds = time.perf_counter() - start
        tracemalloc.start()  # a second plan, traced (tracing slows Python down several times)
        data = FolderPlan(root, Path(tmp) / "out", rank=0, world_size=world_size).data()
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return {"seconds": seconds, "peak_mb": peak / 1e6, "bytes_per_file": peak / files, "todo": len(data)}


def bundle_command(config_files: Sequence[str], **overrides: str) -> list[str]:
    command = ["-m", "monai.bundle", "run", "--config_file", repr([str(CONFIGS / name) for name in config_files])]
    for key, value in overrides.items():
        command += [f"--{key}", value]
    return command


def run_folder(processes: int, threads: int, images: Path, output: Path, cache: Path) -> float:
    """Images/s of folder inference with ``processes`` ranks (1: no torchrun) of ``threads`` threads each: the
    slowest rank's epoch time (ignite's "Epoch[1] Complete" line) over the number of images."""
    threads = str(threads)
    overrides = {"dataset_dir": str(images), "output_dir": str(output), "onnx_cache_dir": str(cache)}
    if processes == 1:
        command = [sys.executable, *bundle_command(["inference.json"], **overrides)]
    else:
        torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)]
        command = torchrun + bundle_command(["inference.json", "multi_gpu_inference.json"], **overrides)
    env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
    result = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
    epochs = re.findall(r"Epoch\[1\] Complete\. Time taken: (\d+):(\d+):(\d+\.\d+)", result.stdout + result.stderr)
    seconds = max(int(h) * 3600 + int(m) * 60 + float(s) for h, m, s in epochs)
    return len(list(images.iterdir())) / seconds


RUNS: dict[str, tuple[int, int]] = {  # label: (processes, threads per process)
    "1 process × 2 threads": (1, 2),
    "2 gloo ranks × 1 thread (torchrun)": (2, 1),
    "1 process × 1 thread": (1, 1),
}


def rank_scaling(copies: int) -> tuple[dict[str, float], dict[str, str]]:
    """Images/s of each of :data:`RUNS`, and how each one's report compares with the 1-thread single process's (the
    same arithmetic as one rank: ONNX Runtime's sums may round differently with another thread count)."""
    with tempfile.TemporaryDirectory(prefix="ranks-") as tmp:
        images, cache = Path(tmp) / "images", Path(tmp) / "onnx"
        images.mkdir()
        for source in kvasir_test_images():
            for copy in range(copies):
                (images / f"{source.stem}_{copy}{source.suffix}").symlink_to(source.resolve())
        one = Path(tmp) / "one"
        one.mkdir()
        (one / "warm-up.jpg").symlink_to(kvasir_test_images()[0].resolve())
        run_folder(1, 2, one, Path(tmp) / "warm-up", cache)  # the one-off ONNX export into the shared cache
        outputs = {label: Path(tmp) / f"out{index}" for index, label in enumerate(RUNS)}
        speeds = {label: run_folder(*RUNS[label], images, outputs[label], cache) for label in RUNS}
        reports = {label: list(csv.DictReader(open(outputs[label] / "predictions.csv"))) for label in RUNS}
    reference = reports.pop("1 process × 1 thread")
    agreement = {"1 process × 1 thread": "—"}
    for label, rows in reports.items():
        differing = sum(a != b for a, b in zip(rows, reference)) + abs(len(rows) - len(reference))
        agreement[label] = "identical" if differing == 0 else f"{differing} of {len(reference)} rows differ"
    return speeds, agreement


def report(files: int, copies: int) -> str:
    """The markdown block of both measurements, with the machine, load and date."""
    load = os.getloadavg()[0]
    plans = {world: plan_cost(files, world) for world in (1, 8)}
    speeds, same = rank_scaling(copies)
    plan_rows = [
        [
            f"rank 0 of {world}",
            f"{r['todo']:,}",
            f"{r['seconds']:.1f}",
            f"{r['peak_mb']:.0f}",
            f"{r['bytes_per_file']:.0f}",
        ]
        for world, r in plans.items()
    ]
    images = 100 * copies
    base = speeds["1 process × 2 threads"]
    rank_rows = [[label, f"{speeds[label]:.1f}", f"{speeds[label] / base:.2f}", same[label]] for label in RUNS]
    date = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return f"""{BEGIN}
_Generated by `python -m scripts.bench.scaling --files {files} --copies {copies}` on {cpu_model()} ({os.cpu_count()}
logical cores), {date}; 1-min load average at start {load:.2f} / end {os.getloadavg()[0]:.2f} (other processes on
the machine slow every row; re-run on a quiet machine for release figures)._

Planning {files:,} tiny files (`FolderPlan`: listing, `stat`, output paths, skip checks; nothing decoded); peak
Python memory by `tracemalloc`:

{markdown_table(["plan", "inputs to segment", "seconds", "peak MB", "bytes / file"], plan_rows)}

Folder inference of the {images} Kvasir-SEG test JPGs (the 100 PraNet test images, each linked {copies}×), default
settings (backend auto, TTA flips+scales, `batch_size` 8, `num_workers` 2 per rank); images/s = images / the
slowest rank's epoch time (ignite's log line; process start and the one-off ONNX export not counted):

{markdown_table(["run", "images/s", "× 1 process × 2 threads", "predictions.csv vs 1 process × 1 thread"], rank_rows)}
{END}"""


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=100_000, help="tiny files to plan")
    parser.add_argument("--copies", type=int, default=4, help="links of each Kvasir-SEG test JPG")
    parser.add_argument("--no-write", action="store_true", help="print without updating docs/distributed.md")
    args = parser.parse_args(argv)
    block = report(args.files, args.copies)
    print(block)
    if not args.no_write:
        text = DOC.read_text(encoding="utf-8")
        if BEGIN not in text or END not in text:
            print(f"error: {DOC} has no scaling markers", file=sys.stderr)
            return 2
        head, tail = text.split(BEGIN)[0], text.split(END, 1)[1]
        atomic_write_text(DOC, head + block + tail)
    return 0


if __name__ == "__main__":
    sys.exit(run_script(main))
