"""Training recipes compared across centres (``--recipes``): each row trains LH-UTANet MobileNetV2 stage 1 on one
centre with one change to train.json's augmentation, loss or input size; the comparison's test split is the other
centre (a datalist from ``scripts/prepare_datalist.py --test-from``), the only signal there is for an unseen
hospital."""

from __future__ import annotations

from typing import Any

from scripts.comparison.catalogue import CompareRow

PHOTOMETRIC: list[dict[str, Any]] = [  # appended to train.json's augment_transforms (images in [0, 1])
    {"_target_": "RandScaleIntensityd", "keys": "image", "factors": 0.15, "channel_wise": True, "prob": 0.5},
    {"_target_": "RandShiftIntensityd", "keys": "image", "offsets": 0.05, "prob": 0.3},
    {"_target_": "bundle.augmentations.RandSaturationd", "keys": "image", "factors": [0.6, 1.4], "prob": 0.5},
    {"_target_": "RandGaussianSmoothd", "keys": "image", "sigma_x": [0.25, 1.0], "sigma_y": [0.25, 1.0], "prob": 0.2},
    {"_target_": "RandGaussianNoised", "keys": "image", "std": 0.02, "prob": 0.2},
    {"_target_": "bundle.augmentations.RandJpegd", "keys": "image", "quality": [30, 90], "prob": 0.3},
]
GEOMETRIC: list[dict[str, Any]] = [
    {
        "_target_": "RandZoomd",
        "keys": ["image", "label"],
        "min_zoom": 0.7,
        "max_zoom": 1.3,
        "keep_size": True,
        "mode": ["bilinear", "nearest"],
        "prob": 0.5,
    }
]

CROSS_CENTRE_RECIPES: dict[str, tuple[str, dict[str, Any], dict[str, Any]]] = {
    # key: (label, bundle-id settings, overlay)
    "baseline": ("train.json as it is", {}, {}),
    "photometric": (
        "+ colour cast, brightness, saturation, blur, noise, JPEG artefacts",
        {},
        {"+augment_transforms": PHOTOMETRIC},
    ),
    "geometric": ("+ zoom 0.7-1.3", {}, {"+augment_transforms": GEOMETRIC}),
    "structure": ("PraNet's structure loss (weighted BCE + weighted IoU)", {"loss_name": "structure"}, {}),
    "photometric-structure": (
        "photometric + structure loss",
        {"loss_name": "structure"},
        {"+augment_transforms": PHOTOMETRIC},
    ),
    "photometric-geometric": ("photometric + zoom", {}, {"+augment_transforms": PHOTOMETRIC + GEOMETRIC}),
}


def recipe_rows() -> dict[str, CompareRow]:
    """One MobileNetV2 stage-1 row per recipe of :data:`CROSS_CENTRE_RECIPES`."""
    return {
        f"recipe-{key}": CompareRow(f"LH-UTANet mobilenetv2, {label}", {"encoder": "mobilenetv2", **settings}, overlay)
        for key, (label, settings, overlay) in CROSS_CENTRE_RECIPES.items()
    }
