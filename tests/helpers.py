"""Helpers shared by the bundle tests: tiny datasets and running bundle configs in-process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from bundle.networks import LightweightHierarchicalUTANet
from monai.bundle import ConfigWorkflow
from monai.engines import SupervisedTrainer
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIGS = REPO_ROOT / "configs"

# tiny but real settings: 64 px, MobileNetV2, no worker processes
FAST = {"image_size": [64, 64], "batch_size": 4, "num_workers": 0, "encoder": "mobilenetv2", "val_interval": 1}


def fast_network_settings(**changes) -> dict:
    """The ``network_settings`` that a :data:`FAST` training records in its checkpoint, with ``changes``."""
    settings = {"encoder": "mobilenetv2", "use_moe": False, "in_channels": 3, "out_channels": 1, "top_k": 2}
    settings |= {"image_size": [64, 64], "full_resolution_skip": 0, "norm": "group", "deep_supervision": False}
    return settings | changes


def write_pair(folder: Path, name: str, image: np.ndarray, mask: np.ndarray, image_ext: str = ".png") -> None:
    """Write images/<name><image_ext> and masks/<name>.png under ``folder``."""
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "masks").mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(folder / "images" / f"{name}{image_ext}")
    Image.fromarray(mask).save(folder / "masks" / f"{name}.png")


def make_rectangles_dataset(folder: Path, count: int = 6, shape: tuple[int, int] = (50, 70), seed: int = 0) -> Path:
    """``count`` non-square RGB images, each with one bright rectangle that is its 0/255 mask."""
    rng = np.random.default_rng(seed)
    for index in range(count):
        image = rng.integers(0, 80, (*shape, 3), dtype=np.uint8)
        mask = np.zeros(shape, np.uint8)
        top, left = rng.integers(2, shape[0] // 2), rng.integers(2, shape[1] // 2)
        mask[top : top + shape[0] // 3, left : left + shape[1] // 3] = 255
        image[mask > 0] = (220, 60, 60)
        write_pair(folder, f"case_{index:02d}", image, mask)
    return folder


def save_checkpoint(path, all_foreground):
    """A stage-2 MobileNetV2 checkpoint: all foreground (head bias +10), or random with a mixed mask."""
    torch.manual_seed(0)
    network = LightweightHierarchicalUTANet(encoder="mobilenetv2", use_moe=True).eval()
    with torch.no_grad():
        if all_foreground:
            network.head.weight.zero_()
            network.head.bias.fill_(10.0)
        else:  # spread the logits (std 3) around 0 so that about half of each mask is foreground
            example = torch.randn(2, 3, 64, 64)
            network.head.bias.zero_()
            network.head.weight.mul_(3 / network(example).std())
            network.head.bias.fill_(-network(example).median().item())
    torch.save(network.state_dict(), path)
    return path


def run_bundle(config_files: list[str], workflow_type: str = "train", **overrides) -> ConfigWorkflow:
    """Run configs/<files> like ``python -m monai.bundle run`` and return the finished workflow.

    ``workflow_type`` "train" also checks the config has MONAI's required training properties.
    """
    workflow = ConfigWorkflow(
        config_file=[str(CONFIGS / name) for name in config_files],
        meta_file=str(CONFIGS / "metadata.json"),
        logging_file=str(CONFIGS / "logging.conf"),
        workflow_type=workflow_type,
        **overrides,
    )
    workflow.initialize()
    if workflow_type == "train":
        assert workflow.check_properties() in (None, []), "train.json lacks a property that MONAI Label needs"
    workflow.run()
    workflow.finalize()
    return workflow


def messages(error: BaseException | None) -> str:
    """Messages of ``error`` and its causes (MONAI wraps errors raised by config expressions)."""
    chain = []
    while error is not None:
        chain.append(str(error))
        error = error.__cause__ or error.__context__
    return " | ".join(chain)


def bundle_run_arguments(config_files: list[str | Path], **overrides) -> list[str]:
    """``monai.bundle run`` with its arguments, for ``python -m``: ``configs/<name>`` (or the path) of each config
    file, the metadata and logging files, then ``--key value`` for each override (non-strings as JSON).
    """
    command = [
        "monai.bundle",
        "run",
        "--config_file",
        repr([str(CONFIGS / name) for name in config_files]),
        "--meta_file",
        str(CONFIGS / "metadata.json"),
        "--logging_file",
        str(CONFIGS / "logging.conf"),
    ]
    for key, value in overrides.items():
        command += [f"--{key}", value if isinstance(value, str) else json.dumps(value)]
    return command


def tiny_trainer(network: torch.nn.Module, batches: list[dict], handlers: list, lr: float = 0.1) -> SupervisedTrainer:
    """A one-epoch MONAI SupervisedTrainer on ``batches`` (SGD, BCE with logits) with ``handlers``."""
    return SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=1,
        train_data_loader=batches,
        network=network,
        optimizer=torch.optim.SGD(network.parameters(), lr=lr),
        loss_function=torch.nn.BCEWithLogitsLoss(),
        train_handlers=handlers,
    )


def export_checkpoint(ckpt: Path, folder: Path) -> tuple[Path, Path]:
    """TorchScript (MONAI's ``ckpt_export`` with inference.json) and ONNX (scripts/export_onnx.py) exports of
    ``ckpt`` into ``folder``, each built from the checkpoint alone; returns (model.ts, model.onnx)."""
    ts_path, onnx_path = folder / "model.ts", folder / "model.onnx"
    export = [sys.executable, "-m", "monai.bundle", "ckpt_export", "network_def", "--filepath", str(ts_path)]
    export += ["--ckpt_file", str(ckpt), "--key_in_ckpt", "model", "--meta_file", str(CONFIGS / "metadata.json")]
    export += ["--config_file", str(CONFIGS / "inference.json"), "--ckpt_path", str(ckpt)]
    onnx = [sys.executable, "scripts/export_onnx.py", "--ckpt_file", str(ckpt), "--filepath", str(onnx_path)]
    for command in (export, onnx):
        result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, check=False)
        assert result.returncode == 0, result.stderr[-2000:]
    return ts_path, onnx_path
