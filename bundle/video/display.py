"""Frames as shown and drawn on, without full-frame float work: the displayed picture kept in 8-bit YUV as decoded
(rotation applied), the model's RGB input resized by libswscale straight from the decoded frame, the mask at
display size resized from the model's logits over its bounding box only, and the overlay drawn through lookup
tables on each plane. :mod:`bundle.video.io` decodes and encodes with these; :mod:`bundle.video.runner` uses them.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..inference.postprocessing import clean_mask

OVERLAY_COLOUR = np.array((0, 255, 0), np.float32)
FULL_RANGE = 2  # FFmpeg's AVCOL_RANGE_JPEG
RESIZE_INTERPOLATION = "BILINEAR"  # libswscale's bilinear: a triangle filter, widened when shrinking (anti-aliased)


def quarter_turns(frame) -> int:
    """Counter-clockwise quarter turns that show a PyAV frame upright (its display-matrix rotation)."""
    return int(round(getattr(frame, "rotation", 0) or 0)) // 90 % 4


def displayed(frame) -> np.ndarray:
    """(H, W, 3) uint8 RGB of a PyAV frame as a player shows it: its display-matrix rotation applied."""
    rgb = frame.to_ndarray(format="rgb24")
    turns = quarter_turns(frame)
    return np.ascontiguousarray(np.rot90(rgb, turns)) if turns else rgb


class FrameScaler:
    """libswscale set up once per video (PyAV ``VideoReformatter``s, one thread each: a frame's conversions are
    small or run beside the decoder's threads): for the displayed picture and for the model's input."""

    def __init__(self) -> None:
        from av.video.reformatter import VideoReformatter

        self.picture, self.resize, self.colour = VideoReformatter(), VideoReformatter(), VideoReformatter()


def model_rgb(frame, size: Sequence[int], scaler: FrameScaler | None = None) -> np.ndarray | None:
    """(h, w, 3) uint8 RGB of the displayed frame resized to ``size`` (h, w) from the decoded frame, or None unless
    the displayed frame is larger along both axes (then the config's transforms resize it, as they resize images).

    libswscale resizes the frame (anti-aliased bilinear) to twice ``size`` in YUV 4:2:0, whose chroma then has the
    input's resolution, and converts that to RGB as :func:`displayed` converts whole frames; Pillow averages its
    2×2 blocks (``Image.reduce``). On CVC-ClinicDB's frames this keeps the Dice of the image path's resize of the
    whole frame (``docs/benchmark_video.md``), which resizing straight to RGB at ``size`` lowers."""
    turns = quarter_turns(frame)
    height, width = (frame.width, frame.height) if turns % 2 else (frame.height, frame.width)
    if not (size[0] < height and size[1] < width):
        return None
    rows, columns = (size[1], size[0]) if turns % 2 else (size[0], size[1])
    scaler = scaler or FrameScaler()
    twice = scaler.resize.reformat(frame, width=2 * columns, height=2 * rows, format="yuv420p",
                                   interpolation=RESIZE_INTERPOLATION, threads=1)  # fmt: skip
    rgb = np.asarray(Image.fromarray(scaler.colour.reformat(twice, format="rgb24", threads=1).to_ndarray()).reduce(2))
    return np.ascontiguousarray(np.rot90(rgb, turns)) if turns else rgb


def picture_format(height: int, width: int) -> str:
    """yuv420p, or yuv444p for an odd size (4:2:0 needs even ones): what the overlay video is encoded in."""
    return "yuv420p" if height % 2 == 0 and width % 2 == 0 else "yuv444p"


@dataclass
class Picture:
    """A frame as displayed in 8-bit YUV: ``data`` as PyAV's ``to_ndarray`` holds ``format`` (yuv420p: (H*3/2, W),
    the Y, U, V planes one after another; yuv444p: (3, H, W)); ``height``, ``width`` its size."""

    data: np.ndarray
    format: str
    height: int
    width: int

    @property
    def shape(self) -> tuple[int, int]:
        return self.height, self.width

    def planes(self) -> list[np.ndarray]:
        """[Y (H, W), U, V ((H/2, W/2) in yuv420p, (H, W) in yuv444p)]: views into ``data``."""
        if self.format == "yuv444p":
            return list(self.data)
        flat, luma = self.data.reshape(-1), self.height * self.width
        chroma = (self.height // 2, self.width // 2)
        return [flat[:luma].reshape(self.shape), *(part.reshape(chroma) for part in np.split(flat[luma:], 2))]

    def video_frame(self):
        """The picture as a PyAV ``VideoFrame`` (for the encoder)."""
        import av

        return av.VideoFrame.from_ndarray(self.data, format=self.format)

    def rgb(self) -> np.ndarray:
        """(H, W, 3) uint8 RGB (libswscale's conversion)."""
        return self.video_frame().to_ndarray(format="rgb24")


def display_picture(frame, scaler: FrameScaler | None = None) -> Picture:
    """The :class:`Picture` of a PyAV frame of any pixel format (10-bit, 4:2:2, RGB, full range, ...): converted to
    :func:`picture_format` in limited range (the encoder's) by libswscale only when it differs, rotation applied."""
    turns = quarter_turns(frame)
    height, width = (frame.width, frame.height) if turns % 2 else (frame.height, frame.width)
    kind = picture_format(height, width)
    if frame.format.name != kind or frame.color_range == FULL_RANGE:
        convert = (scaler or FrameScaler()).picture.reformat
        frame = convert(frame, format=kind, src_color_range=frame.color_range, dst_color_range="MPEG", threads=1)
    decoded = Picture(frame.to_ndarray(), kind, frame.height, frame.width)
    if not turns:
        return decoded
    turned = np.concatenate([np.rot90(plane, turns).reshape(-1) for plane in decoded.planes()])
    return Picture(turned.reshape(decoded.data.shape[:-2] + (-1, width)), kind, height, width)


@dataclass
class DisplayMask:
    """A frame's (H, W) bool mask at display size, held as ``crop`` at (``top``, ``left``): outside it, background."""

    crop: np.ndarray
    top: int
    left: int
    size: tuple[int, int]

    def full(self) -> np.ndarray:
        mask = np.zeros(self.size, bool)
        mask[self.top : self.top + self.crop.shape[0], self.left : self.left + self.crop.shape[1]] = self.crop
        return mask

    def any(self) -> bool:
        return bool(self.crop.any())

    def area_fraction(self) -> float:
        return float(np.count_nonzero(self.crop)) / (self.size[0] * self.size[1])

    def cleaned(self, **options) -> DisplayMask:
        """:func:`~bundle.inference.postprocessing.clean_mask` with ``options`` (equal to cleaning the whole mask:
        the crop holds all the foreground), shrunk to its foreground's bounding box."""
        crop = clean_mask(self.crop, **options) if any(options.values()) else self.crop
        rows, columns = np.flatnonzero(crop.any(axis=1)), np.flatnonzero(crop.any(axis=0))
        if rows.size == 0:
            return DisplayMask(np.zeros((0, 0), bool), 0, 0, self.size)
        box = np.s_[rows[0] : rows[-1] + 1, columns[0] : columns[-1] + 1]
        return DisplayMask(crop[box], self.top + int(rows[0]), self.left + int(columns[0]), self.size)


def display_mask(logits: np.ndarray, size: Sequence[int], threshold: float) -> DisplayMask:
    """(h, w) logits at the model's size -> the mask of their bilinear resize to ``size`` (H, W) (half-pixel
    centres, edges clamped: ``Invertd`` of ``Resized``) where the sigmoid is >= ``threshold``.

    A resized value mixes its 2×2 nearest logits, so only the display pixels near a logit above the threshold's
    are computed, by Pillow's bilinear resize of 32-bit floats over that box; a frame smaller than the model's
    input along an axis (plain bilinear shrinking there) goes through torch over the whole frame."""
    (h, w), (height, width) = logits.shape, (int(size[0]), int(size[1]))
    t = min(max(float(threshold), 1e-7), 1 - 1e-7)
    offset = np.asarray(logits, np.float32) - np.float32(math.log(t) - math.log1p(-t))  # >= 0: foreground
    if height < h or width < w:
        full = F.interpolate(torch.from_numpy(offset)[None, None], size=(height, width), mode="bilinear")
        return DisplayMask(full[0, 0].numpy() >= 0, 0, 0, (height, width))
    above = offset >= -1e-4  # margin: float rounding
    rows, columns = np.flatnonzero(above.any(axis=1)), np.flatnonzero(above.any(axis=0))
    if rows.size == 0:
        return DisplayMask(np.zeros((0, 0), bool), 0, 0, (height, width))
    top, bottom = reached(rows[0], rows[-1], h, height)
    left, right = reached(columns[0], columns[-1], w, width)
    box = (left * w / width, top * h / height, right * w / width, bottom * h / height)
    crop = Image.fromarray(offset).resize((right - left, bottom - top), Image.BILINEAR, box=box)
    return DisplayMask(np.asarray(crop) >= 0, top, left, (height, width))


def reached(first: int, last: int, small: int, large: int) -> tuple[int, int]:
    """[start, stop) of the positions along an axis of ``large`` samples whose bilinear source pair (source
    coordinate (i + 0.5) * small / large - 0.5, its floor and the next) meets samples ``first``..``last`` of
    ``small``, one position wider on each side (float rounding)."""
    scale = large / small
    start = math.ceil((first - 0.5) * scale - 0.5) - 1
    stop = math.ceil((last + 1.5) * scale - 0.5) + 1
    return max(0, start), min(large, stop)


@functools.lru_cache(maxsize=8)
def blend_table(fill: float, colour: tuple[float, ...] = tuple(OVERLAY_COLOUR)) -> np.ndarray:
    """(256, C) uint8: each value v blended towards each of ``colour``'s C values with opacity ``fill``."""
    values = np.arange(256, dtype=np.float64)[:, None]
    return (values * (1 - fill) + np.asarray(colour, np.float32) * fill).astype(np.uint8)


@functools.lru_cache(maxsize=4)
def picture_colour(kind: str) -> tuple[int, ...]:
    """:data:`OVERLAY_COLOUR` in the planes of a :class:`Picture` of format ``kind`` (Y, U, V), by libswscale."""
    import av

    rgb = np.broadcast_to(OVERLAY_COLOUR.astype(np.uint8), (2, 2, 3)).copy()
    picture = Picture(av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format=kind).to_ndarray(), kind, 2, 2)
    return tuple(int(plane[0, 0]) for plane in picture.planes())


def draw_mask(planes: Sequence[np.ndarray], colour: Sequence[int], mask: DisplayMask, fill: float = 0.3) -> None:
    """Draw ``mask`` (cleaned: its crop is its bounding box) in place on ``planes`` (Y, U, V or R, G, B; each at
    the mask's size or halved, 4:2:0 chroma): its outline (about 1/360 of the height thick, the image edge closing
    it) in ``colour`` (a value per plane) and, ``fill`` > 0, a translucent fill of that opacity through a 256-entry
    table per plane. Only the mask's box is touched; a halved plane takes the 2×2 blocks that hold any of it."""
    if mask.crop.size == 0:
        return
    top, left = mask.top - mask.top % 2, mask.left - mask.left % 2  # the box on the even grid, background added
    rows, columns = mask.top + mask.crop.shape[0] - top, mask.left + mask.crop.shape[1] - left
    inside = np.pad(mask.crop, ((mask.top - top + 1, rows % 2 + 1), (mask.left - left + 1, columns % 2 + 1)))
    eroded = inside.copy()
    for _ in range(max(1, mask.size[0] // 360)):
        eroded[1:-1, 1:-1] &= eroded[:-2, 1:-1] & eroded[2:, 1:-1] & eroded[1:-1, :-2] & eroded[1:-1, 2:]
    inside, eroded = inside[1:-1, 1:-1], eroded[1:-1, 1:-1]
    outline = inside & ~eroded
    table = blend_table(float(fill), tuple(float(value) for value in colour))
    for index, (plane, value) in enumerate(zip(planes, colour)):
        where, edge, step = inside, outline, mask.size[0] // plane.shape[0]
        if step > 1:  # 2×2 blocks
            where, edge = (m[0::2, 0::2] | m[1::2, 0::2] | m[0::2, 1::2] | m[1::2, 1::2] for m in (inside, outline))
        region = plane[top // step : top // step + where.shape[0], left // step : left // step + where.shape[1]]
        where, edge = where[: region.shape[0], : region.shape[1]], edge[: region.shape[0], : region.shape[1]]
        if fill > 0:
            np.copyto(region, table[:, index].take(region), where=where)
        np.copyto(region, np.uint8(value), where=edge)


def overlay_frame(rgb: np.ndarray, mask: np.ndarray, fill: float = 0.3) -> np.ndarray:
    """(H, W, 3) uint8 RGB frame with the (H, W) bool mask drawn by :func:`draw_mask` in :data:`OVERLAY_COLOUR`."""
    out = rgb.copy()
    whole = DisplayMask(np.asarray(mask, bool), 0, 0, mask.shape).cleaned()
    draw_mask([out[..., channel] for channel in range(3)], OVERLAY_COLOUR.astype(np.uint8).tolist(), whole, fill)
    return out
