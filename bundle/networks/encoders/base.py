"""The encoder registry of LH-UTANet: the contract every encoder keeps, ``register_encoder``, and loading of local
ImageNet weights.

An encoder maps (B, in_channels, H, W) to five features ``[e1, e2, e3, e4, e5]`` at strides 2, 4, 8, 16 and 32
and states, as class attributes:

- ``out_channels``: the channels of e1..e5;
- ``output_stride``: the stride of e5 (the network's input must be a multiple of it);
- ``stem_key``: the state_dict key of its first conv kernel (O, in_channels, k, k): checkpoints are recognised by
  it, and pretrained RGB stems are adapted at it for other channel counts;
- ``unused_pretrained_prefixes``: keys of its pretrained-weights file that it leaves out (the classifier).

Pretrained weights are a local state_dict with the encoder's own key names (torchvision's for ResNet34 and
MobileNetV2, MONAI's for EfficientNet), loaded by :func:`load_encoder_weights`; nothing is downloaded.

Adding an encoder: one module in this package whose class carries ``@register_encoder(name, moe_fusion_index=...)``
(and, optionally, ``learning_rate=...``), and its import in ``encoders/__init__.py``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

NUM_FEATURES = 5


@dataclass(frozen=True)
class EncoderEntry:
    """A registered encoder: its class, the skip index the MoE runs at by default (0: H/2 ... 3: H/16), and the
    stage-1 learning rate ``train.json`` uses for it unless ``--learning_rate`` is given (training from scratch)."""

    cls: type[nn.Module]
    moe_fusion_index: int
    learning_rate: float = 1e-3


ENCODERS: dict[str, EncoderEntry] = {}
DEFAULT_ENCODER = "mobilenetv2"  # the network's and train.json's default, the shipped model's encoder


def register_encoder(
    name: str, moe_fusion_index: int, learning_rate: float = 1e-3
) -> Callable[[type[nn.Module]], type[nn.Module]]:
    """Class decorator: register an encoder under ``name`` after checking its class attributes (module docstring)."""

    def register(cls: type[nn.Module]) -> type[nn.Module]:
        problems = []
        if len(getattr(cls, "out_channels", ())) != NUM_FEATURES:
            problems.append(f"out_channels must list {NUM_FEATURES} channel counts")
        if not isinstance(getattr(cls, "output_stride", None), int):
            problems.append("output_stride (int) is missing")
        if not getattr(cls, "stem_key", ""):
            problems.append("stem_key (state_dict key of the first conv kernel) is missing")
        if not 0 <= moe_fusion_index < NUM_FEATURES - 1:
            problems.append(f"moe_fusion_index must index a skip (0..{NUM_FEATURES - 2}), got {moe_fusion_index}")
        taken = [n for n, entry in ENCODERS.items() if entry.cls.stem_key == getattr(cls, "stem_key", "")]
        if name in ENCODERS or taken:
            problems.append(f"name {name!r} or its stem_key is already registered ({taken or [name]})")
        if problems:
            raise TypeError(f"cannot register encoder {name!r} ({cls.__name__}): " + "; ".join(problems))
        ENCODERS[name] = EncoderEntry(cls, moe_fusion_index, learning_rate)
        return cls

    return register


def build_encoder(name: str, in_channels: int = 3) -> nn.Module:
    """Build a registered encoder by name."""
    if name not in ENCODERS:
        raise ValueError(f"Unknown encoder {name!r}; choose one of {sorted(ENCODERS)}.")
    return ENCODERS[name].cls(in_channels=in_channels)


def _adapt_input_channels(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """Turn a (O, 3, k, k) RGB stem kernel into (O, in_channels, k, k), keeping the response to grey input."""
    if in_channels == 1:
        return weight.sum(dim=1, keepdim=True)
    repeats = -(-in_channels // weight.shape[1])
    return weight.repeat(1, repeats, 1, 1)[:, :in_channels] * (weight.shape[1] / in_channels)


def _describe(keys: Sequence[str], limit: int = 10) -> str:
    shown = ", ".join(list(keys)[:limit])
    return shown + (f" ... and {len(keys) - limit} more" if len(keys) > limit else "")


def load_encoder_weights(encoder: nn.Module, path: str | os.PathLike) -> None:
    """Load a local torchvision-format state_dict (e.g. ``resnet34-b627a593.pth``) into ``encoder``.

    Keys are matched by name after dropping a ``module.`` prefix and the classifier keys the encoder
    does not use. A stem for ``in_channels != 3`` is adapted from the RGB kernel. Any missing,
    unexpected or mis-shaped key raises a ValueError that lists them. Nothing is downloaded.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"encoder_weights file not found: {path} (weights are never downloaded).")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    state = {k.removeprefix("module."): v for k, v in state.items()}
    ignored = tuple(getattr(encoder, "unused_pretrained_prefixes", ()))
    state = {k: v for k, v in state.items() if not k.startswith(ignored)}

    own = encoder.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise ValueError(
            f"{path} does not match the {type(encoder).__name__} key names. "
            f"Missing from the file: [{_describe(missing)}]. Not in the encoder: [{_describe(unexpected)}]."
        )
    stem_key = encoder.stem_key
    if state[stem_key].ndim == 4 and state[stem_key].shape[1] != own[stem_key].shape[1]:
        state[stem_key] = _adapt_input_channels(state[stem_key], own[stem_key].shape[1])
    mismatched = [
        f"{k}: file {tuple(state[k].shape)} vs encoder {tuple(v.shape)}"
        for k, v in own.items()
        if state[k].shape != v.shape
    ]
    if mismatched:
        raise ValueError(
            f"{path} has tensors of the wrong shape for {type(encoder).__name__}: {_describe(mismatched)}."
        )
    encoder.load_state_dict(state, strict=True)
