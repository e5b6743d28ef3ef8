"""The video suite (``python scripts/benchmark.py --suite video``): frames/s end to end and per-frame latency of
``configs/inference.json`` on a 576p and a 1080p video rendered from Kvasir-SEG test images with pans and zooms,
with ``--tta none``, the default TTA and ``--realtime true``, beside the folder path on the same frames; and the
CVC-ClinicDB temporal-smoothing study (:mod:`scripts.bench.video_smoothing`). Writes ``docs/benchmark_video.md``.

Each measurement runs in a fresh process (``python -m scripts.bench.video --worker KEY --input DIR``), answering
with one JSON line; the videos are generated in a temporary folder, never in the repository.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
from bundle.errors import MissingFileError, run_script
from PIL import Image
from scripts.doc_command import relative_command

from .measure import cpu_model, markdown_table
from .throughput import INFERENCE_CONFIG, KVASIR, REPO_ROOT, evaluation_times, inference_parser, kvasir_test_images

FPS, FRAMES = 25, 75  # the rendered videos: 3 s at 25 frames/s
SIZES = {"576p": (576, 720), "1080p": (1080, 1920)}  # (H, W): PAL SD (colonoscopy recorders) and full HD


@dataclass(frozen=True)
class VideoRow:
    """One measurement: inference.json on the ``size`` video (or, ``folder``, on its frames as JPGs)."""

    size: str
    label: str
    overrides: dict[str, Any] = field(default_factory=dict)
    folder: bool = False


ROWS: dict[str, VideoRow] = {
    "576p-notta": VideoRow("576p", "video, --tta none", {"tta": "none"}),
    "576p-tta": VideoRow("576p", "video, default TTA (flips+scales)"),
    "576p-realtime": VideoRow("576p", "video, --realtime true", {"realtime": True}),
    "576p-folder": VideoRow("576p", "folder of its frames (JPG), --tta none", {"tta": "none"}, folder=True),
    "1080p-notta": VideoRow("1080p", "video, --tta none", {"tta": "none"}),
    "1080p-tta": VideoRow("1080p", "video, default TTA (flips+scales)"),
    "1080p-realtime": VideoRow("1080p", "video, --realtime true", {"realtime": True}),
    "1080p-folder": VideoRow("1080p", "folder of its frames (JPG), --tta none", {"tta": "none"}, folder=True),
    "clinicdb": VideoRow("", "CVC-ClinicDB study (video vs image path, temporal smoothing)"),
    "profile": VideoRow("1080p", "CPU time per stage, full-frame path against model-size path"),
}
STUDIES = ("clinicdb", "profile")  # not rows of the measurement table
GOALS = [  # (rows whose key ends so, measure, its name, at least (+1) or at most (-1), target)
    ("576p-notta", "fps", "frames/s", 1, 30.0),
    ("1080p-notta", "fps", "frames/s", 1, 25.0),
    ("realtime", "p95", "p95 latency ms", -1, 50.0),
    ("realtime", "dropped_percent", "% of frames dropped", -1, 5.0),
]


def camera_path(index: int, count: int) -> tuple[float, float, float]:
    """(centre x, centre y, zoom) of frame ``index`` of ``count``: a slow pan in a loop and a zoom from 1× to 1.6×."""
    phase = 2 * np.pi * index / count
    return 0.5 + 0.15 * np.sin(phase), 0.5 + 0.12 * np.sin(2 * phase), 1.3 + 0.3 * np.sin(3 * phase)


def render_video(path: Path, size: tuple[int, int], frames: int = FRAMES, fps: int = FPS) -> list[np.ndarray]:
    """Write an H.264 MP4 (crf 18, yuv420p) of ``frames`` (H, W) frames panning and zooming over Kvasir-SEG test
    images (a new image every 2 s); return the frames as written (RGB)."""
    import av

    sources = [Image.open(image).convert("RGB") for image in kvasir_test_images()[: frames // (2 * fps) + 1]]
    height, width = size
    written = []
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.height, stream.width, stream.pix_fmt = height, width, "yuv420p"
        stream.options = {"crf": "18", "preset": "fast"}
        for index in range(frames):
            source = sources[index // (2 * fps)]
            x, y, zoom = camera_path(index, frames)
            crop_w = source.width / zoom
            crop_h = min(source.height / zoom, crop_w * height / width)
            crop_w = crop_h * width / height
            left, top = x * (source.width - crop_w), y * (source.height - crop_h)
            frame = source.resize((width, height), Image.BILINEAR, box=(left, top, left + crop_w, top + crop_h))
            written.append(np.asarray(frame))
            video_frame = av.VideoFrame.from_ndarray(written[-1], format="rgb24")
            video_frame.pts, video_frame.time_base = index, Fraction(1, fps)
            container.mux(stream.encode(video_frame))
        container.mux(stream.encode(None))
    return written


def decoded_jpgs(video: Path, folder: Path) -> int:
    """The decoded frames of ``video`` as JPGs (quality 95) in ``folder``: the folder path's input."""
    import av

    folder.mkdir(parents=True, exist_ok=True)
    with av.open(str(video)) as container:
        for index, frame in enumerate(container.decode(video=0)):
            frame.to_image().save(folder / f"frame{index:04d}.jpg", quality=95)
    return index + 1


