"""LH-UTANet MONAI bundle: networks, data, transforms, checkpoints and handlers."""

from . import checkpoints, data, handlers, io, networks, transforms
