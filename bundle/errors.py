"""Errors a user can cause (a missing or broken checkpoint, an unwritable output folder, an invalid dataset) and
how the bundle's command line shows them: one line naming the file or id and the fix, no traceback.

Under ``python -m monai.bundle run`` (or torchrun of it) importing :mod:`bundle` installs
:func:`one_line_excepthook`: an uncaught exception whose chain holds a :class:`BundleError` prints
``error: <its message>`` (Python still exits with status 1). ``--debug true`` on the command line, or the environment variable
``LH_UTANET_DEBUG=1``, keeps Python's full traceback. Other programs (MONAI Label, tests, notebooks) are untouched.
The scripts (``scripts/*.py``, ``python -m scripts.bench.*``) end the same way through :func:`run_script`.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from types import TracebackType

DEBUG_ENV = "LH_UTANET_DEBUG"
TRUE_WORDS, FALSE_WORDS = ("1", "true", "yes"), ("0", "false", "no")
# OSErrors about the user's own paths: a script names the file in one line
PATH_ERRORS = (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError, FileExistsError)


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
    """True when ``--debug true`` (a script's bare ``--debug`` too) is on the command line or ``LH_UTANET_DEBUG`` is
    set to 1/true."""
    argv = sys.argv if argv is None else argv
    if os.environ.get(DEBUG_ENV, "").strip().lower() in TRUE_WORDS:
        return True
    for index, word in enumerate(argv):
        value = word.split("=", 1)[1] if word.startswith("--debug=") else None
        if word == "--debug":  # followed by its value, or bare (a script's flag)
            following = argv[index + 1].strip().lower() if index + 1 < len(argv) else ""
            value = following if following in TRUE_WORDS + FALSE_WORDS else "true"
        if value is not None and value.strip().lower() in TRUE_WORDS:
            return True
    return False


def without_debug_flag(argv: Sequence[str]) -> list[str]:
    """``argv`` without ``--debug``, ``--debug=VALUE`` and ``--debug true|false|1|0|yes|no``."""
    kept, skip = [], False
    for index, word in enumerate(argv):
        if skip:
            skip = False
        elif word == "--debug":
            skip = index + 1 < len(argv) and argv[index + 1].strip().lower() in TRUE_WORDS + FALSE_WORDS
        elif not word.startswith("--debug="):
            kept.append(word)
    return kept


def user_error(error: BaseException | None) -> BaseException | None:
    """The error a user can fix in ``error``'s chain: a :class:`BundleError`, else an OSError about a path (missing,
    a folder where a file belongs, no permission); None for anything else (a bug, whose traceback is wanted)."""
    cause = bundle_error_in_chain(error)
    seen: set[int] = set()
    while cause is None and error is not None and id(error) not in seen:
        if isinstance(error, PATH_ERRORS) and error.filename:
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return cause


def error_lines(error: BaseException) -> list[str]:
    """The lines that show a user's ``error``: a listing it carries (e.g. the files a dataset check found), then one
    ``error: ...`` line."""
    if isinstance(error, OSError) and not isinstance(error, BundleError) and error.filename:
        return [f"error: {error.strerror or type(error).__name__}: {error.filename}"]
    *details, last = str(error).splitlines() or [type(error).__name__]
    return [*details, last if last.startswith("error: ") else f"error: {last}"]


def run_script(main: Callable[[list[str]], object], argv: Sequence[str] | None = None) -> int:
    """Run a script's ``main(argv)`` (``argv`` None: ``sys.argv[1:]``) and return its exit status.

    As the bundle's commands: an error a user can fix (:func:`user_error`) ends in one ``error: ...`` line and
    status 1; ``--debug true`` (taken out of ``argv`` before ``main`` sees it) or ``LH_UTANET_DEBUG=1`` keeps
    Python's traceback, also in the commands the script starts. ``main`` returns the status (None or a non-int: 0).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = debug_requested(["", *argv])
    if debug:
        os.environ[DEBUG_ENV] = "1"
    try:
        status = main(without_debug_flag(argv))
    except Exception as error:
        cause = None if debug else user_error(error)
        if cause is None:
            raise
        print("\n".join(error_lines(cause)), file=sys.stderr, flush=True)
        return 1
    return status if isinstance(status, int) else 0


def one_line_excepthook(
    kind: type[BaseException], error: BaseException, traceback: TracebackType | None, fallback=sys.__excepthook__
) -> None:
    """``sys.excepthook``: one ``error: ...`` line and exit status 1 for a :class:`BundleError`, else ``fallback``."""
    cause = bundle_error_in_chain(error)
    if cause is None or debug_requested():
        fallback(kind, error, traceback)
        return
    print("\n".join(error_lines(cause)), file=sys.stderr, flush=True)


def running_bundle_cli(argv: list[str] | None = None) -> bool:
    """True in a ``python -m monai.bundle`` process (also under torchrun)."""
    argv = sys.argv if argv is None else argv
    return bool(argv) and os.path.normpath(argv[0]).endswith(os.path.join("monai", "bundle", "__main__.py"))


def install_cli_error_hook() -> None:
    """Install :func:`one_line_excepthook` when this process is the bundle command line (module docstring)."""
    if running_bundle_cli() and sys.excepthook is sys.__excepthook__:
        sys.excepthook = one_line_excepthook
