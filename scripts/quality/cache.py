"""The quality study's per-image cache: run one model once over one image set and keep what every candidate score
needs, so that the candidates are fitted and compared offline.

A set is a checkpoint, the images it is scored on and the images it was trained on (the reference routing). For each
scored image the cache keeps, at the network's input size (H, W):

- ``members.npy`` (N, M, H, W) float16: the logits of the M test-time-augmentation members, the four flips at each of
  :data:`MEMBER_SCALES` (flipped and resized back as :class:`bundle.inference.tta.TTAInferer` does); the first
  :data:`DEFAULT_MEMBERS` are configs/inference.json's default TTA;
- ``labels.npy`` (N, H, W) uint8: the reference's area share of each pixel, × 255;
- ``gates.npy`` (N, G, E) float32: each MoE gate's softmax over its E experts before the top-k (identity member);
  ``pooled.npy`` (N, C): the pooled features the gates read (NaN without an MoE);
- ``images.csv``: name and the Dice of the default TTA's mask at the image's original size, through
  configs/evaluate.json's post-processing (``dice`` empty for an empty reference);

and ``reference_gates.npy`` / ``reference_pooled.npy`` for the training images (identity member, no TTA).
``manifest.json`` names the checkpoint's sha256 and the images; a cache that does not match is rebuilt.
"""

from __future__ import annotations

import csv
import json
import logging
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from bundle.atomic_files import atomic_write_csv, atomic_write_json, sha256_of
from bundle.backends.predictors import logits_of, network_for_checkpoint
from bundle.data.datasets import load_datalist
from bundle.evaluation.metrics_report import binary_metrics
from bundle.inference.tta import TTA_SPREAD, TTAInferer, multiple_of
from monai.bundle import ConfigParser
from monai.data import MetaTensor

MEMBER_SCALES: tuple[float, ...] = (1.0, 1.2, 0.8, 1.4)  # configs/inference.json's tta_scales first
DEFAULT_MEMBERS = 8  # 4 flips x the default scales (1.0, 1.2)
CONFIGS = Path(__file__).resolve().parents[2] / "configs"
logger = logging.getLogger(__name__)


def image_pairs(spec: str) -> list[dict]:
    """Pairs of ``DIR`` (its non-test images: training + validation), ``DIR@SPLIT`` (that split), or several of
    them separated by commas. The test split (e.g. PraNet's test names) is never read."""
    pairs = []
    for part in spec.split(","):
        folder, _, split = part.partition("@")
        if split == "test":
            raise SystemExit(f"error: {part}: the test split is not used for choosing or fitting the quality score.")
        datalist = load_datalist(folder)
        pairs += [pair for key in ([split] if split else ["training", "validation"]) for pair in datalist[key]]
    return pairs


@contextmanager
def recorded_gates(network: torch.nn.Module) -> Iterator[dict[str, list[torch.Tensor]]]:
    """While open, each forward call of ``network`` appends its MoE gates' (B, G, E) softmax (before the top-k) to
    ``record["gates"]`` and their (B, C) pooled input to ``record["pooled"]``; nothing without an MoE."""
    record: dict[str, list[torch.Tensor]] = {"gates": [], "pooled": []}
    moe = getattr(network, "moe", None)
    handles, logits = [], []
    if moe is not None:
        handles.append(
            moe.gates[0].register_forward_pre_hook(lambda _, args: record["pooled"].append(args[0].flatten(1)))
        )
        for gate in moe.gates:
            handles.append(gate.logits.register_forward_hook(lambda _m, _a, out: logits.append(out.flatten(1))))

        def stack_gates(*_: object) -> None:
            record["gates"].append(torch.softmax(torch.stack(logits, dim=1), dim=2))
            logits.clear()

        handles.append(moe.register_forward_hook(stack_gates))
    try:
        yield record
    finally:
        for handle in handles:
            handle.remove()


def first_routing(record: dict[str, list[torch.Tensor]]) -> tuple[np.ndarray, np.ndarray]:
    """The (G, E) gate softmax and (C,) pooled gate input of the first image of the first forward call since the
    record was last taken (NaN without an MoE), and empty the record."""
    if not record["gates"]:
        return np.full((0, 0), np.nan, np.float32), np.full(1, np.nan, np.float32)
    routing = record["gates"][0][0].numpy(), record["pooled"][0][0].numpy()
    record["gates"].clear()
    record["pooled"].clear()
    return routing


def tta_members(network: torch.nn.Module, image: torch.Tensor, scales: Sequence[float]) -> torch.Tensor:
    """(1, C, H, W) image -> (M, 1, H, W) probabilities: the four flips at each scale, as TTAInferer makes them."""
    flips = TTAInferer("flips")
    size = list(image.shape[2:])
    members = []
    for scale in scales:
        scaled_size = [multiple_of(s * scale, flips.stride) for s in size]
        scaled = image if scaled_size == size else F.interpolate(image, scaled_size, mode="bilinear")
        probs = flips.flip_members(scaled, network)
        members += [p if scaled_size == size else F.interpolate(p, size, mode="bilinear") for p in probs]
    return torch.cat(members)


