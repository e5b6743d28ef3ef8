"""Photometric augmentations MONAI lacks, for training that must travel to other centres' cameras: saturation and
JPEG compression artefacts. Both take (C, H, W) images in [0, 1] (before normalisation) and keep shape and dtype."""

from __future__ import annotations

import io
from collections.abc import Hashable, Mapping

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, RandomizableTransform
from PIL import Image


class RandSaturationd(RandomizableTransform, MapTransform):
    """With probability ``prob``, scale an RGB image's saturation by a factor drawn from ``factors``: each pixel is
    moved towards (< 1) or away from (> 1) its grey value. One-channel images are left as they are."""

    def __init__(self, keys: KeysCollection, factors: tuple[float, float] = (0.6, 1.4), prob: float = 0.5) -> None:
        MapTransform.__init__(self, keys)
        RandomizableTransform.__init__(self, prob)
        self.factors = factors
        self.factor = 1.0

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        self.randomize(None)
        if not self._do_transform:
            return d
        self.factor = float(self.R.uniform(*self.factors))
        for key in self.key_iterator(d):
            image = d[key]
            if image.shape[0] == 3:
                grey = (0.299 * image[0] + 0.587 * image[1] + 0.114 * image[2])[None]
                d[key] = (grey + self.factor * (image - grey)).clamp(0, 1)
        return d


class RandJpegd(RandomizableTransform, MapTransform):
    """With probability ``prob``, pass an image (1 or 3 channels) through JPEG compression at a quality drawn from
    ``quality`` (blocking and ringing as in recorded endoscopy frames)."""

    def __init__(self, keys: KeysCollection, quality: tuple[int, int] = (30, 90), prob: float = 0.3) -> None:
        MapTransform.__init__(self, keys)
        RandomizableTransform.__init__(self, prob)
        self.quality = quality

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        self.randomize(None)
        if not self._do_transform:
            return d
        quality = int(self.R.randint(self.quality[0], self.quality[1] + 1))
        for key in self.key_iterator(d):
            image = d[key]
            pixels = (image.detach().cpu().float().clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
            buffer = io.BytesIO()
            Image.fromarray(pixels[..., 0] if pixels.shape[2] == 1 else pixels).save(buffer, "JPEG", quality=quality)
            decoded = np.asarray(Image.open(buffer)).reshape(pixels.shape)
            restored = torch.from_numpy(decoded.astype(np.float32) / 255).permute(2, 0, 1)
            d[key] = image.clone().copy_(restored)  # keeps the MetaTensor's metadata
        return d
