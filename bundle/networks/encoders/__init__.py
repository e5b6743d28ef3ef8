"""LH-UTANet encoders: the registry (:mod:`.base`) and one module per encoder, each registering itself on import."""

from . import resnet, mobilenetv2, efficientnet  # noqa: F401  # isort: skip  (registration, in table order)
from .base import DEFAULT_ENCODER, ENCODERS, EncoderEntry, build_encoder, load_encoder_weights, register_encoder
from .efficientnet import EfficientNetB0Encoder
from .mobilenetv2 import MobileNetV2Encoder
from .resnet import ResNet34Encoder

__all__ = [
    "DEFAULT_ENCODER",
    "ENCODERS",
    "EfficientNetB0Encoder",
    "EncoderEntry",
    "MobileNetV2Encoder",
    "ResNet34Encoder",
    "build_encoder",
    "load_encoder_weights",
    "register_encoder",
]