def run_inference(dataset_dir: Path, output_dir: Path, overrides: dict[str, Any]) -> tuple[float, float, list[dict]]:
    """(seconds, CPU seconds of all threads, report rows) of inference.json's evaluator on ``dataset_dir`` with the
    shipped model, on the CPU; the evaluator is built (one-off ONNX export) before the clocks start."""
    paths = {"dataset_dir": str(dataset_dir), "output_dir": str(output_dir)}
    return evaluation_times(inference_parser({**paths, "onnx_cache_dir": str(output_dir.parent / "onnx"), **overrides}))


def measure(key: str, inputs: Path) -> dict[str, float]:
    """Frames/s end to end, CPU time per frame (ms, all threads), per-frame latency p50/p95 (ms) and frames dropped
    of row ``key`` on ``inputs`` (``<size>.mp4`` and the folder ``<size>_frames/``)."""
    row = ROWS[key]
    with tempfile.TemporaryDirectory(prefix="video-bench-") as tmp:
        out = Path(tmp) / "out"
        if row.folder:
            seconds, cpu, report = run_inference(inputs / f"{row.size}_frames", out, row.overrides)
            return {"fps": len(report) / seconds, "cpu": 1000 * cpu / len(report)}
        folder = Path(tmp) / "in"
        folder.mkdir()
        (folder / "video.mp4").symlink_to(inputs / f"{row.size}.mp4")
        seconds, cpu, report = run_inference(folder, out, row.overrides)
        if report[0].get("status") != "ok":
            raise RuntimeError(f"the video was not segmented: {report[0]}")
        import csv

        with open(out / "video.frames.csv", newline="", encoding="utf-8") as stream:
            frames = list(csv.DictReader(stream))
        latencies = [float(r["latency_ms"]) for r in frames if r["dropped"] == "0"]
        done = len(latencies)
        return {
            "fps": done / seconds,
            "cpu": 1000 * cpu / len(frames),
            "p50": float(np.percentile(latencies, 50)),
            "p95": float(np.percentile(latencies, 95)),
            "dropped": len(frames) - done,
            "frames": len(frames),
        }


FIGURE = REPO_ROOT / "docs" / "figures" / "video_overlay.png"


def overlay_still(video: Path, path: Path, index: int = 60, width: int = 480) -> None:
    """Frame ``index`` of the overlay that inference.json (``--tta none``) makes of ``video``, ``width`` pixels wide,
    as the PNG ``path`` (the docs' figure)."""
    import av
    from bundle.atomic_files import write_png

    with tempfile.TemporaryDirectory(prefix="video-still-") as tmp:
        folder = Path(tmp) / "in"
        folder.mkdir()
        (folder / "video.mp4").symlink_to(video)
        run_inference(folder, Path(tmp) / "out", {"tta": "none"})
        with av.open(str(Path(tmp) / "out" / "video.overlay.mp4")) as container:
            frame = next(f for i, f in enumerate(container.decode(video=0)) if i == index).to_image()
    still = frame.resize((width, round(frame.height * width / frame.width)), Image.LANCZOS)
    write_png(path, np.asarray(still))


