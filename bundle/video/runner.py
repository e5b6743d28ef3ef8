"""Video inference for ``configs/inference.json``: each video under ``dataset_dir`` runs, frame by frame, through the
image path's transforms, backend, inferer and mask post-processing, with optional temporal smoothing, and gives
``NAME.overlay.mp4``, ``NAME.frames.csv``, optionally the masks in ``NAME/``, and one row of ``predictions.csv``.

Per frame: decode (worker thread, :class:`~bundle.video.io.FrameReader`: the displayed picture in YUV, and the frame
resized to ``decode_size`` by libswscale) -> ``frame_transform`` (the config's channel, resize and normalisation
transforms, (3, h, w) model input) -> batches of ``batch_size`` through ``inferer`` and ``predictor`` -> EMA of the
probabilities (``temporal_smoothing``) -> (writer thread) logits resized back to (H, W) bilinearly over the mask's box,
threshold and ``mask_options`` (as ``Invertd`` + ``Activationsd`` + ``BinaryMaskd``) -> overlay, PNG and row.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from ignite.engine import Engine, Events
from monai.data import MetaTensor

from ..atomic_files import atomic_write_csv, write_png
from ..config import flag
from ..errors import SettingError
from ..formats import error_reason
from ..inference.folder import FolderPlan, InputPlan
from ..inference.postprocessing import postprocess_mask
from ..inference.quality import qc_score, quality_features
from ..inference.report import OK, error_row
from ..inference.tta import TTAInferer, logits_of, probabilities
from .display import DisplayMask, display_mask, draw_mask, picture_colour
from .io import Frame, FrameReader, OverlayVideo, VideoError, variable_frame_rate

logger = logging.getLogger(__name__)

FRAME_FIELDS: tuple[str, ...] = ("frame", "time_s", "dropped", "polyp", "area_fraction", "qc_score", "latency_ms")


def dropped_row(index: int, seconds: float) -> dict[str, object]:
    """The ``NAME.frames.csv`` row of a frame dropped in real time."""
    return {"frame": index, "time_s": f"{seconds:.6f}", "dropped": 1}


def smoothing_strength(value: float | str) -> float:
    """``temporal_smoothing`` as a float in [0, 1): the weight of the previous frames' (smoothed) probabilities."""
    strength = float(value)
    if not 0 <= strength < 1:
        raise SettingError(f"temporal_smoothing must be in [0, 1) (0 = off), got {value!r}.")
    return strength


