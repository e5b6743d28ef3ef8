"""LH-UTANet network: encoders, blocks, hierarchical MoE and the full model."""

from .blocks import ConvNormAct, DepthwiseSeparableConv, GlobalContext, LightweightASPP, LightweightUpBlock
from .encoders import ENCODERS, MobileNetV2Encoder, ResNet34Encoder, build_encoder, load_encoder_weights
from .lh_utanet import LHUTANet, LightweightDecoder, LightweightHierarchicalUTANet, lightweight_hierarchical_utanet
from .moe import EXPERT_NAMES, HierarchicalMoE, TopKGate, balance_loss, cv_squared
