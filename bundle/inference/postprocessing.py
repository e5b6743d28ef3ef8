"""Post-processing of predicted probabilities: binary masks (threshold, small components, holes, largest
component), their report statistics and outline overlays."""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import AsDiscrete, FillHoles, KeepLargestConnectedComponent, MapTransform
from monai.utils import convert_to_dst_type
from skimage.measure import label as label_components
from skimage.morphology import remove_small_objects
from skimage.segmentation import find_boundaries

OVERLAY_COLOUR = (0, 255, 0)


def postprocess_mask(
    probabilities: np.ndarray,
    threshold: float = 0.5,
    keep_largest_component: bool = False,
    fill_holes: bool = False,
    min_component_size: int = 0,
) -> np.ndarray:
    """(H, W) foreground probabilities -> (H, W) bool mask.

    In order: ``>= threshold``; drop 8-connected components of fewer than ``min_component_size``
    pixels; fill holes; keep only the largest component.
    """
    mask = (
        np.asarray(AsDiscrete(threshold=threshold)(probabilities)) > 0
    )  # MONAI's rule (>= threshold), as evaluation's
    return clean_mask(mask, keep_largest_component, fill_holes, min_component_size)


def clean_mask(
    mask: np.ndarray, keep_largest_component: bool = False, fill_holes: bool = False, min_component_size: int = 0
) -> np.ndarray:
    """(H, W) bool mask -> (H, W) bool mask: :func:`postprocess_mask`'s steps after the threshold. Holes touching the
    edge stay open, so a crop of a mask that holds all its foreground gives the crop of the whole mask's result."""
    if min_component_size > 0:
        mask = remove_small_objects(mask, max_size=min_component_size - 1, connectivity=2)
    if fill_holes:
        mask = FillHoles()(mask[None].astype(np.uint8))[0] > 0
    if keep_largest_component:
        mask = KeepLargestConnectedComponent()(mask[None].astype(np.uint8))[0] > 0
    return np.asarray(mask, dtype=bool)


class BinaryMaskd(MapTransform):
    """(1, H, W) foreground probabilities -> (1, H, W) float {0, 1} mask by :func:`postprocess_mask`, with
    ``options`` (``threshold``, ``keep_largest_component``, ``fill_holes``, ``min_component_size``) passed to it.

    The probabilities are kept under ``prob_key``.
    """

    def __init__(self, keys: KeysCollection, prob_key: str = "prob", **options: float | bool) -> None:
        super().__init__(keys)
        postprocess_mask(np.zeros((1, 1), np.float32), **options)  # unknown options fail here, not per image
        self.options, self.prob_key = options, prob_key

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            probabilities = d[key]
            if probabilities.ndim != 3 or probabilities.shape[0] != 1:
                raise ValueError(f"expected one-channel probabilities (1, H, W), got {tuple(probabilities.shape)}.")
            mask = postprocess_mask(probabilities[0].detach().cpu().numpy(), **self.options)
            d[self.prob_key] = probabilities
            d[key] = convert_to_dst_type(mask[None].astype(np.float32), probabilities)[0]
        return d


def contour_overlay(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """(1 or 3, H, W) image in [0, 1] and (H, W) bool mask -> (H, W, 3) uint8 RGB with the mask outline drawn."""
    rgb = (np.clip(np.moveaxis(image, 0, -1), 0, 1) * 255).round().astype(np.uint8)
    rgb = np.repeat(rgb, 3, axis=-1) if rgb.shape[-1] == 1 else rgb
    outline = find_boundaries(np.pad(mask, 1), mode="inner")[1:-1, 1:-1]  # padded: the image edge closes it
    rgb[outline] = OVERLAY_COLOUR
    return rgb


def mask_statistics(mask: np.ndarray, probabilities: np.ndarray) -> dict[str, object]:
    """Report columns of one (H, W) bool mask and its (H, W) probabilities.

    ``mean_foreground_probability`` is empty when the mask is empty.
    """
    foreground = probabilities[mask]
    return {
        "height": mask.shape[0],
        "width": mask.shape[1],
        "foreground_fraction": f"{mask.mean():.6f}",
        "components": int(label_components(mask).max()),
        "mean_foreground_probability": f"{foreground.mean():.6f}" if foreground.size else "",
    }
