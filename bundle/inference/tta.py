"""Test-time augmentation as a MONAI inferer: flips (and rescaled copies) of each batch, probabilities averaged; in
mode "adaptive", only for the images whose single pass looks uncertain."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from monai.data import MetaTensor
from monai.inferers import Inferer

from ..backends.predictors import logits_of, probabilities
from ..config import flag
from ..data.readers import GREY_TO_COLOUR
from ..errors import SettingError

TTA_MODES: tuple[str, ...] = ("none", "flips", "flips+scales", "adaptive")
FLIP_DIMS: tuple[tuple[int, ...], ...] = ((), (3,), (2,), (2, 3))  # identity, horizontal, vertical, both
TTA_SPREAD = "tta_spread"  # meta key of the returned logits: (B,) the TTA members' disagreement
FULL_TTA = "full_tta"  # meta key of the returned logits: (B,) bool, the images that took every member
Member = tuple[float, tuple[int, ...]]  # one TTA pass: (scale, flipped dims of the (B, C, H, W) input)
ADAPTIVE_THRESHOLD = 0.294  # inference.json's tta_adaptive_threshold: chosen on validation (docs/benchmark_tta.md)


def multiple_of(size: float, stride: int) -> int:
    """``size`` rounded to the nearest positive multiple of ``stride``."""
    return max(stride, int(round(size / stride)) * stride)


def members_of(scales: Sequence[float]) -> tuple[Member, ...]:
    """The four flips at each of ``scales``, scale by scale: identity first."""
    return tuple((float(scale), dims) for scale in scales for dims in FLIP_DIMS)


def as_members(members: Sequence[Sequence]) -> tuple[Member, ...]:
    """``[[scale, [dims...]], ...]`` (JSON) as :data:`Member` tuples."""
    return tuple((float(scale), tuple(int(d) for d in dims)) for scale, dims in members)


def uncertain_fraction(probs: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """(B, 1, H, W) foreground probabilities -> (B,): pixels with 0.1 < p < 0.9 over the mask's pixels (p >=
    ``threshold``) plus them; the quality score's feature (:func:`bundle.inference.quality.quality_features`)."""
    uncertain = ((probs > 0.1) & (probs < 0.9)).flatten(1).sum(1).float()
    mask = (probs >= threshold).flatten(1).sum(1).float()
    return uncertain / (mask + uncertain).clamp(min=1)


def member_disagreement(members: torch.Tensor) -> torch.Tensor:
    """(M, B, C, H, W) member probabilities -> (B,): the mean |member - mean| over the members and pixels."""
    return (members - members.mean(dim=0)).abs().mean(dim=(0, 2, 3, 4))


SIGNALS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {  # (M, B, 1, H, W) first members -> (B,) uncertainty
    "uncertain_fraction": lambda members: uncertain_fraction(members.mean(dim=0)),
    "spread": member_disagreement,
    "small_mask": lambda members: 1 - (members.mean(dim=0) >= 0.5).flatten(1).float().mean(1),
}


