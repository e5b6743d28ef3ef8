"""LH-UTANet MONAI bundle. Packages by concern, each importing only those before it:

- core (this folder's modules): ``errors``, ``config``, ``formats``, ``atomic_files``, ``distributed``, ``moved``;
- ``networks``: the network, its encoders, blocks and mixture of experts;
- ``data``: layouts, splits, readers, transforms, augmentations, the data check, the demo set, planning;
- ``training``: checkpoints, stage-2 fine-tuning, losses, the training handlers;
- ``backends``: torch, TorchScript and ONNX Runtime predictors, the ONNX cache;
- ``inference``: folder inference, TTA, post-processing, quality score, writers, report, shards;
- ``video``: video decoding, inference and overlays;
- ``evaluation``: per-image metrics and validation Dice per source.
"""

import importlib

from . import (
    atomic_files,
    backends,
    config,
    data,
    distributed,
    errors,
    evaluation,
    formats,
    inference,
    moved,
    networks,
    training,
    video,
)

errors.install_cli_error_hook()
moved.install()


def __getattr__(name: str) -> object:
    """``bundle.tta`` and the other old module names of :data:`bundle.moved.MOVED`, for ``$bundle.tta...`` configs."""
    if f"{__name__}.{name}" in moved.MOVED:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
