"""Transforms MONAI lacks for 2D clinical images: channel and intensity normalisation, mask binarisation, and a fast
anti-aliased downsampling resize (the readers are in :mod:`bundle.data.readers`).

Images arrive from ``LoadImaged`` + ``EnsureChannelFirstd`` as (C, H, W) (or (C, X, Y, 1) for a
single-slice NIfTI) in their stored dtype; these transforms turn them into model input.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from functools import lru_cache

import numpy as np
import torch
from monai.config import KeysCollection
from monai.networks.layers.convutils import gaussian_1d
from monai.transforms import MapTransform, Resized
from monai.utils import ImageMetaKey, MetaKeys

from .masks import mask_threshold
from .readers import GREY_TO_COLOUR, ROW_MAJOR


def _squeeze_single_slice(image: torch.Tensor) -> torch.Tensor:
    """(C, H, W, 1) single-slice volume -> (C, H, W); 2D input is returned as is."""
    if image.ndim == 4 and image.shape[-1] == 1:
        return image[..., 0]
    if image.ndim != 3:
        raise ValueError(f"expected a 2D image (C, H, W) or a single-slice volume, got shape {tuple(image.shape)}.")
    return image


def _drop_alpha(image: torch.Tensor) -> torch.Tensor:
    """(4, H, W) RGBA -> (3, H, W) and (2, H, W) grey+alpha -> (1, H, W); other channel counts unchanged."""
    return image[:-1] if image.shape[0] in (2, 4) else image


def _source(data: Mapping[Hashable, object], key: Hashable) -> str:
    meta = getattr(data[key], "meta", {})
    return str(meta.get(ImageMetaKey.FILENAME_OR_OBJ, key))


class ToImageChannelsd(MapTransform):
    """(C, H, W[, 1]) image in its stored dtype -> (channels, H, W) float32 in [0, 1].

    Grey is repeated to ``channels`` (meta ``grey_to_colour`` says so), an alpha channel is dropped. 8-bit images
    are divided by 255; 16-bit, signed and float images (X-ray, CT, MR) are min-max scaled per image.

    Args:
        keys: image keys.
        channels: channels the network expects (1 or 3).
    """

    def __init__(self, keys: KeysCollection, channels: int = 3, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.channels = channels

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            image = _drop_alpha(_squeeze_single_slice(d[key]))
            grey_to_colour = image.shape[0] == 1 and self.channels > 1
            if grey_to_colour:
                image = image.repeat(self.channels, 1, 1)
            elif image.shape[0] > 1 and self.channels == 1:
                image = image.float().mean(dim=0, keepdim=True)
            if image.shape[0] != self.channels:
                raise ValueError(
                    f"{_source(d, key)}: has {image.shape[0]} channels, the network expects {self.channels}."
                )
            d[key] = _scale_to_unit(image)
            if hasattr(d[key], "meta"):
                d[key].meta[GREY_TO_COLOUR] = grey_to_colour
        return d


def _scale_to_unit(image: torch.Tensor) -> torch.Tensor:
    """uint8 images divided by 255; others (16-bit, signed, float: X-ray, CT, MR) min-max scaled per image."""
    if image.dtype == torch.uint8:
        return image.float().div_(255.0)  # in place on the new float copy: one full-size pass fewer
    image = image.float()
    low, high = image.min(), image.max()
    return (image - low) / (high - low) if high > low else image - low


class BinarizeMaskd(MapTransform):
    """(C, H, W[, 1]) mask -> (1, H, W) float32 in {0, 1}: foreground is ``> mask_threshold(...)``, the rule of
    :mod:`bundle.data.masks` that the data check and the planner use too.

    Multi-channel masks (grey saved as RGB) take the channel maximum.
    """

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            mask = _drop_alpha(_squeeze_single_slice(d[key])).amax(dim=0, keepdim=True)
            values = mask[0].detach().cpu().as_subclass(torch.Tensor).numpy()
            d[key] = (mask > mask_threshold(values, _source(d, key))).float()
        return d


_RESIZE_BLOCK = 32  # output rows/columns per block of the banded resize matrices


@lru_cache(maxsize=64)
def antialiased_resize_matrix(length: int, size: int) -> torch.Tensor:
    """(size, length) float32 matrix of MONAI's 1D anti-aliased bilinear downsampling from ``length`` to ``size``.

    The operator of ``Resize(mode="bilinear", anti_aliasing=True)`` along one axis: its Gaussian (``GaussianSmooth``:
    ``gaussian_1d`` kernel, sigma ``(length / size - 1) / 2``, zero padding), then ``interpolate`` (linear,
    ``align_corners=False``: output ``o`` reads source ``(o + 0.5) * length / size - 0.5``, clamped at 0, from its
    two neighbours). Built row by row from the kernel's taps, so that it is theirs up to float rounding.
    """
    sigma = torch.tensor(max(0.0, (length / size - 1) / 2))
    kernel = gaussian_1d(sigma, truncated=4.0, approx="erf")  # (2r + 1,)
    taps, radius = kernel.numel(), kernel.numel() // 2
    source = ((torch.arange(size, dtype=torch.float64) + 0.5) * (length / size) - 0.5).clamp(min=0)
    left = source.floor().long()
    right = (left + 1).clamp(max=length - 1)
    right_weight = (source - left).float()[:, None]
    columns = torch.arange(length)[None, :]

    def smoothed_at(centres: torch.Tensor) -> torch.Tensor:  # (size, length): the smoothed image read at centres
        offsets = centres[:, None] - columns + radius
        return torch.where((offsets >= 0) & (offsets < taps), kernel[offsets.clamp(0, taps - 1)], torch.zeros(()))

    return ((1 - right_weight) * smoothed_at(left) + right_weight * smoothed_at(right)).contiguous()


def _apply_banded(matrix: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    """``matrix`` (size, length) applied along the last axis of ``image`` (..., length) -> (..., size).

    Each block of output positions uses only the input span its weights cover (the matrix is banded).
    """
    out = image.new_empty((*image.shape[:-1], matrix.shape[0]))
    for start in range(0, matrix.shape[0], _RESIZE_BLOCK):
        block = matrix[start : start + _RESIZE_BLOCK]
        used = torch.nonzero(block.any(dim=0))
        first, last = int(used[0]), int(used[-1]) + 1
        out[..., start : start + _RESIZE_BLOCK] = image[..., first:last] @ block[:, first:last].T
    return out


class AntialiasedResized(Resized):
    """``Resized`` whose 2D bilinear anti-aliased downsampling is computed as two banded matrix products.

    Same result as MONAI's (Gaussian smoothing of the whole image, then bilinear interpolation) up to
    float rounding, at a fraction of the cost for large images, since only the smoothed values that
    the interpolation reads are computed. The inverse (``Invertd``) is ``Resized``'s. Other cases
    (upsampling along an axis, other modes, given sigma or ``align_corners``, 3D, lazy) are
    ``Resized``'s own.
    """

    def __call__(self, data: Mapping[Hashable, torch.Tensor], lazy: bool | None = None) -> dict:
        d = dict(data)
        lazy_ = self.lazy if lazy is None else lazy
        for key, mode, align_corners, anti_aliasing, sigma, dtype in self.key_iterator(
            d, self.mode, self.align_corners, self.anti_aliasing, self.anti_aliasing_sigma, self.dtype
        ):
            image = d[key]
            size = tuple(int(s) for s in self.resizer.spatial_size) if image.ndim == 3 else ()
            fast = (
                not lazy_
                and self.resizer.size_mode == "all"
                and anti_aliasing
                and sigma is None
                and align_corners is None
                and str(mode) == "bilinear"
                and len(size) == 2
                and all(0 < s < n for s, n in zip(size, image.shape[1:]))
                and dtype in (None, np.float32, torch.float32)
            )
            d[key] = self.resizer(
                image,
                mode=mode,
                align_corners=align_corners,
                anti_aliasing=anti_aliasing and not fast,  # the fast path records the same inverse
                anti_aliasing_sigma=sigma,
                dtype=dtype,
                lazy=lazy_,
            )
            if fast:
                pixels = torch.as_tensor(image, dtype=torch.float32).as_subclass(torch.Tensor)
                rows = antialiased_resize_matrix(image.shape[1], size[0])
                columns = antialiased_resize_matrix(image.shape[2], size[1])
                resized = _apply_banded(rows, _apply_banded(columns, pixels).transpose(1, 2)).transpose(1, 2)
                d[key].as_subclass(torch.Tensor).copy_(resized)
        return d


def is_row_major(image: torch.Tensor) -> bool:
    """True when ``image`` was read rows first (:class:`RowMajorPILReader`, :class:`TiffReader`)."""
    return bool(getattr(image, "meta", {}).get(ROW_MAJOR, False))


class ToImageLayoutd(MapTransform):
    """(1, H, W) prediction -> the reference image's own layout as its reader records it (``spatial_shape``).

    A 2D image read rows first (PNG, JPG, BMP, TIFF) gives (W, H), MONAI's 2D layout; a single-slice NIfTI gives
    its stored shape (X, Y, 1). That is what MONAI Label's ``Restored`` and its writers expect (they transpose
    2D arrays when writing), so a mask leaves MONAI Label at the image's H×W. ``dtype`` casts the result
    (uint8 for masks: MONAI Label's PNG/JPG writers take no float). :meth:`to_rows_first` undoes it.
    """

    def __init__(self, keys: KeysCollection, ref_key: str = "image", dtype: torch.dtype | None = None) -> None:
        super().__init__(keys)
        self.ref_key, self.dtype = ref_key, dtype

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        reference = d[self.ref_key]
        for key in self.key_iterator(d):
            pred = d[key]
            if pred.ndim != 3 or pred.shape[0] != 1:
                raise ValueError(f"expected a one-channel prediction (1, H, W), got {tuple(pred.shape)}.")
            if is_row_major(reference):
                pred = pred[0].T
            else:
                shape = [int(s) for s in reference.meta.get(MetaKeys.SPATIAL_SHAPE, pred.shape[1:])]
                pred = pred.reshape(shape)
            d[key] = pred.to(self.dtype) if self.dtype is not None else pred
        return d

    @staticmethod
    def to_rows_first(array: np.ndarray, reference: torch.Tensor) -> np.ndarray:
        """Inverse for writing: the :class:`ToImageLayoutd` layout of ``reference``'s image -> (H, W)."""
        return array.T if is_row_major(reference) else array.reshape(array.shape[:2])
