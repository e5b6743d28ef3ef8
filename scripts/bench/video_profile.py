"""Per-stage CPU time of the video path on one video (the profile of ``scripts/bench/video.py``): each stage of a
frame timed by the process's CPU time, one stage at a time, for the full-frame path (before) and the model-size path of
:mod:`bundle.video` (now), in the same process on the same frames; :func:`profile_section` says what each does.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .throughput import inference_parser

STAGES = (
    ("decode", "decoding (libavcodec, H.264)"),
    ("picture", "the displayed frame: RGB at full size / YUV planes as decoded"),
    ("input", "model input: transforms on the full frame / libswscale to the input size, transforms there"),
    ("model", "model (ONNX Runtime, one thread)"),
    ("mask", "mask at display size: torch resize + sigmoid + threshold / Pillow resize over the box + threshold"),
    ("overlay", "overlay drawn (lookup table): RGB / YUV planes"),
    ("encode", "encoding: RGB to YUV + x264 ultrafast / x264 ultrafast zerolatency"),
)


def timed(times: dict[str, list[float]], stage: str, function, *args):
    """``function(*args)``, adding the process's CPU milliseconds (all threads: libswscale may use several) to
    ``times[stage]``."""
    start = time.process_time()
    result = function(*args)
    times.setdefault(stage, []).append(1000 * (time.process_time() - start))
    return result


def encoder(container, size: tuple[int, int], options: dict[str, str]):
    """An x264 stream of ``container`` at ``size`` (H, W), one thread, with ``options``."""
    stream = container.add_stream("libx264", rate=25)
    stream.height, stream.width, stream.pix_fmt = size[0], size[1], "yuv420p"
    stream.options = {**options, "threads": "1"}
    return stream


def encode(container, stream, frame, index: int) -> None:
    frame.pts, frame.time_base = index, Fraction(1, 25)
    container.mux(stream.encode(frame))


def stage_profile(video: Path, frames: int = 40, skip: int = 5) -> dict[str, dict[str, float]]:
    """{stage: {"full frame": ms, "model size": ms}} medians over ``frames`` frames of ``video`` (the first ``skip``
    left out: warm-up) with inference.json's shipped model and ``--tta none``."""
    import av
    from bundle.inference.postprocessing import postprocess_mask
    from bundle.video.display import (
        FrameScaler,
        display_mask,
        display_picture,
        displayed,
        draw_mask,
        model_rgb,
        overlay_frame,
        picture_colour,
    )

    torch.set_num_threads(1)
    times: dict[str, dict[str, list[float]]] = {"full frame": {}, "model size": {}}
    before, after = times["full frame"], times["model size"]
    with tempfile.TemporaryDirectory(prefix="video-profile-") as tmp:
        parser = inference_parser({"tta": "none", "dataset_dir": str(video.parent), "output_dir": f"{tmp}/out",
                                   "onnx_cache_dir": f"{tmp}/onnx"})  # fmt: skip
        runner, predictor = parser.get_parsed_content("video_runner"), parser.get_parsed_content("predictor")
        threshold, scaler = float(runner.mask_options.get("threshold", 0.5)), FrameScaler()
        with (
            av.open(str(video)) as source,
            av.open(f"{tmp}/a.mp4", "w") as out_a,
            av.open(f"{tmp}/b.mp4", "w") as out_b,
        ):
            stream = source.streams.video[0]
            stream.thread_type, stream.codec_context.thread_count = "SLICE", 1
            size = (stream.codec_context.height, stream.codec_context.width)
            old = encoder(out_a, size, {"preset": "ultrafast", "crf": "23"})
            new = encoder(out_b, size, {"preset": "ultrafast", "tune": "zerolatency", "crf": "23"})
            decoded = source.decode(stream)
            for index in range(frames):
                frame = timed(before, "decode", next, decoded)
                rgb = timed(before, "picture", displayed, frame)
                logits = timed(before, "model", model, predictor, timed(before, "input", runner.prepare, rgb))
                mask = timed(before, "mask", full_frame_mask, logits, size, threshold, postprocess_mask)
                overlay = timed(before, "overlay", overlay_frame, rgb, mask, runner.overlay_fill)
                timed(before, "encode", encode, out_a, old, av.VideoFrame.from_ndarray(overlay, format="rgb24"), index)

                after["decode"] = before["decode"]
                picture = timed(after, "picture", display_picture, frame)
                small = timed(after, "input", lambda: runner.prepare(model_rgb(frame, runner.decode_size, scaler)))
                logits = timed(after, "model", model, predictor, small)
                mask = timed(after, "mask", lambda: display_mask(logits[0, 0].numpy(), size, threshold).cleaned())
                colour = picture_colour(picture.format)
                timed(after, "overlay", draw_mask, picture.planes(), colour, mask, runner.overlay_fill)
                timed(after, "encode", encode, out_b, new, picture.video_frame(), index)
    return {stage: {path: statistics.median(times[path][stage][skip:]) for path in times} for stage, _ in STAGES}


def model(predictor, image: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return predictor(image[None]).float()


def full_frame_mask(logits: torch.Tensor, size, threshold: float, postprocess) -> np.ndarray:
    """The full-frame path's mask: (1, 1, h, w) logits resized to ``size`` by torch, sigmoid, threshold."""
    probabilities = torch.sigmoid_(F.interpolate(logits, size=size, mode="bilinear"))[0, 0].numpy()
    return postprocess(probabilities, threshold)


def profile_section(profile: dict[str, dict[str, float]], video: str) -> str:
    """Markdown: the per-stage table of :func:`stage_profile` and its totals."""
    from .measure import markdown_table

    body = [[label, f"{profile[stage]['full frame']:.2f}", f"{profile[stage]['model size']:.2f}"]
            for stage, label in STAGES]  # fmt: skip
    totals = [sum(profile[stage][path] for stage, _ in STAGES) for path in ("full frame", "model size")]
    body.append(["**total**", f"**{totals[0]:.1f}**", f"**{totals[1]:.1f}**"])
    table = markdown_table(["Stage (CPU ms per frame)", "full frame (before)", "model size (now)"], body)
    return f"""## Where a {video} frame's time goes

Each stage of a frame timed by the process's CPU time (all threads) while it runs alone, the decoder, encoder, torch
and ONNX Runtime on one thread each, median over the frames, for two pipelines in the same process on the
same frames of the {video} video (`scripts/bench/video_profile.py`). Full frame (the path before decoding at the
model's size): RGB at the video's size, the config's transforms resizing it (anti-aliased) to the model's input,
the logits resized back to the whole frame by torch and thresholded there, the overlay drawn on the RGB frame, which
the encoder converts to YUV (x264 `ultrafast`). Model size (the shipped path): the picture kept in YUV as decoded,
the model's input resized by libswscale to twice its size in 4:2:0 and averaged 2×2 (Pillow), the mask resized
over its bounding box only (Pillow), the overlay drawn on the YUV planes through lookup tables, x264 `ultrafast`
tuned `zerolatency`.

{table}

The two columns differ in the display-size work: a colour conversion of the whole frame each way, the
transforms' anti-aliased resize of the whole frame, and the float resize of the logits to the whole frame are gone;
what is left at display size is 8-bit (the YUV copy, the lookup tables over the mask's box, the encoder). Two idle
cores give 2000 CPU ms a second: {2000 / totals[1]:.0f} frames/s at {totals[1]:.1f} ms a frame ({2000 / totals[0]:.0f} at
{totals[0]:.1f}), a bound the end-to-end rows do not reach: they run the stages on several threads at once (the model
on two), whose waiting and the machine's load add CPU time (their CPU ms / frame column).
"""