def evaluation_pipeline(ckpt: str) -> tuple[torch.nn.Module, object, object]:
    """The network of ``ckpt``, configs/evaluate.json's preprocessing (image resized, label kept at its size) and
    post-processing (quality features, mask back at the image's size). Run from the repository root."""
    parser = ConfigParser()
    parser.read_config([str(CONFIGS / "train.json"), str(CONFIGS / "evaluate.json")])
    parser["bundle_root"] = str(CONFIGS.parent)
    network, _ = network_for_checkpoint(parser, ckpt)
    preprocessing = parser.get_parsed_content("validate#preprocessing")
    postprocessing = parser.get_parsed_content("validate#postprocessing")
    return network, preprocessing, postprocessing


def cache_reference(network: torch.nn.Module, preprocessing, pairs: list[dict], folder: Path) -> None:
    """``reference_gates.npy`` and ``reference_pooled.npy`` of the training images (identity member)."""
    gates, pooled = [], []
    with torch.no_grad(), recorded_gates(network) as record:
        for pair in pairs:
            network(preprocessing(dict(pair))["image"].as_tensor()[None])
            g, p = first_routing(record)
            gates.append(g)
            pooled.append(p)
    np.save(folder / "reference_gates.npy", np.stack(gates))
    np.save(folder / "reference_pooled.npy", np.stack(pooled))


def cache_set(folder: Path, ckpt: str, scored: str, reference: str) -> Path:
    """Fill ``folder`` with the cache of ``ckpt`` on the images ``scored`` names (:func:`image_pairs`), routing
    reference ``reference``; reuse it when its manifest matches. Returns ``folder``."""
    pairs, reference_pairs = image_pairs(scored), image_pairs(reference)
    manifest = {
        "checkpoint_sha256": sha256_of(ckpt),
        "images": [os.path.basename(p["image"]) for p in pairs],
        "reference_images": len(reference_pairs),
        "member_scales": list(MEMBER_SCALES),
    }
    manifest_path = folder / "manifest.json"
    if manifest_path.is_file() and json.loads(manifest_path.read_text()) == manifest:
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    network, preprocessing, postprocessing = evaluation_pipeline(ckpt)
    rows, members, labels, gates, pooled = [], None, None, [], []
    with torch.no_grad(), recorded_gates(network) as record:
        for index, pair in enumerate(pairs):
            item = preprocessing(dict(pair))
            image = item["image"]
            probs = tta_members(network, image.as_tensor()[None], MEMBER_SCALES)  # (M, 1, H, W)
            if members is None:
                shape = (len(pairs), len(probs), *probs.shape[2:])
                members = np.lib.format.open_memmap(folder / "members.npy", "w+", np.float16, shape)
                labels = np.zeros((len(pairs), *probs.shape[2:]), np.uint8)
            g, p = first_routing(record)  # the identity member at scale 1.0 ran first
            gates.append(g)
            pooled.append(p)
            members[index] = logits_of(probs)[:, 0].numpy().astype(np.float16)
            reference = F.interpolate(item["label"].as_tensor()[None].float(), probs.shape[2:], mode="area")[0, 0]
            labels[index] = np.round(reference.numpy() * 255).astype(np.uint8)
            default = probs[:DEFAULT_MEMBERS]
            pred = MetaTensor(logits_of(default.mean(dim=0, keepdim=True))[0], meta=dict(image.meta))
            pred.meta[TTA_SPREAD] = float((default - default.mean(dim=0)).abs().mean())
            out = postprocessing({**item, "pred": pred})
            dice = binary_metrics(out["pred"], out["label"])["dice"]
            rows.append({"image": os.path.basename(pair["image"]), "dice": "" if np.isnan(dice) else dice})
            if index % 50 == 0:
                logger.info("%s: %d/%d", folder.name, index, len(pairs))
    members.flush()
    np.save(folder / "labels.npy", labels)
    np.save(folder / "gates.npy", np.stack(gates))
    np.save(folder / "pooled.npy", np.stack(pooled))
    atomic_write_csv(folder / "images.csv", ["image", "dice"], rows)
    cache_reference(network, preprocessing, reference_pairs, folder)
    atomic_write_json(manifest_path, manifest)
    return folder


def read_dice(folder: Path) -> np.ndarray:
    """(N,) Dice of the cached images; NaN for an empty reference."""
    with open(folder / "images.csv", newline="") as stream:
        return np.array([float(row["dice"]) if row["dice"] else np.nan for row in csv.DictReader(stream)])
