"""``predictions.csv``, the report of folder inference: its columns and statuses, and :class:`PredictionReport`,
which only ever appends to it.

Guarantees: a row, once written, is never changed or removed; each row is flushed to disk as soon as its input is
done, so a killed run or a full disk leaves every row finished before it; a line cut short by a kill is dropped
when the next run opens the report. A path can have several rows (one per run that segmented it, e.g. with
``--overwrite true``): the last one is current.
"""

from __future__ import annotations

import csv
import logging
import os
import threading
from collections.abc import Mapping, Sequence
from io import StringIO
from pathlib import Path

from ..atomic_files import atomic_write_csv
from ..data.readers import EXIF_ORIENTATION, GREY_TO_COLOUR

logger = logging.getLogger(__name__)

REPORT_NAME = "predictions.csv"
REPORT_FIELDS: tuple[str, ...] = (
    "path",
    "status",
    "warning",
    "height",
    "width",
    "exif_orientation",
    "foreground_fraction",
    "components",
    "mean_foreground_probability",
    "qc_score",
    "needs_review",
    "frames",  # videos (bundle.video.runner): frames decoded, frames/s achieved, frames with a mask, frames dropped
    "fps",
    "frames_with_polyp",
    "dropped_frames",
    "mask",
)
OK, SKIPPED = "ok", "skipped: output exists"


def error_row(relative: str, reason: str) -> dict[str, object]:
    """The report row of an input that could not be segmented (logged as a warning)."""
    logger.warning("%s: %s", relative, reason)
    return {"path": relative, "status": f"error: {reason}"}


GREY_WARNING = "grey-scale input; the model was trained on colour images, check this mask"


def input_notes(image: object) -> dict[str, object]:
    """Report columns read from a decoded image's meta: ``exif_orientation`` and a ``warning`` for an input outside
    the training domain (a grey image given to a colour network)."""
    meta = getattr(image, "meta", {})
    return {
        "exif_orientation": meta.get(EXIF_ORIENTATION, ""),
        "warning": GREY_WARNING if bool(meta.get(GREY_TO_COLOUR, False)) else "",
    }


def csv_line(fields: Sequence[str], row: Mapping[str, object]) -> str:
    """One CSV line (with its newline) of ``row`` under ``fields``: missing values empty, extra keys ignored."""
    buffer = StringIO()
    csv.DictWriter(buffer, list(fields), restval="", extrasaction="ignore", lineterminator="\n").writerow(row)
    return buffer.getvalue()


class PredictionReport:
    """The append-only ``predictions.csv`` at ``path`` (module docstring); thread-safe.

    Opening it drops a line cut short by a kill and, when an older version of the bundle wrote other columns,
    rewrites it once (atomically) with the current columns first and the old extra ones after, keeping every value.
    """

    def __init__(self, path: str | os.PathLike, fields: Sequence[str] = REPORT_FIELDS) -> None:
        self.path, self.lock = Path(path), threading.Lock()
        self.rows: list[dict[str, str]] = []
        self.fields = list(fields)
        if self.path.exists():
            self._open_existing()

    def _open_existing(self) -> None:
        text = self.path.read_text(encoding="utf-8")
        if text and not text.endswith("\n"):  # the last row was cut short by a kill
            text = text[: text.rfind("\n") + 1]
            with open(self.path, "r+", encoding="utf-8") as stream:
                stream.truncate(len(text.encode("utf-8")))
        reader = csv.DictReader(StringIO(text))
        self.rows = [dict(row) for row in reader]
        old_fields = list(reader.fieldnames or [])
        if old_fields != self.fields:
            self.fields += [name for name in old_fields if name not in self.fields]
            if old_fields != self.fields:
                atomic_write_csv(self.path, self.fields, self.rows)

    def latest(self) -> dict[str, dict[str, str]]:
        """The current row of each path (its last one)."""
        return {row["path"]: row for row in self.rows}

    def append(self, row: Mapping[str, object]) -> None:
        """Append ``row`` and flush it to disk (OSError, e.g. a full disk, is raised to the caller)."""
        line = csv_line(self.fields, row)
        with self.lock:
            new = not self.path.exists()
            if new:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a", encoding="utf-8", newline="") as stream:
                stream.write((csv_line(self.fields, dict(zip(self.fields, self.fields))) if new else "") + line)
                stream.flush()
            self.rows.append({name: "" if row.get(name) is None else str(row[name]) for name in self.fields})
