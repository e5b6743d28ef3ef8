"""Where a folder run's outputs go and what counts as one: mask, probability and overlay names beside each
input's mirrored path, a video's overlay, per-frame report and frame folder, and the leftovers of a killed run."""

from __future__ import annotations

import shutil
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from ..formats import is_video, split_suffix
from .report import REPORT_NAME
from .review_page import PAGE_NAME

VIDEO_OUTPUT_SUFFIXES: tuple[str, ...] = (".overlay.mp4", ".frames.csv")
OUTPUT_SUFFIXES = ("_mask.png", "_mask.nii.gz", "_prob.npy", "_overlay.png", *VIDEO_OUTPUT_SUFFIXES)


def without_earlier_outputs(files: Sequence[Path]) -> list[Path]:
    """``files`` less the outputs an earlier run wrote beside its inputs (``a_mask.png`` next to ``a.jpg``;
    ``a.overlay.mp4``, ``a.frames.csv`` and the frame masks ``a/000000_mask.png`` next to ``a.mp4``)."""
    videos = {path.parent / path.name.rsplit(".", 1)[0] for path in files if is_video(path.name)}
    stems = {path.parent / split_suffix(path.name)[0] for path in files} | videos
    return [
        path
        for path in files
        if path.name not in (REPORT_NAME, PAGE_NAME)
        and not (path.parent in videos and path.name[:6].isdigit() and path.name.endswith("_mask.png"))
        and not any(
            path.name.endswith(end) and path.parent / path.name[: -len(end)] in stems for end in OUTPUT_SUFFIXES
        )
    ]


def output_bases(files: Sequence[Path], root: Path) -> dict[Path, Path]:
    """Output path stem, relative to ``root``, of each supported image: ``sub/a`` for ``sub/a.png``.

    When several images in one folder share a stem (``a.png``, ``a.jpg``), each gets its extension:
    ``sub/a_png``, ``sub/a_jpg``. Files with unsupported extensions get no entry.
    """
    groups: dict[tuple[Path, str], list[Path]] = defaultdict(list)
    for path in files:
        stem, suffix = split_suffix(path.name)
        if suffix:
            groups[(path.parent, stem)].append(path)
    bases = {}
    for (folder, stem), group in groups.items():
        for path in group:
            extension = path.name[len(stem) + 1 :].replace(".", "_")
            name = f"{stem}_{extension}" if len(group) > 1 else stem
            bases[path] = (folder / name).relative_to(root)
    return bases


def video_outputs(path: Path, base: Path, neighbours: Sequence[Path], save_frames: bool) -> dict[str, Path]:
    """Outputs of video ``path`` beside ``base`` (its output path without suffix): ``mask`` (the per-frame report
    ``<base>.frames.csv``), ``overlay`` (``<base>.overlay.mp4``) and, with ``save_frames``, ``frames`` (the folder
    ``<base>/``). When another file in its folder (``neighbours``) has the same stem (``a.mp4`` and ``a.png``), the
    base gets the extension, ``a_mp4``, as images of one stem do."""
    stem, extension = path.name.rsplit(".", 1)
    if any(other != path and other.parent == path.parent and other.name.split(".")[0] == stem for other in neighbours):
        base = base.with_name(f"{stem}_{extension.lower()}")
    outputs = {"mask": base.with_name(base.name + ".frames.csv"), "overlay": base.with_name(base.name + ".overlay.mp4")}
    if save_frames:
        outputs["frames"] = base
    return outputs


def remove_stale_temporaries(output_dir: Path) -> None:
    """Remove the hidden temporary files (``.<name>.<random>.tmp``) that a killed run left beside its outputs."""
    for path in output_dir.rglob(".*.tmp"):
        name = path.name[1:].rsplit(".", 2)[0]
        if name == REPORT_NAME or name.endswith(OUTPUT_SUFFIXES):
            path.unlink(missing_ok=True)


def remove_partial_folders(output_dir: Path) -> None:
    """Remove the hidden ``.<name>.<random>.partial`` frame-mask folders that a killed run left."""
    for path in Path(output_dir).rglob(".*.partial"):
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
