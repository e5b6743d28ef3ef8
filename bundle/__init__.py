"""LH-UTANet MONAI bundle: networks, data, transforms, checkpoints, fine-tuning, handlers and distributed runs."""

from . import (
    atomic_files,
    backends,
    checkpoints,
    config,
    data,
    data_check,
    demo,
    distributed,
    errors,
    finetune,
    formats,
    handlers,
    inference,
    networks,
    onnx_cache,
    postprocessing,
    readers,
    report,
    splits,
    transforms,
    tta,
    writers,
)

errors.install_cli_error_hook()
