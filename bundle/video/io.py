"""Video files through PyAV (FFmpeg): decoding frames in a worker thread (rotation applied, original size, memory
bounded), and the overlay video's encoder (atomic). :mod:`bundle.video.runner` runs the model on them; where the
outputs go is :mod:`bundle.inference.outputs`'s.
"""

from __future__ import annotations

import contextlib
import functools
import os
import queue
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

OVERLAY_COLOUR = np.array((0, 255, 0), np.float32)
VFR_TOLERANCE = 0.1  # frame intervals that differ from their median by more than 10% make a variable frame rate


class VideoError(Exception):
    """A video that cannot be segmented (no video stream, no frames, undecodable); the message is the report's."""


@dataclass
class Frame:
    """One decoded frame: ``rgb`` (H, W, 3) uint8 as displayed (rotation applied), its index, its time in seconds,
    ``pts`` in the stream's time base, ``arrived`` (``time.perf_counter()`` when it was decoded; in real time, when
    it was due) and ``item`` (the worker's ``prepare(rgb)``, e.g. the model input)."""

    index: int
    time: float
    pts: int
    rgb: np.ndarray
    arrived: float
    item: object = None


@dataclass
class VideoInfo:
    """What the container says: frame rate (frames/s), frame count (0 when unknown), duration (s), time base."""

    fps: float
    frames: int
    duration: float
    time_base: Fraction


def open_video(path: str | os.PathLike):
    """(container, video stream, :class:`VideoInfo`); VideoError when FFmpeg cannot open it or it has no video."""
    import av

    try:
        container = av.open(str(path))
    except (av.FFmpegError, OSError) as error:
        reason = getattr(error, "strerror", None) or str(error)
        raise VideoError(f"cannot open the video: {reason} (truncated, corrupt or without frames?)") from None
    if not container.streams.video:
        kinds = sorted({stream.type for stream in container.streams}) or ["no streams"]
        container.close()
        raise VideoError(f"no video stream (the file holds: {', '.join(kinds)})")
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    rate = stream.average_rate or stream.guessed_rate or Fraction(25)
    duration = float(stream.duration * stream.time_base) if stream.duration else 0.0
    if not duration and container.duration:
        duration = container.duration / 1_000_000
    info = VideoInfo(float(rate), int(stream.frames or 0), duration, stream.time_base or Fraction(1, 90000))
    return container, stream, info


def displayed(frame) -> np.ndarray:
    """(H, W, 3) uint8 RGB of a PyAV frame as a player shows it: its display-matrix rotation applied."""
    rgb = frame.to_ndarray(format="rgb24")
    turns = int(round(getattr(frame, "rotation", 0) or 0)) // 90 % 4
    return np.ascontiguousarray(np.rot90(rgb, turns)) if turns else rgb


class FrameReader:
    """Decodes ``path`` in a worker thread into a bounded queue of :class:`Frame` (at most ``ahead`` frames wait, so
    memory stays bounded whatever the video's size and length), calling ``prepare(rgb)`` there too.

    ``realtime``: frames are released at their timestamps, as a camera would deliver them (the source's pace),
    and never wait: a frame decoded more than a frame interval late while the model still has one waiting, or the
    oldest waiting one when the queue is full, goes to ``skipped`` (not converted, or its image released).
    Iterating yields frames in order; a decoding error ends the frames and is kept in ``error`` (the frames before it
    are yielded).
    """

    def __init__(self, path: str | os.PathLike, prepare: Callable[[np.ndarray], object], ahead: int = 8,
                 realtime: bool = False) -> None:  # fmt: skip
        self.container, self.stream, self.info = open_video(path)
        self.prepare, self.realtime = prepare, realtime
        self.frames: queue.Queue = queue.Queue(maxsize=max(1, ahead))
        self.error: str = ""
        self.skipped: list[tuple[int, float]] = []  # real time: (index, time) of frames dropped, the queue full
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._decode, name="video-decoder", daemon=True)
        self.thread.start()

    def _decode(self) -> None:
        start = None
        try:
            for index, frame in enumerate(self.container.decode(self.stream)):
                if self.stop.is_set():
                    break
                seconds = float(frame.time) if frame.time is not None else index / self.info.fps
                arrived = time.perf_counter()
                if self.realtime:  # the frame is due at start + seconds; a late one counts from then
                    start = arrived - seconds if start is None else start
                    if arrived > start + seconds + 1 / self.info.fps and not self.frames.empty():
                        self.skipped.append((index, seconds))  # late, and the model has a frame: not converted
                        continue
                    time.sleep(max(0.0, start + seconds - arrived))
                    arrived = min(time.perf_counter(), start + seconds)
                rgb = displayed(frame)
                pts = frame.pts if frame.pts is not None else round(seconds / self.info.time_base)
                item = Frame(index, seconds, pts, rgb, arrived)
                item.item = self.prepare(rgb)
                self._put(item)
        except Exception as error:  # a corrupt packet or a truncated file: the frames so far are kept
            self.error = " ".join(str(error).split())[:200] or type(error).__name__
        finally:
            self._put(None)

    def _put(self, item: Frame | None) -> None:
        """Queue ``item``; when the queue is full, wait, or in real time (a camera does not wait) drop the oldest
        waiting frame into ``skipped``."""
        while not self.stop.is_set():
            try:
                self.frames.put(item, block=not self.realtime, timeout=0.1)
                return
            except queue.Full:
                if self.realtime:
                    with contextlib.suppress(queue.Empty):
                        old = self.frames.get_nowait()
                        self.skipped.append((old.index, old.time))

    def __iter__(self) -> Iterator[Frame]:
        while (item := self.frames.get()) is not None:
            yield item

    def pending(self) -> list[Frame]:
        """The frames already decoded and waiting (for dropping in real time), without blocking; a ``None`` end
        marker is put back."""
        waiting = []
        while True:
            try:
                item = self.frames.get_nowait()
            except queue.Empty:
                return waiting
            if item is None:
                self.frames.put(None)
                return waiting
            waiting.append(item)

    def close(self) -> None:
        self.stop.set()
        self.thread.join()
        self.container.close()


