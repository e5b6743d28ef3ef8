"""Training recipes compared across centres (``--recipes``): each row trains LH-UTANet MobileNetV2 stage 1 on one
centre with one change to train.json's augmentation, loss or input size; the comparison's test split is the other
centre (a datalist from ``scripts/prepare_datalist.py --test-from``), the only signal there is for an unseen
hospital."""

from __future__ import annotations

from typing import Any

from scripts.comparison.catalogue import CompareRow

# train.json's colour, blur, noise and JPEG augmentations off
NO_PHOTOMETRIC: dict[str, Any] = {"photometric_transforms": []}
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
    # key: (label, bundle-id settings, overlay); train.json's default is the winner, "photometric"
    "baseline": ("train.json without its photometric augmentations", {}, NO_PHOTOMETRIC),
    "photometric": ("+ colour cast, brightness, saturation, blur, noise, JPEG artefacts (train.json)", {}, {}),
    "geometric": ("+ zoom 0.7-1.3", {}, {**NO_PHOTOMETRIC, "+augment_transforms": GEOMETRIC}),
    "structure": ("PraNet's structure loss (weighted BCE + weighted IoU)", {"loss_name": "structure"}, NO_PHOTOMETRIC),
    "photometric-structure": ("photometric + structure loss", {"loss_name": "structure"}, {}),
    "photometric-geometric": ("photometric + zoom", {}, {"+augment_transforms": GEOMETRIC}),
}


def recipe_rows() -> dict[str, CompareRow]:
    """One MobileNetV2 stage-1 row per recipe of :data:`CROSS_CENTRE_RECIPES`."""
    return {
        f"recipe-{key}": CompareRow(f"LH-UTANet mobilenetv2, {label}", {"encoder": "mobilenetv2", **settings}, overlay)
        for key, (label, settings, overlay) in CROSS_CENTRE_RECIPES.items()
    }
