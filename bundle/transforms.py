"""Transforms MONAI lacks for 2D clinical images: a TIFF reader, channel and intensity normalisation, mask binarisation.

Images arrive from ``LoadImaged`` + ``EnsureChannelFirstd`` as (C, H, W) (or (C, X, Y, 1) for a
single-slice NIfTI) in their stored dtype; these transforms turn them into model input.
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import tifffile
import torch
from monai.config import KeysCollection
from monai.data import ImageReader, NibabelReader, PILReader
from monai.data.utils import is_supported_format
from monai.transforms import MapTransform
from monai.utils import ImageMetaKey, MetaKeys

JPEG_SUFFIXES = (".jpg", ".jpeg")


class TiffReader(ImageReader):
    """Read .tif/.tiff with tifffile (PIL fails on many scientific TIFFs, e.g. 16-bit multi-sample).

    Returns (H, W) or (H, W, C) arrays in the stored dtype, in the same (row, column) order as
    ``PILReader(reverse_indexing=False)``; the channel axis is recorded for ``EnsureChannelFirstd``.
    """

    def verify_suffix(self, filename: Sequence[str | os.PathLike] | str | os.PathLike) -> bool:
        return is_supported_format(filename, ["tif", "tiff"])

    def read(self, data: Sequence[str | os.PathLike] | str | os.PathLike, **kwargs) -> list[np.ndarray]:
        filenames = [data] if isinstance(data, (str, os.PathLike)) else list(data)
        return [np.squeeze(tifffile.imread(str(name))) for name in filenames]

    def get_data(self, img: list[np.ndarray] | np.ndarray) -> tuple[np.ndarray, dict]:
        arrays = img if isinstance(img, list) else [img]
        if len(arrays) != 1 or arrays[0].ndim not in (2, 3):
            raise ValueError(f"expected one 2D TIFF image (H, W) or (H, W, C), got shapes {[a.shape for a in arrays]}.")
        array = arrays[0]
        meta = {
            MetaKeys.SPATIAL_SHAPE: np.asarray(array.shape[:2]),
            MetaKeys.ORIGINAL_CHANNEL_DIM: -1 if array.ndim == 3 else float("nan"),
            MetaKeys.AFFINE: np.eye(3),
            MetaKeys.ORIGINAL_AFFINE: np.eye(3),
        }
        return array, meta


def image_readers() -> list[ImageReader]:
    """Readers for PNG/JPG/BMP (row-major, i.e. (H, W[, C])), TIFF and NIfTI, for ``LoadImaged(reader=...)``."""
    return [NibabelReader(), TiffReader(), PILReader(reverse_indexing=False)]


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

    Grey is repeated to ``channels``, an alpha channel is dropped. 8-bit images are divided by 255;
    16-bit, signed and float images (X-ray, CT, MR) are min-max scaled per image.

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
            if image.shape[0] == 1 and self.channels > 1:
                image = image.repeat(self.channels, 1, 1)
            elif image.shape[0] > 1 and self.channels == 1:
                image = image.float().mean(dim=0, keepdim=True)
            if image.shape[0] != self.channels:
                raise ValueError(f"{_source(d, key)}: has {image.shape[0]} channels, the network expects {self.channels}.")
            d[key] = _scale_to_unit(image)
        return d


def _scale_to_unit(image: torch.Tensor) -> torch.Tensor:
    """uint8 images divided by 255; others (16-bit, signed, float: X-ray, CT, MR) min-max scaled per image."""
    if image.dtype == torch.uint8:
        return image.float() / 255.0
    image = image.float()
    low, high = image.min(), image.max()
    return (image - low) / (high - low) if high > low else image - low


class BinarizeMaskd(MapTransform):
    """(C, H, W[, 1]) mask -> (1, H, W) float32 in {0, 1}.

    Foreground is ``> 127`` for 8-bit masks stored as 0/255 (and always for JPEG, whose compression
    noise reaches ~8 in the background) and ``> 0`` for label maps (values such as 0/1 or 0..N).
    Multi-channel masks (grey saved as RGB) take the channel maximum.
    """

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            mask = _drop_alpha(_squeeze_single_slice(d[key])).amax(dim=0, keepdim=True)
            eight_bit = mask.max() > 127 or _source(d, key).lower().endswith(JPEG_SUFFIXES)
            d[key] = (mask > (127 if eight_bit else 0)).float()
        return d
