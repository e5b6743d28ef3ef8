"""Video files through PyAV (FFmpeg): decoding frames in a worker thread (the displayed picture in YUV at its size,
rotation applied, and the model's input resized there by libswscale; memory bounded), and the overlay video's
encoder (atomic, x264 ``ultrafast``/``zerolatency``). :mod:`bundle.video.display` holds the pictures and their
drawing; :mod:`bundle.video.runner` runs the model on them; where the outputs go is :mod:`bundle.inference.outputs`'s.
"""

from __future__ import annotations

import contextlib
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

from .display import FrameScaler, Picture, display_picture, displayed, model_rgb, picture_format

VFR_TOLERANCE = 0.1  # frame intervals that differ from their median by more than 10% make a variable frame rate


class VideoError(Exception):
    """A video that cannot be segmented (no video stream, no frames, undecodable); the message is the report's."""


@dataclass
class Frame:
    """One decoded frame: its index, its time in seconds, ``pts`` in the stream's time base, ``picture`` (the
    :class:`~bundle.video.display.Picture` as displayed, rotation applied), ``arrived`` (``time.perf_counter()`` when
    it was decoded; in real time, when it was due) and ``item`` (the worker's ``prepare(rgb)``, e.g. the model
    input)."""

    index: int
    time: float
    pts: int
    picture: Picture
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


class FrameReader:
    """Decodes ``path`` in a worker thread into a bounded queue of :class:`Frame` (at most ``ahead`` frames wait, so
    memory stays bounded whatever the video's size and length), calling ``prepare(rgb)`` there too: ``rgb`` (h, w, 3)
    uint8 is the displayed frame resized to ``model_size`` (h, w) by libswscale from the decoded frame when it is
    larger along both axes (:func:`~bundle.video.display.model_rgb`), else the displayed frame at its size.

    ``realtime``: frames are released at their timestamps, as a camera would deliver them (the source's pace),
    and never wait: a frame decoded more than a frame interval late while the model still has one waiting, or the
    oldest waiting one when the queue is full, goes to ``skipped`` (not converted, or its image released).
    Iterating yields frames in order; a decoding error ends the frames and is kept in ``error`` (the frames before it
    are yielded).
    """

    def __init__(self, path: str | os.PathLike, prepare: Callable[[np.ndarray], object], ahead: int = 8,
                 realtime: bool = False, model_size: Sequence[int] | None = None) -> None:  # fmt: skip
        self.container, self.stream, self.info = open_video(path)
        self.prepare, self.realtime = prepare, realtime
        self.model_size = tuple(int(s) for s in model_size) if model_size else None
        self.scaler = FrameScaler()
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
                pts = frame.pts if frame.pts is not None else round(seconds / self.info.time_base)
                item = Frame(index, seconds, pts, display_picture(frame, self.scaler), arrived)
                small = model_rgb(frame, self.model_size, self.scaler) if self.model_size else None
                item.item = self.prepare(displayed(frame) if small is None else small)
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


class OverlayVideo:
    """An H.264 MP4 written to a hidden temporary file beside ``path`` and renamed onto ``path`` by :meth:`commit`
    (:meth:`discard` removes it), so a killed run never leaves a partial file under the final name.

    Frames keep their size (odd sizes are encoded 4:4:4) and timestamps (``pts`` in ``time_base``), so a variable
    frame rate or dropped frames play at their times. x264's fastest preset, tuned for low latency (no frame held
    back for look-ahead: each frame is encoded when it is written).
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
        self.stream.pix_fmt = picture_format(*size)
        self.stream.time_base = time_base
        self.stream.codec_context.time_base = time_base
        self.stream.options = {"preset": "ultrafast", "tune": "zerolatency", "crf": "23"}
        self.last_pts: int | None = None

    def write(self, picture: Picture, pts: int) -> None:
        """Encode ``picture`` (of the stream's size and :func:`~bundle.video.display.picture_format`) at ``pts``."""
        if self.last_pts is not None and pts <= self.last_pts:
            pts = self.last_pts + 1  # a stream with repeated timestamps: keep them increasing
        self.last_pts = pts
        frame = picture.video_frame()
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
