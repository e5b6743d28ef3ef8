"""The command line a generated doc names: relative to the repository root, never a path of the machine that ran it.

The programs that write docs (``scripts/benchmark.py``, ``scripts/compare_models.py``, ``scripts/quality_study.py``,
``scripts/check_monailabel.py --write-docs``, ``scripts/bench/*``) run from the repository root; an argument given
there as a relative path is kept as given. An absolute path (a whole argument, or the part after ``=``, ``,``, ``[``
or a quote, as in ``NAME=/data/x.csv`` or ``"['/a.pt','/b.pt']"``) becomes relative to the root: the repository's
own ``/srv/repo/docs/results/x`` is ``docs/results/x``, and data beside it, ``/srv/shared/data/kvasir-seg``, is
``../shared/data/kvasir-seg``.
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Sequence
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]

_ABSOLUTE = re.compile(r"(^|[=,'\"\[])(/[^\s,'\"\]]*)")  # an absolute path: at the start, or after = , [ or a quote


def relative_path(path: str | os.PathLike, root: str | os.PathLike = REPO_ROOT) -> str:
    """``path`` as a doc writes it: relative to ``root`` when absolute, else as given (already root-relative)."""
    text = os.fspath(path)
    return os.path.relpath(text, os.fspath(root)) if os.path.isabs(text) else text


def relative_word(word: str, root: str | os.PathLike = REPO_ROOT) -> str:
    """One command-line argument with every absolute path in it made relative to ``root``; other text unchanged."""
    return _ABSOLUTE.sub(lambda match: match.group(1) + relative_path(match.group(2), root), word)


def relative_command(program: Sequence[str], argv: Sequence[str], root: str | os.PathLike = REPO_ROOT) -> str:
    """The shell line ``program argv`` (e.g. ``["python", "scripts/benchmark.py"]`` and ``sys.argv[1:]``), quoted
    for a shell, with no absolute path: what a generated doc prints as its command."""
    return shlex.join([*program, *(relative_word(word, root) for word in argv)])