class TTAInferer(Inferer):
    """``mode`` "none": ``network(inputs)``, exactly. "flips": the mean probability over the identity and the
    horizontal, vertical and double flips, each flipped back. "flips+scales": the same at each of ``scales``
    (input resized bilinearly to ``scale`` × (H, W), rounded to multiples of ``stride``, and the probabilities
    resized back). "adaptive": one pass; the images whose ``adaptive_signal`` (:data:`SIGNALS`, of that pass's
    probabilities) exceeds ``adaptive_threshold`` take the other members of "flips+scales" too, and so do grey
    images and images smaller than the network input (:func:`forced_full`); each image's result is then exactly
    that of "none" or of "flips+scales". Returns logits (B, C, H, W) (of the mean probability when averaged), so
    post-processing is unchanged.

    Each image's mean |member - mean| probability, (B,), the members' disagreement (0 for a single pass), is kept in
    ``member_spread`` (None with mode "none"), and which images took more than the first pass in ``full_tta``; for
    MetaTensor inputs also in the logits' meta ``tta_spread`` and ``full_tta``, for the quality score
    (:class:`bundle.inference.quality.QualityScored`).

    ``first`` and ``second`` replace the mode's members (:data:`Member` lists: every image takes ``first``; those
    whose signal of the ``first`` probabilities exceeds the threshold also take ``second``): other policies, for
    benchmarks (``scripts/bench/tta.py``).

    ``batched`` (default): the flips of one scaled size go through the network as one batch, one forward call per
    distinct scaled size (scales that round to the same size share it); otherwise one call per member. Both give
    the same members (the network treats the samples of a batch independently, in eval mode).
    """

    def __init__(
        self,
        mode: str = "none",
        scales: Sequence[float] = (1.0,),
        stride: int = 32,
        batched: bool = True,
        adaptive_threshold: float = ADAPTIVE_THRESHOLD,
        adaptive_signal: str = "uncertain_fraction",
        first: Sequence[Member] | None = None,
        second: Sequence[Member] | None = None,
    ) -> None:
        if mode not in TTA_MODES:
            raise SettingError(f"tta must be one of {', '.join(TTA_MODES)}, got {mode!r}.")
        if mode in ("flips+scales", "adaptive") and (not scales or any(s <= 0 for s in scales)):
            raise SettingError(f"tta_scales must be positive factors, got {list(scales)}.")
        if adaptive_signal not in SIGNALS:
            raise SettingError(f"tta_adaptive_signal must be one of {', '.join(SIGNALS)}, got {adaptive_signal!r}.")
        super().__init__()
        self.mode, self.stride, self.batched = mode, stride, flag(batched, "tta_batched")
        self.scales = tuple(scales) if mode in ("flips+scales", "adaptive") else (1.0,)
        self.threshold, self.signal = float(adaptive_threshold), adaptive_signal
        members = members_of(self.scales)[: 1 if mode == "none" else None]
        self.first = as_members(first) if first is not None else members[:1] if mode == "adaptive" else members
        self.second = as_members(second) if second is not None else members[1:] if mode == "adaptive" else ()
        self.member_spread: torch.Tensor | None = None  # (B,) of the last call: the TTA members' disagreement
        self.full_tta: torch.Tensor | None = None  # (B,) bool of the last call: the images that took ``second``
        self.images, self.images_full = 0, 0  # images seen, and those that took ``second``, over all calls

    def member_probabilities(
        self, inputs: torch.Tensor, network: Callable[..., torch.Tensor], members: Sequence[Member], *args, **kwargs
    ) -> list[torch.Tensor]:
        """(B, C, H, W) inputs -> the probabilities of each of ``members``, flipped back and resized to (H, W):
        ``len(members)`` × (B, K, H, W), in the order of ``members``."""
        size = list(inputs.shape[2:])
        sizes = {scale: tuple(multiple_of(s * scale, self.stride) for s in size) for scale, _ in members}
        by_size: dict[tuple, torch.Tensor] = {}  # (scaled size, flip dims) -> probabilities: one pass each
        for scaled_size in dict.fromkeys(sizes.values()):
            flips = list(dict.fromkeys(dims for scale, dims in members if sizes[scale] == scaled_size))
            same = list(scaled_size) == size
            scaled = inputs if same else F.interpolate(inputs, scaled_size, mode="bilinear")
            if self.batched:
                batch = torch.cat([torch.flip(scaled, dims) if dims else scaled for dims in flips])
                outputs = plain(network(batch, *args, **kwargs)).chunk(len(flips))
            else:
                outputs = [plain(network(torch.flip(scaled, d) if d else scaled, *args, **kwargs)) for d in flips]
            for dims, out in zip(flips, outputs):
                probs = probabilities(torch.flip(out, dims) if dims else out)
                by_size[scaled_size, dims] = probs if same else F.interpolate(probs, size, mode="bilinear")
        return [by_size[sizes[scale], dims] for scale, dims in members]

    def __call__(self, inputs: torch.Tensor, network: Callable[..., torch.Tensor], *args, **kwargs) -> torch.Tensor:
        self.member_spread = self.full_tta = None
        if self.mode == "none" and not self.second:
            return network(inputs, *args, **kwargs)
        pixels = plain(inputs)
        single = self.first == ((1.0, ()),)
        if single:  # the plain forward: an image that stops here gets exactly "none"'s logits
            result = plain(network(pixels, *args, **kwargs))
            first = [probabilities(result)]
        else:
            first = self.member_probabilities(pixels, network, self.first, *args, **kwargs)
            result = logits_of(torch.stack(first).mean(dim=0))
        stacked = torch.stack(first)
        spread = member_disagreement(stacked).float().cpu() if len(first) > 1 else torch.zeros(len(pixels))
        full = torch.zeros(len(pixels), dtype=torch.bool)
        if self.second:
            full = (SIGNALS[self.signal](stacked).cpu() > self.threshold) | forced_full(inputs)
        if full.any():
            chosen = full.nonzero()[:, 0].to(pixels.device)
            more = self.member_probabilities(pixels[chosen], network, self.second, *args, **kwargs)
            members = torch.cat([stacked[:, chosen], torch.stack(more)])
            result = result.clone()
            result[chosen] = logits_of(members.mean(dim=0)).to(result.dtype)
            spread[full] = member_disagreement(members).float().cpu()
        self.member_spread, self.full_tta = spread, full
        self.images, self.images_full = self.images + len(full), self.images_full + int(full.sum())
        if not isinstance(inputs, MetaTensor):
            return result
        result = MetaTensor(result)
        result.is_batch = True  # decollation then gives each image its own spread
        result.meta[TTA_SPREAD], result.meta[FULL_TTA] = spread, full
        return result


def forced_full(inputs: torch.Tensor) -> torch.Tensor:
    """(B,) bool: the images of a decoded (B, C, H, W) MetaTensor batch that adaptive TTA always averages over every
    member: grey images given to a colour network (meta ``grey_to_colour``) and images whose original shorter side
    (meta ``spatial_shape``) is shorter than the input's (upsampled: one pass has less to go on)."""
    batch, meta = len(inputs), getattr(inputs, "meta", {})
    grey = torch.as_tensor(meta.get(GREY_TO_COLOUR, False), dtype=torch.bool).reshape(-1)
    full = grey.expand(batch).clone()  # a copy: the batch's meta stays as it is
    shapes = meta.get("spatial_shape")
    if shapes is not None:  # (B, 2) in a batch, (2,) for one image; (..., 3) for a NIfTI slice: (H, W, 1)
        full |= torch.as_tensor(shapes).reshape(batch, -1)[:, :2].min(dim=1).values < min(inputs.shape[2:])
    return full


def plain(logits: torch.Tensor) -> torch.Tensor:
    """``logits`` without MetaTensor tracking."""
    return logits.as_tensor() if isinstance(logits, MetaTensor) else logits
