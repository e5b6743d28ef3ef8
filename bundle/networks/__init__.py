"""LH-UTANet network: encoders, blocks, hierarchical MoE and the full model."""

from .blocks import (
    NORMS,
    ConvNormAct,
    DepthwiseSeparableConv,
    FullResolutionSkip,
    GlobalContext,
    LightweightASPP,
    LightweightUpBlock,
    replace_batchnorm,
)
from .compat import LHUTANetWithBalanceLoss, lightweight_hierarchical_utanet
from .encoders import (
    DEFAULT_ENCODER,
    ENCODERS,
    EfficientNetB0Encoder,
    MobileNetV2Encoder,
    ResNet34Encoder,
    build_encoder,
    load_encoder_weights,
    register_encoder,
)
from .lh_utanet import LHUTANet, LightweightDecoder, LightweightHierarchicalUTANet
from .moe import EXPERT_NAMES, HierarchicalMoE, TopKGate, balance_loss, cv_squared