def overlay_frame(rgb: np.ndarray, mask: np.ndarray, fill: float = 0.3) -> np.ndarray:
    """(H, W, 3) uint8 frame with the (H, W) bool mask's outline in green (about 1/360 of the height thick, the
    image edge closing it) and, ``fill`` > 0, a translucent green fill of that opacity. Only the mask's bounding
    box is computed: the fill through a 256-entry table per channel, the outline as the mask minus its erosion by
    4-neighbour steps on slices (no full-frame temporaries)."""
    out = rgb.copy()
    rows, columns = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return out
    box = np.s_[rows[0] : rows[-1] + 1, columns[0] : columns[-1] + 1]
    region, inside = out[box], mask[box]
    if fill > 0:
        table = blend_table(fill)
        for channel in range(3):
            values = region[..., channel]
            np.copyto(values, table[:, channel].take(values), where=inside)
    eroded = np.pad(inside, 1)
    for _ in range(max(1, rgb.shape[0] // 360)):
        eroded[1:-1, 1:-1] = (
            eroded[1:-1, 1:-1] & eroded[:-2, 1:-1] & eroded[2:, 1:-1] & eroded[1:-1, :-2] & eroded[1:-1, 2:]
        )
    region[inside & ~eroded[1:-1, 1:-1]] = OVERLAY_COLOUR.astype(np.uint8)
    return out


@functools.lru_cache(maxsize=8)
def blend_table(fill: float) -> np.ndarray:
    """(256, 3) uint8: each channel value v blended towards :data:`OVERLAY_COLOUR` with opacity ``fill``."""
    values = np.arange(256, dtype=np.float64)[:, None]
    return (values * (1 - fill) + OVERLAY_COLOUR * fill).astype(np.uint8)


class OverlayVideo:
    """An H.264 MP4 written to a hidden temporary file beside ``path`` and renamed onto ``path`` by :meth:`commit`
    (:meth:`discard` removes it), so a killed run never leaves a partial file under the final name.

    Frames keep their size (odd sizes are encoded 4:4:4) and timestamps (``pts`` in ``time_base``), so a variable
    frame rate or dropped frames play at their times.
    """

    def __init__(self, path: Path, fps: float, time_base: Fraction, size: tuple[int, int]) -> None:
        import av

        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp")
        os.close(fd)
        self.tmp = Path(tmp)
        self.container = av.open(str(self.tmp), "w", format="mp4")
        self.stream = self.container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        self.stream.height, self.stream.width = size
        self.stream.pix_fmt = "yuv420p" if size[0] % 2 == 0 and size[1] % 2 == 0 else "yuv444p"
        self.stream.time_base = time_base
        self.stream.codec_context.time_base = time_base
        self.stream.options = {"preset": "ultrafast", "crf": "23"}
        self.last_pts: int | None = None

    def write(self, rgb: np.ndarray, pts: int) -> None:
        import av

        if self.last_pts is not None and pts <= self.last_pts:
            pts = self.last_pts + 1  # a stream with repeated timestamps: keep them increasing
        self.last_pts = pts
        frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
        frame.pts, frame.time_base = pts, self.stream.codec_context.time_base
        self.container.mux(self.stream.encode(frame))

    def commit(self) -> None:
        self.container.mux(self.stream.encode(None))
        self.container.close()
        os.chmod(self.tmp, 0o644)
        os.replace(self.tmp, self.path)

    def discard(self) -> None:
        try:
            self.container.close()
        finally:
            self.tmp.unlink(missing_ok=True)


def variable_frame_rate(times: Sequence[float]) -> bool:
    """True when the frame intervals of ``times`` (s) differ from their median by more than :data:`VFR_TOLERANCE`."""
    intervals = np.diff(np.asarray(times, np.float64))
    if intervals.size < 2:
        return False
    median = float(np.median(intervals))
    return median > 0 and bool(np.any(np.abs(intervals - median) > VFR_TOLERANCE * median))
