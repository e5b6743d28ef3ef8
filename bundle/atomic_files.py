"""Atomic file output: every file the bundle writes appears whole or not at all (text, JSON, CSV, PNG, .npy, NIfTI
masks), and the sha256 of a file."""

from __future__ import annotations

import csv
import gzip
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from io import StringIO
from pathlib import Path

import nibabel as nib
import numpy as np
from PIL import Image

from .errors import OutputError


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp)`` on a hidden temp file beside ``path``, then ``os.replace`` it onto ``path``.

    A crash or kill leaves either the old file or the new one, never a partial file; the temp file is
    removed when ``write`` raises.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def atomic_write_json(path: str | os.PathLike, data: object) -> None:
    """Write ``data`` as indented JSON to ``path`` atomically."""
    atomic_write_text(path, json.dumps(data, indent=4) + "\n")


def atomic_write_csv(path: str | os.PathLike, fieldnames: Sequence[str], rows: Iterable[Mapping[str, object]]) -> None:
    """Write ``rows`` as CSV with the header ``fieldnames`` (missing values empty, extra keys ignored), atomically."""
    buffer = StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(fieldnames), restval="", extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue())


def write_png(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write an (H, W) or (H, W, 3) uint8/uint16 array as PNG, atomically (rows stay rows).

    zlib level 1: lossless like the default 6, several times faster on masks, files a little larger.
    """
    atomic_write(path, lambda tmp: Image.fromarray(array).save(tmp, format="PNG", compress_level=1))


def write_npy(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write ``array`` as .npy, atomically."""

    def save(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.save(f, array)

    atomic_write(path, save)


def write_nifti_mask(path: str | os.PathLike, mask: np.ndarray, reference: str | os.PathLike) -> None:
    """Write an (X, Y) uint8 mask as gzipped NIfTI with ``reference``'s shape, affine and header, atomically."""
    image = nib.load(str(reference))
    header = image.header.copy()
    header.set_data_dtype(np.uint8)
    header.set_slope_inter(1, 0)
    out = nib.Nifti1Image(mask.reshape(image.shape[:3]), image.affine, header)
    atomic_write(path, lambda tmp: tmp.write_bytes(gzip.compress(out.to_bytes())))


def sha256_of(path: str | Path) -> str:
    """Hex sha256 of the file at ``path``, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def check_output_dir(path: str | os.PathLike, needed_bytes: int = 0, option: str = "--output_dir") -> None:
    """Fail before any work unless folder ``path`` can be created and written (a probe file is created and removed)
    and its file system has ``needed_bytes`` free; OutputError names the folder and the fix (another ``option``)."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=path, prefix=".write-probe.")
        os.close(fd)
        os.unlink(probe)
    except OSError as error:
        reason = error.strerror or type(error).__name__
        raise OutputError(f"cannot write to the output folder {path} ({reason}); choose another {option}.") from error
    free = shutil.disk_usage(path).free
    if free < needed_bytes:
        raise OutputError(
            f"the output folder {path} has {free / 2**20:.1f} MiB free, the outputs need about "
            f"{needed_bytes / 2**20:.1f} MiB; free some space or choose another {option}."
        )
