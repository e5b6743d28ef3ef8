"""Errors a user can cause (a missing or broken checkpoint, an unwritable output folder, an invalid dataset) and
how the bundle's command line shows them: one line naming the file or id and the fix, no traceback.

Under ``python -m monai.bundle run`` (or torchrun of it) importing :mod:`bundle` installs
:func:`one_line_excepthook`: an uncaught exception whose chain holds a :class:`BundleError` prints
``error: <its message>`` (Python still exits with status 1). ``--debug true`` on the command line, or the environment variable
``LH_UTANET_DEBUG=1``, keeps Python's full traceback. Other programs (MONAI Label, tests, notebooks) are untouched.
"""

from __future__ import annotations

import os
import sys
from types import TracebackType

DEBUG_ENV = "LH_UTANET_DEBUG"


class BundleError(Exception):
    """An error the user can fix; its message (or, after a listing, its last line) names the file or id and the fix."""


class CheckpointError(BundleError, ValueError):
    """A checkpoint is truncated, corrupt, not a checkpoint, or does not fit the requested network."""


class MissingFileError(BundleError, FileNotFoundError):
    """A checkpoint, exported model, dataset folder or listed file does not exist."""


class DatasetError(BundleError, ValueError):
    """``dataset_dir`` is missing, empty or invalid."""


class SettingError(BundleError, ValueError):
    """An id has a value it cannot take (e.g. ``--overwrite maybe``, ``--tta sideways``)."""


class OutputError(BundleError, OSError):
    """The output folder cannot be created or written, or has too little free space."""


def bundle_error_in_chain(error: BaseException | None) -> BundleError | None:
    """The first :class:`BundleError` in ``error``'s chain of causes and contexts (MONAI's config parser wraps
    errors in RuntimeErrors), or None."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, BundleError):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


def debug_requested(argv: list[str] | None = None) -> bool:
    """True when ``--debug true`` is on the command line or ``LH_UTANET_DEBUG`` is set to 1/true."""
    argv = sys.argv if argv is None else argv
    if os.environ.get(DEBUG_ENV, "").strip().lower() in ("1", "true", "yes"):
        return True
    for index, word in enumerate(argv):
        value = word.split("=", 1)[1] if word.startswith("--debug=") else None
        if word == "--debug" and index + 1 < len(argv):
            value = argv[index + 1]
        if value is not None and value.strip().lower() in ("1", "true"):
            return True
    return False


def one_line_excepthook(
    kind: type[BaseException], error: BaseException, traceback: TracebackType | None, fallback=sys.__excepthook__
) -> None:
    """``sys.excepthook``: one ``error: ...`` line and exit status 1 for a :class:`BundleError`, else ``fallback``."""
    cause = bundle_error_in_chain(error)
    if cause is None or debug_requested():
        fallback(kind, error, traceback)
        return
    *details, last = str(cause).splitlines() or [type(cause).__name__]
    for line in details:  # a listing (e.g. the files a dataset check found) before the one-line summary
        print(line, file=sys.stderr)
    print(last if last.startswith("error: ") else f"error: {last}", file=sys.stderr, flush=True)


def running_bundle_cli(argv: list[str] | None = None) -> bool:
    """True in a ``python -m monai.bundle`` process (also under torchrun)."""
    argv = sys.argv if argv is None else argv
    return bool(argv) and os.path.normpath(argv[0]).endswith(os.path.join("monai", "bundle", "__main__.py"))


def install_cli_error_hook() -> None:
    """Install :func:`one_line_excepthook` when this process is the bundle command line (module docstring)."""
    if running_bundle_cli() and sys.excepthook is sys.__excepthook__:
        sys.excepthook = one_line_excepthook