class VideoRunner:
    """Ignite handler of the folder evaluator: on ``STARTED`` it segments the videos of ``plan`` (``plan.videos``)
    and records their rows through ``writer`` (:class:`~bundle.inference.writers.FolderWriter`); the images follow as before.

    Args:
        plan: the run's :class:`~bundle.inference.folder.FolderPlan`.
        writer: the run's ``FolderWriter`` (its ``record(index, row)`` appends the video's row).
        predictor: the backend module, (B, 3, h, w) -> (B, 1, h, w) logits.
        inferer: the config's inferer (``TTAInferer``).
        frame_transform: ``{"image": (3, H, W) uint8 MetaTensor}`` -> ``{"image": (3, h, w) float}`` model input.
        mask_options: ``postprocess_mask`` options (the config's ``BinaryMaskd``).
        temporal_smoothing: EMA weight of the earlier frames' probabilities in [0, 1); 0 = off.
        realtime: frames arrive at the source's pace; the model takes the newest, older waiting ones are dropped;
            no TTA.
        batch_size: frames per model call (1 in real time).
        overlay_fill: opacity of the mask's fill in the overlay (0: outline only).
        device: where the model input goes; ``amp``: autocast there.
        decode_size: (h, w) that ``frame_transform`` resizes frames to (the model's input size): frames larger
            along both axes are decoded at it by libswscale (anti-aliased bilinear) in the decoding thread, so the
            transforms have no resizing left; None: frames reach ``frame_transform`` at their size.
    """

    def __init__(
        self,
        plan: FolderPlan,
        writer: object,
        predictor: Callable[[torch.Tensor], torch.Tensor],
        inferer: Callable[..., torch.Tensor],
        frame_transform: Callable[[dict], dict],
        mask_options: dict,
        temporal_smoothing: float | str = 0.0,
        realtime: bool | str = False,
        batch_size: int = 8,
        overlay_fill: float = 0.3,
        device: torch.device | str = "cpu",
        amp: bool = False,
        decode_size: Sequence[int] | None = None,
    ) -> None:
        self.plan, self.writer, self.predictor = plan, writer, predictor
        self.realtime = flag(realtime, "realtime")
        self.inferer = TTAInferer("none") if self.realtime else inferer  # real time: one pass per frame
        self.frame_transform, self.mask_options = frame_transform, dict(mask_options)
        self.smoothing = smoothing_strength(temporal_smoothing)
        self.batch_size = 1 if self.realtime else max(1, int(batch_size))
        self.overlay_fill, self.device, self.amp = float(overlay_fill), torch.device(device), bool(amp)
        self.decode_size = tuple(int(s) for s in decode_size) if decode_size else None

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self.run)

    def run(self, engine: Engine | None = None) -> None:
        """Segment every planned video; a video that fails costs only its own row."""
        for index in self.plan.videos:
            plan = self.plan.inputs[index]
            try:
                row = self.segment(plan)
            except (VideoError, OSError, RuntimeError, ValueError) as error:
                row = error_row(plan.relative, error_reason(error))
            self.writer.record(index, row)

    def prepare(self, rgb: np.ndarray) -> torch.Tensor:
        """(h, w, 3) uint8 frame (at ``decode_size`` or its own) -> (3, h, w) model input (decoding thread)."""
        image = MetaTensor(torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1))))
        return torch.as_tensor(self.frame_transform({"image": image})["image"]).as_subclass(torch.Tensor)

    def batches(self, reader: FrameReader, dropped: dict[int, dict]):
        """Lists of frames for the model: ``batch_size`` in order, or in real time the newest (the rows of the older
        ones, dropped, go to ``dropped``)."""
        batch: list[Frame] = []
        for frame in reader:
            if self.realtime:
                waiting = reader.pending()
                for old in [frame, *waiting[:-1]] if waiting else []:
                    dropped[old.index] = dropped_row(old.index, old.time)
                yield [waiting[-1] if waiting else frame]
                continue
            batch.append(frame)
            if len(batch) == self.batch_size:
                yield batch
                batch = []
        if batch:
            yield batch

    def low_res_probabilities(self, frames: list[Frame]) -> tuple[torch.Tensor, list[float | None]]:
        """(B, 1, h, w) probabilities of a batch and each frame's TTA spread (None without TTA)."""
        inputs = torch.stack([frame.item for frame in frames]).to(self.device)
        for frame in frames:
            frame.item = None  # memory: only the frame and its mask wait for the writer
        with torch.inference_mode(), torch.autocast(self.device.type, enabled=self.amp):
            logits = self.inferer(inputs, self.predictor)
        logits = logits.as_tensor() if isinstance(logits, MetaTensor) else logits
        spread = getattr(self.inferer, "member_spread", None)
        spreads = [float(s) for s in spread] if spread is not None else [None] * len(frames)
        return logits.float(), spreads

    def smooth(self, logits: torch.Tensor, previous: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``temporal_smoothing``: (B, 1, h, w) logits of the EMA of the probabilities, frame after frame, starting
        from ``previous`` (the last frame's (1, h, w) average, None at the first frame); and the new last one."""
        if not self.smoothing:
            return logits, previous
        smoothed = []
        for probs in probabilities(logits):
            previous = probs if previous is None else self.smoothing * previous + (1 - self.smoothing) * probs
            smoothed.append(previous)
        return logits_of(torch.stack(smoothed)), previous

    def segment(self, plan: InputPlan) -> dict[str, object]:
        """Segment one video; its outputs appear under their final names only when it is done."""
        reader = FrameReader(plan.source, self.prepare, self.batch_size, self.realtime, self.decode_size)
        outputs = StagedOutputs(plan, reader.info)
        pool, pending = ThreadPoolExecutor(1, thread_name_prefix="video-writer"), []
        rows: dict[int, dict[str, object]] = {}
        dropped: dict[int, dict] = {}
        previous, start = None, time.perf_counter()
        try:
            for frames in self.batches(reader, dropped):
                logits, spreads = self.low_res_probabilities(frames)
                logits, previous = self.smooth(logits, previous)
                logits = logits.cpu()[:, 0]
                for frame, logit, small, spread in zip(frames, logits.numpy(), torch.sigmoid(logits).numpy(), spreads):
                    pending.append(pool.submit(self.finish_frame, frame, logit, (small, spread), outputs, rows))
                while len(pending) > self.batch_size:  # memory: a batch waits for the writer, at most
                    pending.pop(0).result()
            for future in pending:
                future.result()
            rows.update(dropped)
            rows.update({index: dropped_row(index, seconds) for index, seconds in reader.skipped})
            if not rows:
                raise VideoError(f"no frames decoded{': ' + reader.error if reader.error else ''}")
            seconds = time.perf_counter() - start
            ordered = [rows[index] for index in sorted(rows)]
            outputs.commit(ordered)
        except BaseException:
            pool.shutdown(cancel_futures=True)  # the writer thread is done with the files before they go
            outputs.discard()
            raise
        finally:
            pool.shutdown()
            reader.close()
        return self.report_row(plan, reader, ordered, seconds, outputs)

    def finish_frame(self, frame: Frame, logits: np.ndarray, low: tuple, outputs: StagedOutputs, rows: dict) -> None:
        """Writer thread: the display-size mask of the (h, w) ``logits`` (:func:`~bundle.video.display.display_mask`
        and ``mask_options``), drawn on the frame's picture (the overlay frame), optional PNG and the frame's row.
        ``low``: the (h, w) probabilities and the TTA spread, for ``qc_score``."""
        options = dict(self.mask_options)
        mask = display_mask(logits, frame.picture.shape, options.pop("threshold", 0.5)).cleaned(**options)
        draw_mask(frame.picture.planes(), picture_colour(frame.picture.format), mask, self.overlay_fill)
        latency = time.perf_counter() - frame.arrived  # the overlay is ready to show; encoding it records it
        outputs.write(frame, mask)
        rows[frame.index] = {
            "frame": frame.index,
            "time_s": f"{frame.time:.6f}",
            "dropped": 0,
            "polyp": int(mask.any()),
            "area_fraction": f"{mask.area_fraction():.6f}",
            "qc_score": frame_quality(*low, self.mask_options),
            "latency_ms": f"{latency * 1000:.2f}",
        }

    def report_row(self, plan: InputPlan, reader: FrameReader, rows: list[dict], seconds: float, outputs) -> dict:
        """The video's row of ``predictions.csv``."""
        done = [row for row in rows if not row["dropped"]]
        warnings = []
        if reader.error:
            warnings.append(f"decoding stopped after {len(rows)} frames: {reader.error}")
        elif reader.info.frames > len(rows):
            warnings.append(f"{len(rows)} of the {reader.info.frames} frames the header announces (truncated?)")
        elif reader.info.duration > float(rows[-1]["time_s"]) + 2 / reader.info.fps:
            last, duration = float(rows[-1]["time_s"]), reader.info.duration
            warnings.append(f"frames up to {last:.2f} s of the {duration:.2f} s the header announces (truncated?)")
        if variable_frame_rate([float(row["time_s"]) for row in rows]):
            warnings.append("variable frame rate: the overlay keeps each frame's timestamp")
        if len(done) < len(rows):
            warnings.append(f"real time: {len(rows) - len(done)} frames dropped to keep up")
        if outputs.renamed:
            warnings.append(f"shares its name with another input: outputs named {outputs.csv.name}")
        return {
            "path": plan.relative,
            "status": OK,
            "warning": "; ".join(warnings),
            "height": outputs.size[0],
            "width": outputs.size[1],
            "frames": len(rows),
            "fps": f"{len(done) / max(seconds, 1e-9):.2f}",
            "frames_with_polyp": sum(int(row["polyp"]) for row in done),
            "dropped_frames": len(rows) - len(done),
            "foreground_fraction": f"{np.mean([float(row['area_fraction']) for row in done]):.6f}",
            "mask": self.plan.relative(outputs.csv),
        }


def frame_quality(probabilities: np.ndarray, spread: float | None, mask_options: dict) -> str:
    """``qc_score`` (:mod:`bundle.inference.quality`) of a frame from its (h, w) probabilities at the model's input size, as
    for images (:class:`bundle.inference.quality.QualityScored`)."""
    mask = postprocess_mask(probabilities, **mask_options)
    return f"{qc_score(quality_features(probabilities, mask, spread)):.6f}"


class StagedOutputs:
    """A video's outputs under temporary names (overlay video, frame masks in a hidden ``.partial`` folder) until
    :meth:`commit` writes the per-frame CSV and renames them all into place."""

    def __init__(self, plan: InputPlan, info) -> None:
        self.csv, self.info = plan.outputs["mask"], info
        self.overlay_path, self.frames_dir = plan.outputs["overlay"], plan.outputs.get("frames")
        self.renamed = self.csv.name.split(".")[0] != plan.source.name.split(".")[0]
        self.overlay: OverlayVideo | None = None
        self.size: tuple[int, int] = (0, 0)
        self.partial: Path | None = None
        if self.frames_dir is not None:
            self.frames_dir.parent.mkdir(parents=True, exist_ok=True)
            name = f".{self.frames_dir.name}."
            self.partial = Path(tempfile.mkdtemp(prefix=name, suffix=".partial", dir=self.frames_dir.parent))
            os.chmod(self.partial, 0o755)  # mkdtemp's 0700 would stay on the final folder

    def write(self, frame: Frame, mask: DisplayMask) -> None:
        """Encode the frame's picture (the overlay drawn on it) and write its mask's PNG."""
        if self.overlay is None:
            self.size = frame.picture.shape
            self.overlay = OverlayVideo(self.overlay_path, self.info.fps, self.info.time_base, self.size)
        self.overlay.write(frame.picture, frame.pts)
        if self.partial is not None:
            write_png(self.partial / f"{frame.index:06d}_mask.png", mask.full().astype(np.uint8) * 255)

    def commit(self, rows: list[dict]) -> None:
        if self.overlay is None:
            raise VideoError("no frame could be segmented")
        self.overlay.commit()
        if self.partial is not None:
            if self.frames_dir.exists():  # --overwrite true
                shutil.rmtree(self.frames_dir)
            os.replace(self.partial, self.frames_dir)
        atomic_write_csv(self.csv, FRAME_FIELDS, rows)

    def discard(self) -> None:
        if self.overlay is not None:
            self.overlay.discard()
        if self.partial is not None:
            shutil.rmtree(self.partial, ignore_errors=True)
