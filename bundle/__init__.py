"""LH-UTANet MONAI bundle: networks, data, transforms, checkpoints, fine-tuning, handlers and distributed runs."""

from . import (
    checkpoints,
    config,
    data,
    data_check,
    distributed,
    finetune,
    handlers,
    inference,
    io,
    networks,
    transforms,
)
