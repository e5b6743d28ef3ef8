"""The member cache of the TTA study (``scripts/bench/tta.py``): the shipped model's logits of each
"flips+scales" member on the 290 validation images of the PraNet protocol, computed once, and the Dice of any
per-image average of them at the images' original size, as ``evaluate.json`` scores it.

Files in the cache folder: ``logits.npy`` (N, M, H, W) float32, each member's logit of its probability at the
network's input size (M: the members of ``members_of(SCALES)``, identity first), ``labels.npz`` (the reference masks
at original size, bool) and ``images.json`` (the image paths).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from bundle.atomic_files import atomic_write_text
from bundle.backends.predictors import logits_of
from bundle.inference.tta import TTAInferer, members_of
from monai.bundle import ConfigParser

REPO_ROOT = Path(__file__).resolve().parents[2]
DATA = REPO_ROOT.parent / "shared" / "data"
VALIDATION_SOURCES = ("kvasir-seg", "cvc-clinicdb")  # the shipped model's training data (docs/shipped_model.md)
SCALES = (1.0, 1.2)  # inference.json's tta_scales
MEMBERS = members_of(SCALES)


def evaluation_parser(overrides: dict) -> ConfigParser:
    """train.json + evaluate.json from the repository root (as ``monai.bundle run`` merges them), on the CPU, the
    shipped model, the validation split of both polyp sources, with ``overrides``."""
    parser = ConfigParser()
    os.chdir(REPO_ROOT)  # evaluate.json's %configs/... references are relative to the working directory
    parser.read_config([str(REPO_ROOT / "configs" / name) for name in ("train.json", "evaluate.json")])
    settings = {
        "bundle_root": str(REPO_ROOT),
        "device": "$torch.device('cpu')",
        "dataset_dir": [str(DATA / source) for source in VALIDATION_SOURCES],
        "eval_split": "validation",
        "ckpt_path": str(REPO_ROOT / "models" / "model.pt"),
    }
    parser.update({**settings, **overrides})
    return parser


def write_cache(cache_dir: Path, limit: int | None = None) -> None:
    """Run the shipped model (``evaluate.json``'s backend torch) once per member over the validation images and
    store what :func:`load_cache` reads; ``limit``: only the first images (a quick check)."""
    parser = evaluation_parser({})
    items = parser.get_parsed_content("datalist")["validation"][:limit]
    preprocessing, predictor = parser.get_parsed_content("validate#preprocessing"), parser.get_parsed_content(
        "predictor"
    )
    inferer = TTAInferer("flips+scales", SCALES)
    cache_dir.mkdir(parents=True, exist_ok=True)
    size = tuple(parser.get_parsed_content("network_settings")["image_size"])
    logits = np.lib.format.open_memmap(cache_dir / ".logits.npy", "w+", np.float32, (len(items), len(MEMBERS), *size))
    labels, start = {}, time.perf_counter()
    with torch.inference_mode():
        for index, item in enumerate(items):
            data = preprocessing(dict(item))
            members = inferer.member_probabilities(data["image"][None].as_tensor(), predictor, MEMBERS)
            logits[index] = torch.logit(torch.cat(members)[:, 0], eps=1e-7).numpy()
            labels[str(index)] = data["label"][0].numpy() > 0.5
            if index % 20 == 0:
                print(f"[cache] {index + 1}/{len(items)} {time.perf_counter() - start:.0f} s", flush=True)
    logits.flush()
    del logits
    np.savez_compressed(cache_dir / "labels.npz", **labels)
    atomic_write_text(cache_dir / "images.json", json.dumps([str(item["image"]) for item in items], indent=1))
    os.replace(cache_dir / ".logits.npy", cache_dir / "logits.npy")


def load_cache(cache_dir: Path) -> tuple[np.ndarray, list[np.ndarray], list[str]]:
    """(member logits (N, M, H, W) float32, memory-mapped; N reference masks; N image paths) of :func:`write_cache`."""
    logits = np.load(cache_dir / "logits.npy", mmap_mode="r")
    with np.load(cache_dir / "labels.npz") as archive:
        labels = [archive[str(index)] for index in range(len(logits))]
    return logits, labels, json.loads((cache_dir / "images.json").read_text(encoding="utf-8"))


def averaged_logits(member_logits: np.ndarray) -> torch.Tensor:
    """(M, H, W) member logits -> (H, W) logits of their mean probability as ``TTAInferer`` returns them: one
    member's own logits, or ``logits_of`` the mean."""
    logits = torch.from_numpy(np.asarray(member_logits, dtype=np.float32))
    return logits[0] if len(logits) == 1 else logits_of(torch.sigmoid(logits).mean(0)[None, None])[0, 0]


def dice_at_original_size(logits: torch.Tensor, label: np.ndarray) -> float:
    """Dice of (H, W) ``logits`` against ``label`` (h, w) as ``evaluate.json`` scores it: the logits resized
    bilinearly to (h, w) (``Invertd``), then thresholded at 0 (probability 0.5). NaN for an empty label."""
    mask = F.interpolate(logits[None, None], label.shape, mode="bilinear")[0, 0].numpy() > 0
    total = mask.sum() + label.sum()
    return float(2 * (mask & label).sum() / total) if label.any() else float("nan")
