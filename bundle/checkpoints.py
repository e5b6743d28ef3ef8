"""Reading and checking checkpoints: which stage a checkpoint holds, and stage-1 -> stage-2 loading."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from torch import nn

from .config import flag

logger = logging.getLogger(__name__)

MOE_PREFIX = "moe."


def load_checkpoint(path: str | os.PathLike) -> object:
    """``torch.load`` of ``path`` on the CPU (``weights_only``).

    Raises FileNotFoundError or ValueError naming the file when it is missing, truncated or corrupt.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises RuntimeError, EOFError, pickle errors ... for broken files
        raise ValueError(f"checkpoint {path} is truncated or corrupt and cannot be read: {error}") from error


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Load a model state_dict from ``path`` on the CPU.

    Accepts a plain state_dict or a dict holding one under ``"model"`` or ``"state_dict"`` (MONAI
    CheckpointSaver, Lightning). Raises FileNotFoundError or ValueError naming the file when it is
    missing, truncated or not a checkpoint.
    """
    checkpoint = load_checkpoint(path)
    for key in ("model", "state_dict"):
        if isinstance(checkpoint, dict) and isinstance(checkpoint.get(key), dict):
            checkpoint = checkpoint[key]
    if not isinstance(checkpoint, dict) or not all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        raise ValueError(f"{path} does not hold a model state_dict (a dict of tensors).")
    return checkpoint


def network_kwargs_from_checkpoint(path: str | os.PathLike) -> dict[str, object]:
    """``encoder``, ``use_moe``, ``in_channels`` and ``out_channels`` of the LH-UTANet saved at ``path``.

    Read from the key names and the stem/head shapes, so evaluation and inference build the network
    the checkpoint needs. ``top_k`` has no parameters and cannot be read back.
    """
    state = read_state_dict(path)
    stems = {"encoder.conv1.weight": "resnet34", "encoder.features.0.0.weight": "mobilenetv2"}
    found = [key for key in stems if key in state]
    if len(found) != 1 or "head.weight" not in state:
        raise ValueError(f"{path} is not an LH-UTANet checkpoint (no encoder stem or head weights found).")
    return {
        "encoder": stems[found[0]],
        "use_moe": any(key.startswith(MOE_PREFIX) for key in state),
        "in_channels": int(state[found[0]].shape[1]),
        "out_channels": int(state["head.weight"].shape[0]),
    }


def final_or_stage1_checkpoint(ckpt_dir: str | os.PathLike) -> str:
    """``ckpt_dir/model.pt`` (stage 2, the final model) if it exists, else ``ckpt_dir/stage1/model.pt``."""
    candidates = [Path(ckpt_dir) / "model.pt", Path(ckpt_dir) / "stage1" / "model.pt"]
    for candidate in candidates:
        if candidate.is_file():
            return str(candidate)
    raise FileNotFoundError(f"no checkpoint found: looked for {candidates[0]} and {candidates[1]}. Train first.")


def check_overwrite(path: str | os.PathLike, overwrite: bool | str, resume: bool | str) -> None:
    """Refuse to start a training whose best-checkpoint file ``path`` exists, unless ``overwrite`` or ``resume``.

    The training would replace it at its first validation; ``models/`` holds the shipped weights. Raises
    FileExistsError naming the file and the ids that choose another folder or allow the replacement.
    """
    if Path(path).exists() and not flag(overwrite, "overwrite") and not flag(resume, "resume"):
        raise FileExistsError(
            f"{path} already exists and this training would overwrite it. Write elsewhere with --save_dir DIR "
            "(stage 1) or --ckpt_dir DIR (both stages), or pass --overwrite true to replace it."
        )


def load_stage1_weights(network: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Load a stage-1 checkpoint into a stage-2 network: every non-MoE key must match in name and shape.

    Logs which keys loaded and which are new (the ``moe.*`` keys). Raises ValueError, naming the file
    and the keys, when a non-MoE key is missing or mis-shaped (e.g. a checkpoint of the other encoder),
    so nothing half-loads silently. Returns ``network``.
    """
    state = read_state_dict(path)
    own = network.state_dict()
    missing = [k for k in own if k not in state and not k.startswith(MOE_PREFIX)]
    mismatched = [f"{k} {tuple(state[k].shape)}->{tuple(v.shape)}" for k, v in own.items() if k in state and state[k].shape != v.shape]
    unexpected = [k for k in state if k not in own]
    if missing or mismatched or unexpected:
        listing = "; ".join(
            f"{label} ({len(keys)}): {', '.join(keys[:8])}{' ...' if len(keys) > 8 else ''}"
            for label, keys in (("missing", missing), ("wrong shape", mismatched), ("unexpected", unexpected))
            if keys
        )
        raise ValueError(
            f"{path} does not fit this stage-2 network ({listing}). Was it trained with another encoder, "
            f"in_channels or out_channels? Pass the same network settings as in stage 1."
        )
    network.load_state_dict(state, strict=False)
    new = [k for k in own if k not in state]
    logger.info("stage 1 -> stage 2: loaded %d tensors from %s; %d new MoE tensors: %s", len(state), path, len(new), ", ".join(new))
    return network
