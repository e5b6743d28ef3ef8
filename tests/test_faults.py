"""Fault suite of folder inference (configs/inference.json) and of the command line's one-line errors: a damaged ONNX
cache, colour spaces and EXIF orientation, the append-only report, unwritable and full output folders, bad
checkpoints, and inputs that are not images (docs/reliability.md, "Folder inference faults")."""

import csv
import errno
import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from bundle import atomic_files
from bundle.backends.onnx_cache import sha256_record
from bundle.data.readers import header_problem, image_readers
from bundle.inference import writers
from monai.transforms import LoadImage
from PIL import Image

from tests.helpers import REPO_ROOT, bundle_run_arguments, messages, run_bundle, save_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")

FAST = {"image_size": [64, 64], "batch_size": 2, "num_workers": 0, "backend": "torch", "tta": "none"}


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "model.pt", all_foreground=False)


def pattern_image(height=48, width=64, seed=0):
    """An RGB image whose mask under the random checkpoint is neither empty nor full."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 120, (height, width, 3), dtype=np.uint8)
    image[height // 4 : height // 2, width // 5 : width // 2] = (230, 90, 60)
    return image


def make_images(folder, count=5):
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        Image.fromarray(pattern_image(seed=index)).save(folder / f"img{index}.png")
    return folder


def infer(dataset_dir, output_dir, ckpt, **overrides):
    settings = {**FAST, **overrides}
    return run_bundle(
        ["inference.json"],
        "infer",
        dataset_dir=str(dataset_dir),
        output_dir=str(output_dir),
        ckpt_path=str(ckpt),
        **settings,
    )


def report_rows(folder):
    with open(folder / "predictions.csv", newline="") as stream:
        return list(csv.DictReader(stream))


def masks(folder):
    return {p.relative_to(folder).as_posix(): np.asarray(Image.open(p)) for p in sorted(folder.rglob("*_mask.png"))}


def cli(config_files, **overrides):
    """``python -m monai.bundle run`` in a subprocess: (return code, stderr)."""
    command = [sys.executable, "-m", *bundle_run_arguments(config_files, **overrides)]
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, check=False)
    return result.returncode, result.stderr


def assert_one_line_error(returncode, stderr, *fragments):
    last = stderr.strip().splitlines()[-1]
    assert returncode == 1 and "Traceback" not in stderr, stderr[-3000:]
    assert last.startswith("error: ") and all(fragment in last for fragment in fragments), last


# ---------------------------------------------------------------- 1. the ONNX cache


@pytest.mark.parametrize("damage", ["truncated", "weights overwritten", "record missing"])
def test_a_damaged_onnx_cache_is_exported_again(tmp_path, ckpt, damage, capfd):
    images, cache = make_images(tmp_path / "in", 3), tmp_path / "cache"
    auto = {"backend": "auto", "onnx_cache_dir": str(cache)}
    infer(images, tmp_path / "first", ckpt, **auto)
    (export,) = cache.glob("*.onnx")
    data = bytearray(export.read_bytes())
    if damage == "truncated":
        export.write_bytes(data[: len(data) // 2])
    elif damage == "weights overwritten":  # still parses, as a model with wrong weights would
        data[len(data) // 2 : len(data) // 2 + 4096] = np.random.default_rng(0).bytes(4096)
        export.write_bytes(bytes(data))
    else:
        sha256_record(export).unlink()
    (cache / f".{export.stem}.killed.onnx").write_bytes(b"")  # a temporary file of a killed export
    capfd.readouterr()
    infer(images, tmp_path / "second", ckpt, **auto)
    log = "".join(capfd.readouterr())
    assert "is damaged" in log and "running torch instead" not in log
    first, second = masks(tmp_path / "first"), masks(tmp_path / "second")
    assert list(first) == list(second) and all(np.array_equal(first[name], second[name]) for name in first)
    assert sorted(p.name for p in cache.iterdir()) == sorted([export.name, export.name + ".sha256", ".lock"])


# ---------------------------------------------------------------- 2. colour spaces and orientation


def test_cmyk_palette_and_one_bit_images_read_as_a_viewer_shows_them(tmp_path):
    rows, columns = np.mgrid[0:48, 0:64]
    rgb = np.stack([rows * 5, columns * 4, 255 - rows * 3], axis=-1).astype(np.uint8)  # smooth: JPEG keeps it
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "cmyk.jpg", quality=100)
    Image.fromarray(rgb).convert("P").save(tmp_path / "palette.png")
    load = LoadImage(reader=image_readers(), image_only=True)
    reference = rgb.astype(np.float32)
    cmyk = load(str(tmp_path / "cmyk.jpg"))
    assert cmyk.shape == reference.shape and cmyk.meta["colour_mode"] == "CMYK"
    assert np.abs(np.asarray(cmyk, np.float32) - reference).mean() < 8  # not C, M, Y read as R, G, B
    assert load(str(tmp_path / "palette.png")).shape == reference.shape
    Image.fromarray(rgb[..., 0] > 100).save(tmp_path / "bits.png")
    assert set(np.unique(np.asarray(load(str(tmp_path / "bits.png"))))) <= {0, 255}


def test_exif_orientation_and_grey_input_are_applied_and_reported(tmp_path, ckpt):
    images = tmp_path / "in"
    images.mkdir()
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    Image.fromarray(pattern_image(48, 64)).save(images / "rotated.jpg", exif=exif, quality=95)
    Image.fromarray(pattern_image()[..., 1]).save(images / "grey.png")
    Image.fromarray(pattern_image()).save(images / "colour.png")
    infer(images, tmp_path / "out", ckpt)
    assert masks(tmp_path / "out")["rotated_mask.png"].shape == (64, 48)  # the displayed (H, W), not the stored one
    rows = {row["path"]: row for row in report_rows(tmp_path / "out")}
    assert rows["rotated.jpg"]["exif_orientation"] == "6" and rows["colour.png"]["exif_orientation"] == "1"
    assert rows["grey.png"]["status"] == "ok" and "grey-scale" in rows["grey.png"]["warning"]
    assert rows["colour.png"]["warning"] == "" and rows["rotated.jpg"]["warning"] == ""


# ---------------------------------------------------------------- 3. the append-only report


def test_report_keeps_every_row_across_runs_and_after_a_kill(tmp_path, ckpt):
    images, out = make_images(tmp_path / "in", 6), tmp_path / "out"
    overlay = tmp_path / "kill.json"
    kill = {"_target_": "tests.faults.InterruptAt", "epoch": 1, "iteration": 2, "kill": True}
    overlay.write_text(json.dumps({"+handlers": [kill]}))
    arguments = dict(dataset_dir=str(images), output_dir=str(out), ckpt_path=str(ckpt), **FAST)
    returncode, _ = cli(["inference.json", str(overlay)], **arguments)
    assert returncode == -9  # SIGKILL after the second batch
    killed = (out / "predictions.csv").read_text()
    killed_rows = report_rows(out)
    assert 1 <= len(killed_rows) <= 4 and all((out / row["mask"]).is_file() for row in killed_rows)
    for mask in out.glob("*_mask.png"):  # every file under a final name is whole
        assert Image.open(mask).size == (64, 48)

    infer(images, out, ckpt)
    assert (out / "predictions.csv").read_text().startswith(killed)  # nothing written before is changed
    assert not list(out.rglob(".*.tmp"))  # the killed run's temporary files are cleaned up
    rows = report_rows(out)
    assert sorted({row["path"] for row in rows}) == sorted(p.name for p in images.iterdir())
    assert len(rows) == len({row["path"] for row in rows})  # one row per input: skips add nothing new
    Image.fromarray(pattern_image(seed=9)).save(images / "late.png")
    before = (out / "predictions.csv").read_text()
    infer(images, out, ckpt)
    after = report_rows(out)
    assert (out / "predictions.csv").read_text().startswith(before) and [r["path"] for r in after[len(rows) :]] == [
        "late.png"
    ]


# ---------------------------------------------------------------- 4. fail early, in one line


def test_an_unwritable_output_folder_stops_before_any_inference(tmp_path, ckpt):
    images = make_images(tmp_path / "in", 2)
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    returncode, stderr = cli(["inference.json"], dataset_dir=str(images), output_dir=str(blocker / "out"), **FAST)
    assert_one_line_error(returncode, stderr, "cannot write to the output folder", str(blocker / "out"))
    assert "Epoch" not in stderr  # stopped before the first batch


def test_too_little_free_space_stops_before_any_inference(tmp_path, ckpt, monkeypatch):
    images = make_images(tmp_path / "in", 2)
    usage = type("Usage", (), {"free": 1000})
    monkeypatch.setattr(atomic_files.shutil, "disk_usage", lambda path: usage)
    with pytest.raises(Exception) as error:
        infer(images, tmp_path / "out", ckpt)
    assert "MiB free" in messages(error.value) and not (tmp_path / "out" / "predictions.csv").exists()


def test_a_disk_that_fills_up_stops_the_run_and_keeps_what_was_written(tmp_path, ckpt, monkeypatch):
    images, out = make_images(tmp_path / "in", 6), tmp_path / "out"
    write_png, calls = writers.write_png, []

    def fill_up(path, array):
        calls.append(path)
        if len(calls) > 2:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        write_png(path, array)

    monkeypatch.setattr(writers, "write_png", fill_up)
    with pytest.raises(Exception) as error:
        infer(images, out, ckpt)
    assert "is full (No space left on device) after 2 masks" in messages(error.value)
    assert [row["status"] for row in report_rows(out)][:2] == ["ok", "ok"] and len(masks(out)) == 2
    monkeypatch.setattr(writers, "write_png", write_png)
    infer(images, out, ckpt)  # the re-run completes the rest
    assert len(masks(out)) == 6 and {row["status"] for row in report_rows(out)[-4:]} == {"ok"}


@pytest.mark.parametrize("kind", ["truncated", "text", "missing"])
def test_bad_checkpoints_end_in_one_line(tmp_path, ckpt, kind):
    images = make_images(tmp_path / "in", 1)
    bad = tmp_path / "model.pt"
    if kind == "truncated":
        bad.write_bytes(Path(ckpt).read_bytes()[:100_000])
    elif kind == "text":
        bad.write_text("this is not a checkpoint\n")
    arguments = dict(dataset_dir=str(images), output_dir=str(tmp_path / "out"), ckpt_path=str(bad), **FAST)
    returncode, stderr = cli(["inference.json"], **arguments)
    assert_one_line_error(returncode, stderr, str(bad))
    assert "weights_only" not in stderr.strip().splitlines()[-1]
    returncode, stderr = cli(["inference.json"], debug="true", **arguments)
    assert returncode == 1 and "Traceback" in stderr  # --debug true keeps the traceback


def test_evaluate_and_train_errors_end_in_one_line(tmp_path):
    bad, good = tmp_path / "bad", tmp_path / "good"
    for data, with_masks in ((bad, 1), (good, 3)):
        make_images(data / "images", 3)
        (data / "masks").mkdir()
        for index in range(with_masks):
            Image.fromarray(np.zeros((48, 64), np.uint8)).save(data / "masks" / f"img{index}.png")
    returncode, stderr = cli(["train.json"], dataset_dir=str(bad), epochs=1, **FAST)
    assert_one_line_error(returncode, stderr, str(bad))
    missing = tmp_path / "nowhere" / "model.pt"
    returncode, stderr = cli(["train.json", "evaluate.json"], dataset_dir=str(good), ckpt_path=str(missing), **FAST)
    assert_one_line_error(returncode, stderr, "checkpoint not found", str(missing))


# ---------------------------------------------------------------- 5. precise reasons, nothing vanishes


def png_header_only(path, width, height, bit_depth=1, colour_type=0):
    """A PNG that declares ``width`` x ``height`` but holds one empty row: what a decompression bomb looks like."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)

    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0")) + chunk(b"IEND", b"")
    )


