"""Backends that run a checkpoint: torch, TorchScript, ONNX Runtime (fp32, int8), ensembles, and the verified ONNX
cache of ``backend auto``."""

from ..moved import package_getattr
from .onnx_cache import default_onnx_cache
from .predictors import (
    EnsemblePredictor,
    OnnxPredictor,
    Predictor,
    export_onnx,
    load_ensemble,
    load_predictor,
    logits_of,
    probabilities,
)

__getattr__ = package_getattr(__name__)