def worker(key: str, inputs: Path, threads: int) -> dict[str, float]:
    """:func:`measure` in a fresh process with ``threads`` threads."""
    command = [sys.executable, "-m", "scripts.bench.video", "--worker", key, "--input", str(inputs)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    proc = subprocess.run(command, check=False, capture_output=True, text=True, cwd=REPO_ROOT, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"worker for {key!r} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def median_cell(values: list[float], digits: int = 1) -> str:
    text = f"{statistics.median(values):.{digits}f}"
    return text if len(values) == 1 else f"{text} ({', '.join(f'{v:.{digits}f}' for v in values)})"


def results_table(rounds: dict[str, list[dict[str, float]]]) -> tuple[str, str]:
    """Markdown tables: measurements (median of the rounds, each round in brackets) and goals."""
    body = []
    for key, values in rounds.items():
        row = ROWS[key]
        cells = [median_cell([v[name] for v in values]) if name in values[0] else "–" for name in ("cpu", "p50", "p95")]
        dropped = (
            "–" if row.folder else f"{statistics.median(v['dropped'] for v in values):.0f} / {values[0]['frames']:.0f}"
        )
        body.append([row.size, row.label, median_cell([v["fps"] for v in values]), *cells, dropped])
    head = ["Video", "Path", "frames/s end to end", "CPU ms / frame", "latency p50 (ms)", "latency p95 (ms)",
            "dropped / frames"]  # fmt: skip
    goals = []
    for suffix, measure_name, metric, direction, target in GOALS:
        for k in [k for k in rounds if k.endswith(suffix)]:
            values = [{**v, "dropped_percent": 100 * v.get("dropped", 0) / v.get("frames", 1)} for v in rounds[k]]
            value = statistics.median(v[measure_name] for v in values)
            met = value * direction >= target * direction
            goals.append([f"{ROWS[k].size} {ROWS[k].label}", f"{metric} {'≥' if direction > 0 else '≤'} {target:g}",
                          f"{value:.1f}", "PASS" if met else "FAIL"])  # fmt: skip
    return markdown_table(head, body), markdown_table(["Row", "Goal", "Measured", ""], goals)


def run_suite(args: argparse.Namespace, argv: list[str]) -> int:
    """The suite for ``scripts/benchmark.py --suite video`` (module docstring); returns the exit code."""
    from bundle.atomic_files import atomic_write_text

    from .video_profile import profile_section
    from .video_smoothing import results_section, study

    if not KVASIR.is_dir():
        print(f"error: the video suite needs Kvasir-SEG in {KVASIR}; not found.", file=sys.stderr)
        return 2
    start, load_start = time.perf_counter(), os.getloadavg()[0]
    keys = [key for key in ROWS if key in args.models and key not in STUDIES]
    rounds: dict[str, list[dict[str, float]]] = {key: [] for key in keys}
    with tempfile.TemporaryDirectory(prefix="video-suite-") as tmp:
        inputs = Path(tmp)
        for size in sorted({ROWS[key].size for key in keys + ["profile"] * ("profile" in args.models)}):
            render_video(inputs / f"{size}.mp4", SIZES[size])
            decoded_jpgs(inputs / f"{size}.mp4", inputs / f"{size}_frames")
        if not args.no_write and "576p" in {ROWS[key].size for key in keys}:
            overlay_still(inputs / "576p.mp4", FIGURE)
        for r in range(args.repeats):
            for key in keys[r % len(keys) :] + keys[: r % len(keys)] if keys else []:
                rounds[key].append(worker(key, inputs, args.threads))
                print(f"[round {r + 1}/{args.repeats}] {key}: {rounds[key][-1]}", file=sys.stderr)
        profile = profile_section(worker("profile", inputs, 1), "1080p") if "profile" in args.models else ""
    smoothing = ""
    if "clinicdb" in args.models:
        default = float(json.loads(INFERENCE_CONFIG.read_text(encoding="utf-8"))["temporal_smoothing"])
        smoothing = results_section(study(run_inference), default)
    load_end = os.getloadavg()[0]
    measurements, goals = results_table(rounds) if keys else ("", "")
    report = format_report(
        args, argv, measurements, goals, "\n".join(filter(None, (profile, smoothing))), (load_start, load_end)
    )
    print(report)
    if not args.no_write:
        atomic_write_text(args.output, report)
        print(f"wrote {args.output}", file=sys.stderr)
    print(f"total runtime: {time.perf_counter() - start:.0f} s", file=sys.stderr)
    return 0


def format_report(args, argv, measurements: str, goals: str, smoothing: str, load: tuple[float, float]) -> str:
    import monai
    import torch

    date = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    command = relative_command(["python", "scripts/benchmark.py"], argv)
    return f"""\
_Generated by `python scripts/benchmark.py --suite video` — do not edit by hand; re-run the script to update._

# Video inference (CPU)

Command: `{command}`

## Machine and load

- CPU: {cpu_model()} ({os.cpu_count()} logical cores), no GPU used; threads: {args.threads}
- torch {torch.__version__}, monai {monai.__version__}, Python {platform.python_version()}
- 1-min load average at start / end: {load[0]:.2f} / {load[1]:.2f}. A load above the core count means other
  processes (here: training runs sharing the machine, when it is high) took CPU time from these measurements; the
  figures are then lower bounds of what the machine does alone.
- Date: {date}

## Method

`configs/inference.json` with the shipped model (`backend auto`: ONNX Runtime on the CPU), `device` cpu, a fresh
process per measurement, {args.repeats} round(s) (median; each round in brackets). Videos rendered for the run in a
temporary folder: {FRAMES} frames at {FPS} frames/s, H.264 (crf 18, yuv420p), a camera panning and zooming (1.0–1.6×)
over Kvasir-SEG test images, a new image every 2 s; 576p = 720×576, 1080p = 1920×1080. Frames/s end to end =
frames segmented / seconds of `evaluator.run()` (decoding in its thread, the model's input resized there by
libswscale; transforms at the input size; model; masks resized back over their box; overlay drawn on the YUV picture
and H.264-encoded, x264 `ultrafast` `zerolatency`; `NAME.frames.csv`, `predictions.csv`). CPU ms / frame = CPU time
of all the process's threads during `evaluator.run()` / frames (images): less disturbed by other processes than
frames/s, though thread pools that spin while waiting and shared caches raise it under load. Latency per frame =
from the frame decoded (in real time: released at its timestamp, as a camera delivers it) to its overlay frame
drawn, from `latency_ms` of `NAME.frames.csv`; in batch mode it includes the wait for the batch. `--realtime true`:
no TTA, batch 1, frames released at the source's pace, older waiting frames dropped. Folder path: the same frames
decoded to JPG (quality 95), `--tta none`, images/s.

{measurements}

{goals}

{smoothing}"""


def worker_main(argv: list[str]) -> int:
    """One measurement (``--worker KEY --input DIR``), printed as one JSON line."""
    parser = argparse.ArgumentParser(description="one measurement of the video suite (scripts/benchmark.py)")
    parser.add_argument("--worker", choices=[key for key in ROWS if key != "clinicdb"], required=True)
    parser.add_argument("--input", type=Path, required=True)
    options = parser.parse_args(argv)
    if not options.input.is_dir():
        raise MissingFileError(
            f"--input folder not found: {options.input}; scripts/benchmark.py --suite video makes it"
        )
    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    if options.worker == "profile":
        from .video_profile import stage_profile

        print(json.dumps(stage_profile(options.input / "1080p.mp4")))
    else:
        print(json.dumps(measure(options.worker, options.input)))
    return 0


if __name__ == "__main__":
    sys.exit(run_script(worker_main))
