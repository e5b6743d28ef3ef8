"""The cache folder of ``backend auto``'s ONNX exports: where it is, its lock, and content verification.

Each export ``X.onnx`` has its sha256 in ``X.onnx.sha256``, written after the file is complete; a file whose content
does not match it (truncated, overwritten, or its record missing) is not used. Exports run under an exclusive lock
on the folder, so concurrent runs export once, and the temporary files of an export that was killed are removed.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path

from ..atomic_files import atomic_write_text, sha256_of

logger = logging.getLogger(__name__)

LOCK_NAME = ".lock"

try:
    import fcntl
except ImportError:  # Windows: no lock, exports may then run twice (each one is still atomic)
    fcntl = None


def default_onnx_cache() -> Path:
    """``$XDG_CACHE_HOME/lh_utanet/onnx`` (``~/.cache/lh_utanet/onnx``): where ``backend auto`` keeps its exports."""
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "lh_utanet" / "onnx"


def sha256_record(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


@contextlib.contextmanager
def locked(cache_dir: str | os.PathLike) -> Iterator[None]:
    """Hold the exclusive lock of ``cache_dir`` (created if needed); on entry remove stale temporary files."""
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    with open(cache_dir / LOCK_NAME, "a") as lock:
        if fcntl is not None:
            fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            for stale in cache_dir.glob(".*"):  # temporaries of killed exports: no other export runs now
                if stale.name != LOCK_NAME and stale.is_file():
                    stale.unlink(missing_ok=True)
            yield
        finally:
            if fcntl is not None:
                fcntl.flock(lock, fcntl.LOCK_UN)


def is_verified(path: Path) -> bool:
    """True when ``path`` exists and its content matches its sha256 record; a damaged entry is removed with one
    warning line."""
    if not path.is_file():
        return False
    record = sha256_record(path)
    expected = record.read_text(encoding="utf-8").strip() if record.is_file() else ""
    if expected and sha256_of(path) == expected:
        return True
    logger.warning("backend auto: the cached ONNX export %s is damaged (sha256 mismatch); exporting it again.", path)
    path.unlink(missing_ok=True)
    record.unlink(missing_ok=True)
    return False


def record_sha256(path: Path) -> None:
    """Write ``path``'s sha256 record (after ``path`` itself is complete and in place)."""
    atomic_write_text(sha256_record(path), sha256_of(path) + "\n")
