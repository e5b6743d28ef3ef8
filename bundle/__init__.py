"""LH-UTANet MONAI bundle: networks, data, transforms, checkpoints, fine-tuning, handlers and distributed runs."""

from . import (
    backends,
    checkpoints,
    config,
    data,
    data_check,
    demo,
    distributed,
    finetune,
    formats,
    handlers,
    inference,
    io,
    networks,
    postprocessing,
    splits,
    transforms,
    tta,
)
