"""LH-UTANet MONAI bundle: networks, data, transforms, checkpoints, fine-tuning and handlers."""

from . import checkpoints, data, finetune, handlers, inference, io, networks, transforms
