"""Test-time augmentation as a MONAI inferer: flips (and rescaled copies) of each batch, probabilities averaged."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from monai.data import MetaTensor
from monai.inferers import Inferer

from ..backends.predictors import logits_of, probabilities
from ..config import flag
from ..errors import SettingError

TTA_MODES: tuple[str, ...] = ("none", "flips", "flips+scales")
FLIP_DIMS: tuple[tuple[int, ...], ...] = ((), (3,), (2,), (2, 3))  # identity, horizontal, vertical, both
TTA_SPREAD = "tta_spread"  # meta key of the returned logits: (B,) the TTA members' disagreement


def multiple_of(size: float, stride: int) -> int:
    """``size`` rounded to the nearest positive multiple of ``stride``."""
    return max(stride, int(round(size / stride)) * stride)


class TTAInferer(Inferer):
    """``mode`` "none": ``network(inputs)``, exactly. "flips": the mean probability over the identity and the
    horizontal, vertical and double flips, each flipped back. "flips+scales": the same at each of ``scales``
    (input resized bilinearly to ``scale`` × (H, W), rounded to multiples of ``stride``, and the probabilities
    resized back). Returns logits of the mean probability, (B, C, H, W), so post-processing is unchanged.
    Each image's mean |member - mean| probability, (B,), the members' disagreement, is kept in ``member_spread``
    (None with mode "none") and, for MetaTensor inputs, in the logits' meta ``tta_spread``, for the quality score
    (:class:`bundle.inference.quality.QualityScored`).

    ``batched`` (default): the four flips of a batch go through the network as one (4B, C, h, w) batch, one forward
    call per distinct scaled size (scales that round to the same size share it); otherwise one call per member.
    Both give the same members (the network treats the samples of a batch independently, in eval mode).
    Costs ``4 × len(scales)`` images' worth of forward work per image ("flips": 4).
    """

    def __init__(
        self, mode: str = "none", scales: Sequence[float] = (1.0,), stride: int = 32, batched: bool = True
    ) -> None:
        if mode not in TTA_MODES:
            raise SettingError(f"tta must be one of {', '.join(TTA_MODES)}, got {mode!r}.")
        if mode == "flips+scales" and (not scales or any(s <= 0 for s in scales)):
            raise SettingError(f"tta_scales must be positive factors, got {list(scales)}.")
        super().__init__()
        self.mode, self.stride, self.batched = mode, stride, flag(batched, "tta_batched")
        self.scales = tuple(scales) if mode == "flips+scales" else (1.0,)
        self.member_spread: torch.Tensor | None = None  # (B,) of the last call: the TTA members' disagreement

    def flip_members(self, inputs: torch.Tensor, network: Callable[..., torch.Tensor], *args, **kwargs) -> list:
        """(B, C, h, w) inputs -> the probabilities of its four flips, each flipped back: 4 × (B, K, h, w)."""
        if self.batched:
            flipped = torch.cat([torch.flip(inputs, dims) if dims else inputs for dims in FLIP_DIMS])
            outputs = plain(network(flipped, *args, **kwargs)).chunk(len(FLIP_DIMS))
        else:
            outputs = [plain(network(torch.flip(inputs, d) if d else inputs, *args, **kwargs)) for d in FLIP_DIMS]
        return [probabilities(torch.flip(out, dims) if dims else out) for out, dims in zip(outputs, FLIP_DIMS)]

    def __call__(self, inputs: torch.Tensor, network: Callable[..., torch.Tensor], *args, **kwargs) -> torch.Tensor:
        self.member_spread = None
        if self.mode == "none":
            return network(inputs, *args, **kwargs)
        size = list(inputs.shape[2:])
        members, by_size = [], {}
        for scale in self.scales:
            scaled_size = tuple(multiple_of(s * scale, self.stride) for s in size)
            if scaled_size not in by_size:
                scaled = inputs if list(scaled_size) == size else F.interpolate(inputs, scaled_size, mode="bilinear")
                probs = self.flip_members(scaled, network, *args, **kwargs)
                if list(scaled_size) != size:
                    probs = [F.interpolate(p, size, mode="bilinear") for p in probs]
                by_size[scaled_size] = probs
            members += by_size[scaled_size]
        stacked = torch.stack(members)  # (members, B, C, H, W)
        mean = stacked.mean(dim=0)
        spread = self.member_spread = (stacked - mean).abs().mean(dim=(0, 2, 3, 4)).float().cpu()
        result = logits_of(mean)
        if not isinstance(inputs, MetaTensor):
            return result
        result = MetaTensor(result)
        result.is_batch = True  # decollation then gives each image its own spread
        result.meta[TTA_SPREAD] = spread
        return result


def plain(logits: torch.Tensor) -> torch.Tensor:
    """``logits`` without MetaTensor tracking."""
    return logits.as_tensor() if isinstance(logits, MetaTensor) else logits
