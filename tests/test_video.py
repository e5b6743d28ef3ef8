"""Video inputs of configs/inference.json: rows per frame, masks equal to the image path's (frames not larger than
the model's input) or close to them (larger: resized by libswscale), the overlay, bad videos, real time and atomic
outputs. Tiny synthetic videos written with PyAV; tests/test_video_display.py tests the frames' pieces."""

import csv
import os
import signal
import subprocess
import sys
import time
from fractions import Fraction

import numpy as np
import pytest
from bundle.video.io import FrameReader
from PIL import Image

from tests.helpers import REPO_ROOT, bundle_run_arguments, messages, run_bundle, save_checkpoint

av = pytest.importorskip("av")
pytestmark = pytest.mark.usefixtures("one_thread")

FAST = {"image_size": [64, 64], "batch_size": 4, "num_workers": 0, "encoder": "mobilenetv2", "tta": "none"}
SIZE = (48, 64)  # (H, W)


def scene(index: int, size: tuple[int, int] = SIZE) -> np.ndarray:
    """(H, W, 3) uint8 frame ``index``: noise and a bright rectangle moving right."""
    rng = np.random.default_rng(index)
    image = rng.integers(0, 90, (*size, 3), dtype=np.uint8)
    image[size[0] // 5 : size[0] // 2, 2 + 2 * index % size[1] : 20 + 2 * index % size[1]] = (220, 60, 60)
    return image


def write_video(path, count=10, size=SIZE, times=None, rotation=0, codec="libx264rgb", pix_fmt="rgb24"):
    """A video of ``count`` :func:`scene` frames at 10 frames/s (or at ``times``, seconds); libx264rgb qp 0 is
    lossless, so decoded frames equal the written ones."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=10)
        stream.height, stream.width, stream.pix_fmt = size[0], size[1], pix_fmt
        stream.time_base = stream.codec_context.time_base = Fraction(1, 1000)
        stream.options = {"qp": "0"} if codec.startswith("libx264") else {}
        if rotation:
            stream.set_display_rotation(rotation)
        for index in range(count):
            frame = av.VideoFrame.from_ndarray(scene(index, size), format="rgb24")
            frame.pts, frame.time_base = round(1000 * (times[index] if times else index / 10)), Fraction(1, 1000)
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


def decoded_frames(path) -> list[np.ndarray]:
    with av.open(str(path)) as container:
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]


def write_audio_only(path):
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=8000)
        for index in range(4):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 8000, index * 1024
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))


def write_no_frames(path):
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.height, stream.width = SIZE
        container.start_encoding()  # a header, no packet


def read_csv(path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as stream:
        return list(csv.DictReader(stream))


def report(out) -> dict[str, dict[str, str]]:
    return {row["path"]: row for row in read_csv(out / "predictions.csv")}


def mask_png(path) -> np.ndarray:
    return np.asarray(Image.open(path)) > 0


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "mixed.pt", all_foreground=False)


def infer(folder, out, ckpt, **overrides):
    settings = {**FAST, **overrides}
    run_bundle(
        ["inference.json"], "infer", dataset_dir=str(folder), output_dir=str(out), ckpt_path=str(ckpt), **settings
    )
    return report(out)


def test_video_rows_masks_overlay_and_a_truncated_video(tmp_path, ckpt):
    videos, stills, out = tmp_path / "videos", tmp_path / "stills", tmp_path / "out"
    videos.mkdir()
    write_video(videos / "clip.mkv", count=10)
    full = write_video(tmp_path / "whole.mp4", count=10)
    (videos / "cut.mp4").write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    Image.fromarray(scene(99)).save(videos / "still.png")
    frames = decoded_frames(videos / "clip.mkv")
    assert len(frames) == 10 and all((frame == scene(i)).all() for i, frame in enumerate(frames))  # lossless

    rows = infer(videos, out, ckpt, save_frames=True, temporal_smoothing=0)
    assert rows["cut.mp4"]["status"].startswith("error: ") and rows["still.png"]["status"] == "ok"
    row = rows["clip.mkv"]
    assert row["status"] == "ok" and row["mask"] == "clip.frames.csv" and row["warning"] == ""
    assert (int(row["frames"]), int(row["height"]), int(row["width"]), int(row["dropped_frames"])) == (10, *SIZE, 0)
    per_frame = read_csv(out / "clip.frames.csv")
    assert [int(r["frame"]) for r in per_frame] == list(range(10))  # frame count in = rows out
    assert [float(r["time_s"]) for r in per_frame] == pytest.approx([i / 10 for i in range(10)])
    assert int(row["frames_with_polyp"]) == sum(int(r["polyp"]) for r in per_frame)

    stills.mkdir()  # the same frames through the image path
    for index, frame in enumerate(frames):
        Image.fromarray(frame).save(stills / f"f{index:02d}.png")
    infer(stills, tmp_path / "still_out", ckpt)
    for index, r in enumerate(per_frame):
        expected = mask_png(tmp_path / "still_out" / f"f{index:02d}_mask.png")
        video_mask = mask_png(out / "clip" / f"{index:06d}_mask.png")
        assert 0 < expected.mean() < 1 and (video_mask == expected).all(), index
        assert float(r["area_fraction"]) == pytest.approx(expected.mean(), abs=1e-6)

    overlay = decoded_frames(out / "clip.overlay.mp4")
    assert len(overlay) == 10 and all(frame.shape == (*SIZE, 3) for frame in overlay)
    assert not list(out.rglob(".*.tmp")) and not list(out.rglob(".*.partial"))

    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    infer(videos, out, ckpt, save_frames=True, temporal_smoothing=0)  # a re-run skips the video: nothing rewritten
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and p.name != "predictions.csv"} == {
        p: t for p, t in before.items() if p.name != "predictions.csv"
    }


def test_bad_videos_are_reported_and_the_rest_is_done(tmp_path, ckpt):
    folder, out = tmp_path / "in", tmp_path / "out"
    folder.mkdir()
    write_video(folder / "good.mp4", count=6, codec="libx264", pix_fmt="yuv420p")
    (folder / "corrupt.avi").write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    write_audio_only(folder / "audio.mp4")
    whole = write_video(tmp_path / "whole.mkv", count=30).read_bytes()
    (folder / "cut.mkv").write_bytes(whole[: len(whole) * 6 // 10])  # Matroska: the frames before the cut decode
    write_no_frames(folder / "empty.mkv")
    write_video(folder / "vfr.mkv", count=6, times=[0, 0.1, 0.15, 0.4, 0.45, 1.0])
    write_video(folder / "turned.mp4", count=4, rotation=90, codec="libx264", pix_fmt="yuv420p")
    write_video(folder / "same.mkv", count=3)
    write_video(folder / "uhd.mp4", count=2, size=(2160, 3840), codec="libx264", pix_fmt="yuv420p")  # 4K streams
    write_video(folder / "deep.mp4", count=3, codec="libx264", pix_fmt="yuv422p10le")  # 10-bit 4:2:2
    write_video(folder / "odd.mkv", count=3, size=(47, 63))  # odd size: a 4:4:4 overlay
    Image.fromarray(scene(5)).save(folder / "same.png")

    rows = infer(folder, out, ckpt)
    assert rows["good.mp4"]["status"] == "ok" and rows["good.mp4"]["frames"] == "6"
    assert (rows["uhd.mp4"]["status"], rows["uhd.mp4"]["height"], rows["uhd.mp4"]["width"]) == ("ok", "2160", "3840")
    for name, size in (("deep.mp4", SIZE), ("odd.mkv", (47, 63))):
        assert (rows[name]["status"], rows[name]["frames"], rows[name]["warning"]) == ("ok", "3", ""), rows[name]
        overlay = decoded_frames(out / f"{name.split('.')[0]}.overlay.mp4")
        assert len(overlay) == 3 and overlay[0].shape == (*size, 3)
    assert rows["corrupt.avi"]["status"].startswith("error: ")
    assert rows["audio.mp4"]["status"].startswith("error: no video stream")
    assert rows["cut.mkv"]["status"] == "ok" and "truncated?" in rows["cut.mkv"]["warning"]
    assert 0 < int(rows["cut.mkv"]["frames"]) < 30
    assert rows["empty.mkv"]["status"].startswith("error: ")
    assert rows["vfr.mkv"]["status"] == "ok" and "variable frame rate" in rows["vfr.mkv"]["warning"]
    assert [float(r["time_s"]) for r in read_csv(out / "vfr.frames.csv")] == pytest.approx([0, 0.1, 0.15, 0.4, 0.45, 1])
    turned = rows["turned.mp4"]  # the display matrix is honoured: 90° turns (H, W) into (W, H)
    assert (int(turned["height"]), int(turned["width"])) == SIZE[::-1]
    assert decoded_frames(out / "turned.overlay.mp4")[0].shape == (*SIZE[::-1], 3)
    assert rows["same.png"]["status"] == "ok" and rows["same.mkv"]["mask"] == "same_mkv.frames.csv"
    assert "shares its name" in rows["same.mkv"]["warning"] and (out / "same_mask.png").exists()


def read_frames(path, **options) -> list:
    reader = FrameReader(path, prepare=lambda rgb: rgb, **options)
    try:
        return list(reader)
    finally:
        reader.close()


def test_realtime_drops_frames_it_cannot_keep_up_with(tmp_path, ckpt):
    folder, out = tmp_path / "in", tmp_path / "out"
    folder.mkdir()
    write_video(folder / "fast.mkv", count=40, times=[i / 1000 for i in range(40)])  # 1000 frames/s
    row = infer(folder, out, ckpt, realtime=True)["fast.mkv"]
    per_frame = read_csv(out / "fast.frames.csv")
    dropped = sum(int(r["dropped"]) for r in per_frame)
    assert len(per_frame) == 40 and int(row["dropped_frames"]) == dropped > 0 and "dropped" in row["warning"]
    assert len(decoded_frames(out / "fast.overlay.mp4")) == 40 - dropped


def test_temporal_smoothing_averages_frames_and_is_checked(tmp_path, ckpt):
    folder = tmp_path / "in"
    folder.mkdir()
    write_video(folder / "clip.mkv", count=6)
    areas = {}
    for strength in (0, 0.6):
        infer(folder, tmp_path / f"out{strength}", ckpt, temporal_smoothing=strength)
        areas[strength] = [float(r["area_fraction"]) for r in read_csv(tmp_path / f"out{strength}" / "clip.frames.csv")]
    assert areas[0][0] == areas[0.6][0] and areas[0][1:] != areas[0.6][1:]  # the average starts at frame 0
    with pytest.raises(Exception) as error:
        infer(folder, tmp_path / "out", ckpt, temporal_smoothing=1.0)
    assert "temporal_smoothing must be in [0, 1)" in messages(error.value)


def test_a_killed_run_leaves_no_partial_file_and_the_next_run_completes(tmp_path, ckpt):
    folder, out = tmp_path / "in", tmp_path / "out"
    folder.mkdir()
    write_video(folder / "long.mkv", count=400, size=(96, 128))
    settings = {**FAST, "save_frames": True, "ckpt_path": str(ckpt)}
    command = [sys.executable, "-m", *bundle_run_arguments(["inference.json"], **settings)]
    command += ["--dataset_dir", str(folder), "--output_dir", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not list(out.glob(".long.overlay.mp4.*.tmp")) and time.monotonic() < deadline:
            assert process.poll() is None, "the run ended before it could be killed"
            time.sleep(0.01)
        time.sleep(0.3)  # in the middle of the video
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    assert list(out.glob(".long.*"))  # it was killed while writing
    final = [out / "long.overlay.mp4", out / "long.frames.csv", out / "long"]
    assert not any(path.exists() for path in final)

    rows = infer(folder, out, ckpt, save_frames=True)
    assert rows["long.mkv"]["status"] == "ok" and len(read_csv(out / "long.frames.csv")) == 400
    assert len(list((out / "long").glob("*_mask.png"))) == 400 and not list(out.glob(".long.*"))


def test_a_turned_video_larger_than_the_model_input_gets_the_image_paths_masks(tmp_path, ckpt):
    videos, stills = tmp_path / "videos", tmp_path / "stills"
    videos.mkdir()
    stills.mkdir()
    write_video(videos / "turned.mkv", count=4, size=(96, 128), rotation=90)  # shown 128×96; the model's input 64²
    infer(videos, tmp_path / "out", ckpt, save_frames=True, temporal_smoothing=0)
    agreement = []
    for index in range(4):  # the displayed frames through the image path
        Image.fromarray(np.ascontiguousarray(np.rot90(scene(index, (96, 128))))).save(stills / f"f{index}.png")
    infer(stills, tmp_path / "still_out", ckpt)
    for index in range(4):
        expected = mask_png(tmp_path / "still_out" / f"f{index}_mask.png")
        video_mask = mask_png(tmp_path / "out" / "turned" / f"{index:06d}_mask.png")
        assert video_mask.shape == expected.shape == (128, 96) and 0.05 < expected.mean() < 0.95
        agreement.append((video_mask == expected).mean())
    assert min(agreement) > 0.98, agreement  # libswscale's resize of the input, not the transforms': close, not equal
