"""bundle.video.display: pictures in YUV (10-bit, odd sizes, rotation), the model's input resized by libswscale, the
mask at display size over its box, and the overlay through lookup tables (RGB and YUV 4:2:0). Tiny synthetic
videos (tests/test_video.py's)."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from bundle.inference.postprocessing import postprocess_mask
from bundle.video.display import (
    OVERLAY_COLOUR,
    DisplayMask,
    Picture,
    display_mask,
    draw_mask,
    overlay_frame,
    picture_colour,
)
from PIL import Image

from tests.test_video import SIZE, read_frames, scene, write_video

av = pytest.importorskip("av")
pytestmark = pytest.mark.usefixtures("one_thread")


def luma(rgb: np.ndarray, kind: str) -> np.ndarray:
    """The Y plane of ``rgb`` converted to ``kind`` (limited range) by libswscale."""
    frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24").reformat(format=kind)
    return Picture(frame.to_ndarray(), kind, *rgb.shape[:2]).planes()[0]


@pytest.mark.parametrize(
    "codec, pix_fmt, size, kind",
    [("libx264", "yuv422p10le", SIZE, "yuv420p"), ("libx264rgb", "rgb24", (47, 63), "yuv444p")],
)
def test_pictures_are_8_bit_limited_range_yuv_whatever_the_source(tmp_path, codec, pix_fmt, size, kind):
    frames = read_frames(write_video(tmp_path / "clip.mkv", count=2, size=size, codec=codec, pix_fmt=pix_fmt))
    for index, frame in enumerate(frames):  # 10-bit 4:2:2 -> 4:2:0; full-range RGB -> limited-range 4:4:4 (odd size)
        assert (frame.picture.shape, frame.picture.format) == (size, kind)
        assert np.abs(frame.picture.planes()[0].astype(int) - luma(scene(index, size), kind)).max() <= 2


@pytest.mark.parametrize("rotation", [0, 90])
def test_frames_decoded_at_the_model_size_equal_a_resize_of_the_displayed_frame(tmp_path, rotation):
    size, model_size = (96, 128), (24, 40)
    path = write_video(tmp_path / "clip.mp4", count=3, size=size, rotation=rotation)  # lossless
    frames = read_frames(path, model_size=model_size)
    assert len(frames) == 3
    for index, frame in enumerate(frames):
        shown = np.rot90(scene(index, size), rotation // 90)
        assert frame.picture.shape == shown.shape[:2] and frame.item.shape == (*model_size, 3)
        errors = [  # against Pillow's anti-aliased bilinear resize of the displayed frame, and of a wrong turn
            np.abs(frame.item.astype(int) - np.asarray(Image.fromarray(np.ascontiguousarray(image)).resize(
                model_size[::-1], Image.BILINEAR))).mean()
            for image in (shown, np.rot90(shown, 2))
        ]  # fmt: skip
        assert errors[0] < 3 and errors[1] > 3 * errors[0], errors  # 4:2:0 chroma of a noisy frame: not 0
    frames = read_frames(path, model_size=(100, 100))  # not larger along both axes: the frame itself
    assert all(frame.item.shape == (*frames[0].picture.shape, 3) for frame in frames)


def smooth_logits(shape, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    coarse = torch.from_numpy(rng.normal(0, 4, (1, 1, shape[0] // 3 + 2, shape[1] // 3 + 2)).astype(np.float32))
    return F.interpolate(coarse, size=shape, mode="bicubic")[0, 0].numpy() - 2


@pytest.mark.parametrize("size", [(40, 52), (75, 131), (9, 13), (6, 30)])
@pytest.mark.parametrize("threshold", [0.5, 0.3])
def test_display_mask_equals_the_threshold_of_the_whole_frame_resize(size, threshold):
    logits = smooth_logits((9, 13))
    probabilities = torch.sigmoid(F.interpolate(torch.from_numpy(logits)[None, None], size=size, mode="bilinear"))
    expected = probabilities[0, 0].numpy() >= threshold  # Invertd's bilinear resize, then the sigmoid's threshold
    mask = display_mask(logits, size, threshold)
    certain = np.abs(probabilities[0, 0].numpy() - threshold) > 1e-5
    assert 0 < expected.mean() < 1 and mask.size == size
    assert np.array_equal(mask.full()[certain], expected[certain])
    assert mask.any() and mask.area_fraction() == pytest.approx(expected.mean(), abs=0.01)
    options = {"fill_holes": True, "keep_largest_component": True, "min_component_size": 5}
    cleaned = mask.cleaned(**options)  # on the crop, as on the whole frame
    assert np.array_equal(cleaned.full(), postprocess_mask(mask.full().astype(np.float32), 0.5, **options))
    assert not display_mask(np.full((9, 13), -3, np.float32), size, threshold).cleaned().full().any()


def test_overlay_on_a_yuv_picture_blends_inside_and_keeps_the_outside():
    rng = np.random.default_rng(0)
    rgb = np.repeat(rng.integers(40, 200, (36, 48, 1), dtype=np.uint8), 3, axis=2)  # grey: chroma 128
    frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p")
    picture = Picture(frame.to_ndarray(), "yuv420p", 36, 48)
    before = [plane.copy() for plane in picture.planes()]
    rows, columns = np.mgrid[:36, :48]
    mask = (rows - 17) ** 2 + (columns - 23) ** 2 < 11**2
    draw_mask(picture.planes(), picture_colour("yuv420p"), DisplayMask(mask, 0, 0, mask.shape).cleaned(), 0.3)
    after = picture.planes()
    assert np.array_equal(after[0][~mask], before[0][~mask])  # luma: untouched outside the mask
    blocks = mask.reshape(18, 2, 24, 2).any(axis=(1, 3))  # chroma: untouched outside the mask's 2×2 blocks
    assert all(np.array_equal(a[~blocks], b[~blocks]) for a, b in zip(after[1:], before[1:]))
    deep = (rows - 17) ** 2 + (columns - 23) ** 2 < 7**2
    expected = (rgb * 0.7 + OVERLAY_COLOUR * 0.3).astype(int)  # as the RGB overlay, within YUV rounding
    assert np.abs(picture.rgb().astype(int)[deep] - expected[deep]).max() <= 4
    edge = mask & ~np.pad(mask, 1)[:-2, 1:-1]
    assert (picture.rgb()[edge][:, 1] > 200).all()  # the outline: green


def test_rotation_metadata_turns_frames_counter_clockwise(tmp_path):
    path = write_video(tmp_path / "turned.mp4", count=3, rotation=90)  # lossless: exact frames
    frames = read_frames(path)
    assert len(frames) == 3 and all((frame.item == np.rot90(scene(i), 1)).all() for i, frame in enumerate(frames))
    for index, frame in enumerate(frames):  # the displayed picture: YUV 4:2:0, turned the same way
        assert (frame.picture.shape, frame.picture.format) == (SIZE[::-1], "yuv420p")
        assert np.abs(frame.picture.planes()[0].astype(int) - luma(np.rot90(scene(index), 1), "yuv420p")).max() <= 2


def test_overlay_blends_the_inside_outlines_the_edge_and_keeps_the_outside():
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (720, 96, 3), dtype=np.uint8)  # 720 rows: an outline of 720 // 360 = 2 steps
    rows, columns = np.mgrid[:720, :96]
    mask = (rows - 300) ** 2 + (columns - 48) ** 2 < 40**2
    out = overlay_frame(rgb, mask, fill=0.3)
    assert np.array_equal(out[~mask], rgb[~mask])
    deep = (rows - 300) ** 2 + (columns - 48) ** 2 < 36**2  # more than 2 pixels inside the edge
    expected = (rgb[deep] * 0.7 + OVERLAY_COLOUR * 0.3).astype(np.uint8)
    assert np.array_equal(out[deep], expected)
    edge = mask & ~np.pad(mask, 1)[:-2, 1:-1]  # the topmost pixel of each column is on the outline
    assert edge.any() and (out[edge] == OVERLAY_COLOUR.astype(np.uint8)).all()
    assert np.array_equal(overlay_frame(rgb, np.zeros_like(mask)), rgb)
    assert np.array_equal(overlay_frame(rgb, mask, fill=0.0)[deep], rgb[deep])
