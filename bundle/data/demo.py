"""The synthetic demo set: deterministic polyp-like RGB images and masks, generated without downloads."""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from ..atomic_files import atomic_write, atomic_write_json
from .splits import format_files

DEMO_GENERATOR_VERSION = 1
DEMO_MANIFEST = "DEMO_MANIFEST.json"
_DEMO_NAME = re.compile(r"demo_\d{4,}\.png")


def _smooth_noise(rng: np.random.Generator, size: int, cells: int, channels: int) -> np.ndarray:
    """Unit-variance smooth float32 noise of shape ``(channels, size, size)``: a ``cells``-grid, cubic-upsampled."""
    grid = rng.standard_normal((channels, cells, cells), dtype=np.float32)
    # cubic spline zoom is linear and separable: one (size, cells) matrix applied to both axes; plain einsum
    # (no BLAS) because multi-threaded BLAS on these tiny products is slow on a busy machine
    upsample = ndimage.zoom(np.eye(cells, dtype=np.float32), (size / cells, 1), order=3, mode="mirror")
    noise = np.einsum("cyj,xj->cyx", np.einsum("yi,cij->cyj", upsample, grid), upsample)
    return noise / (noise.std(axis=(1, 2), keepdims=True) + 1e-6)


def _add_blob(rng: np.random.Generator, area: float, alpha: np.ndarray, dome: np.ndarray) -> None:
    """Draw one smooth-perturbed ellipse covering about ``area`` of the image into ``alpha`` and ``dome`` (in place).

    ``alpha`` is the soft coverage (mask = alpha >= 0.5); ``dome`` is 1 at the blob centre, 0 at its border.
    """
    size = alpha.shape[0]
    aspect = rng.uniform(0.6, 1.0)
    a = math.sqrt(area / (math.pi * aspect))
    cy, cx = rng.uniform(a, 1 - a, size=2)
    angle = rng.uniform(0, math.pi)
    harmonics = np.arange(2, 6)
    amplitudes = rng.uniform(0, 0.32, 4) / harmonics
    phases = rng.uniform(0, 2 * math.pi, 4)
    edge = rng.uniform(0.05, 0.12)
    # alpha > 0 needs rho < 1 + sum(amplitudes) + edge / 2 < 1.5 (in units of the long semi-axis a)
    lo = [max(0, math.floor((c - 1.5 * a) * (size - 1))) for c in (cy, cx)]
    hi = [min(size, math.ceil((c + 1.5 * a) * (size - 1)) + 1) for c in (cy, cx)]
    ys = (np.arange(lo[0], hi[0], dtype=np.float32) / (size - 1) - cy)[:, None]
    xs = (np.arange(lo[1], hi[1], dtype=np.float32) / (size - 1) - cx)[None, :]
    u = (xs * math.cos(angle) + ys * math.sin(angle)) / a
    v = (ys * math.cos(angle) - xs * math.sin(angle)) / (a * aspect)
    rho, theta = np.hypot(u, v), np.arctan2(v, u)
    radius = 1 + sum(amp * np.cos(k * theta + ph) for amp, k, ph in zip(amplitudes, harmonics, phases))
    crop = (slice(lo[0], hi[0]), slice(lo[1], hi[1]))
    np.maximum(alpha[crop], np.clip((radius - rho) / edge + 0.5, 0, 1), out=alpha[crop])
    np.maximum(dome[crop], np.clip(1 - rho / radius, 0, 1), out=dome[crop])


def _demo_sample(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """One polyp-like RGB image (uint8, HxWx3) and its {0, 255} mask (uint8, HxW)."""
    base = rng.uniform([150, 70, 70], [235, 150, 140]).astype(np.float32)[:, None, None]
    shading = 1 + 0.12 * _smooth_noise(rng, size, 4, 1) + 0.04 * _smooth_noise(rng, size, 12, 1)
    background = base * shading + 10 * _smooth_noise(rng, size, 4, 3)

    alpha = np.zeros((size, size), dtype=np.float32)
    dome = np.zeros((size, size), dtype=np.float32)
    n_blobs = 0 if rng.random() < 0.1 else int(rng.integers(1, 4))
    if n_blobs:
        for area in rng.uniform(0.04, 0.28) * rng.dirichlet(np.full(n_blobs, 3.0)):
            _add_blob(rng, area, alpha, dome)

    blob_colour = base * rng.uniform([0.85, 0.5, 0.55], [1.05, 0.72, 0.82]).astype(np.float32)[:, None, None]
    blob = blob_colour * (1 + 0.25 * dome) + 14 * _smooth_noise(rng, size, max(4, size // 8), 3)
    image = background + alpha * (blob - background)

    coords = np.linspace(0, 1, size, dtype=np.float32)
    cy, cx = rng.uniform(0.3, 0.7, size=2)
    tilt = rng.uniform(0, 2 * math.pi)
    ys, xs = coords[:, None], coords[None, :]
    illumination = (
        1
        - rng.uniform(0.2, 0.6) * ((ys - cy) ** 2 + (xs - cx) ** 2)
        + rng.uniform(-0.15, 0.15) * ((xs - 0.5) * math.cos(tilt) + (ys - 0.5) * math.sin(tilt))
    )
    image = image * illumination + 3 * rng.standard_normal(image.shape, dtype=np.float32)
    rgb = np.clip(image, 0, 255).round().astype(np.uint8).transpose(1, 2, 0)
    return rgb, np.where(alpha >= 0.5, 255, 0).astype(np.uint8)


def make_demo_dataset(out_dir: str | os.PathLike, num_images: int = 200, size: int = 256, seed: int = 0) -> str:
    """Write a deterministic synthetic polyp-like set to ``out_dir/images`` + ``out_dir/masks`` (PNG).

    Idempotent: returns at once when ``DEMO_MANIFEST.json`` records the same parameters, never overwrites an
    existing file, and refuses (ValueError) a folder holding a different demo set or other images.
    """
    if num_images < 1 or size < 16:
        raise ValueError(f"need num_images >= 1 and size >= 16, got num_images={num_images}, size={size}")
    root = Path(os.path.abspath(out_dir))
    manifest_path = root / DEMO_MANIFEST
    manifest = {"num_images": num_images, "size": size, "seed": seed, "generator_version": DEMO_GENERATOR_VERSION}
    if manifest_path.is_file():
        with open(manifest_path, encoding="utf-8") as f:
            existing = json.load(f)
        if existing == manifest:
            return str(root)
        raise ValueError(f"{root} already holds a different demo set ({existing}); requested {manifest}")
    image_dir, mask_dir = root / "images", root / "masks"
    for folder in (image_dir, mask_dir):
        folder.mkdir(parents=True, exist_ok=True)
        foreign = [p.name for p in sorted(folder.iterdir()) if not (p.name[0] == "." or _DEMO_NAME.fullmatch(p.name))]
        if foreign:
            raise ValueError(f"{folder} holds non-demo files, refusing to mix: {format_files(foreign)}")
    for index in range(num_images):
        name = f"demo_{index:04d}.png"
        targets = [path for path in (image_dir / name, mask_dir / name) if not path.exists()]
        if not targets:
            continue
        arrays = _demo_sample(np.random.default_rng([seed, index]), size)
        for path, array in zip((image_dir / name, mask_dir / name), arrays):
            if path in targets:
                atomic_write(path, lambda tmp, a=array: Image.fromarray(a).save(tmp, format="PNG", compress_level=1))
    atomic_write_json(manifest_path, manifest)
    return str(root)