def test_bad_inputs_get_precise_reasons_and_nothing_vanishes(tmp_path, ckpt, monkeypatch):
    images = make_images(tmp_path / "in", 2)
    png_header_only(images / "bomb.png", 60000, 60000)
    png_header_only(images / "huge.png", 10000, 10000)
    (images / "random.png").write_bytes(np.random.default_rng(0).bytes(3000))
    (images / "text.tif").write_text("a text file named .tif\n")
    (images / "dangling.jpg").symlink_to(tmp_path / "gone.jpg")
    (images / "folder.jpg").mkdir()
    Image.fromarray(pattern_image()).save(images / "locked.png")
    readable = os.access
    monkeypatch.setattr(
        "bundle.inference.folder.os.access", lambda path, mode: "locked" not in str(path) and readable(path, mode)
    )
    infer(images, images / "out", ckpt)  # the output folder lies inside the input folder
    rows = {row["path"]: row["status"] for row in report_rows(images / "out")}
    expected = {
        "bomb.png": "decompression bomb",
        "huge.png": "over max_pixels 50000000",
        "random.png": "not a readable PNG image",
        "text.tif": "not a readable TIF image",
        "dangling.jpg": "dangling symbolic link",
        "folder.jpg": "a folder with an image suffix",
        "locked.png": "permission denied",
    }
    assert set(rows) == set(expected) | {"img0.png", "img1.png"}
    for name, reason in expected.items():
        assert rows[name].startswith("error: ") and reason in rows[name], (name, rows[name])
    infer(images, images / "out", ckpt)  # a second run does not take the first run's masks for images
    assert {row["path"] for row in report_rows(images / "out")} == set(rows)
    assert "over max_pixels 1000" in header_problem(images / "img0.png", 1000)


def test_an_output_folder_that_is_the_input_folder_leaves_earlier_outputs_out(tmp_path, ckpt):
    images = make_images(tmp_path / "in", 2)
    infer(images, images, ckpt)
    infer(images, images, ckpt, overwrite=True)
    assert sorted(row["path"] for row in report_rows(images)) == ["img0.png", "img0.png", "img1.png", "img1.png"]
