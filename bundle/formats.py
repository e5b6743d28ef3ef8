"""Image file formats the bundle reads, by suffix, and one-line reasons for files it cannot read."""

from __future__ import annotations

IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".nii", ".nii.gz")
JPEG_SUFFIXES: tuple[str, ...] = (".jpg", ".jpeg")
TIFF_SUFFIXES: tuple[str, ...] = (".tif", ".tiff")
NIFTI_SUFFIXES: tuple[str, ...] = (".nii", ".nii.gz")
VIDEO_SUFFIXES: tuple[str, ...] = (".mp4", ".avi", ".mov", ".mkv", ".webm")


def split_suffix(name: str) -> tuple[str, str]:
    """Split a file name into ``(stem, lower-case image suffix)``; ``.nii.gz`` counts as one suffix.

    The suffix is "" for a name without a supported image suffix.
    """
    lower = name.lower()
    for suffix in IMAGE_SUFFIXES:
        if lower.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)], suffix
    return name, ""


def is_nifti(name: str) -> bool:
    return split_suffix(name)[1] in NIFTI_SUFFIXES


def error_reason(error: BaseException) -> str:
    """First sentence of the innermost exception (MONAI wraps decoder errors in RuntimeErrors), on one line."""
    while error.__cause__ is not None:
        error = error.__cause__
    message = " ".join(str(error).split()).split(". ")[0] or type(error).__name__
    return message[:200]


def is_video(name: str) -> bool:
    """True for a video file name (:data:`VIDEO_SUFFIXES`, any case)."""
    return name.lower().endswith(VIDEO_SUFFIXES)
