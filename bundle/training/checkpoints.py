"""Reading and checking checkpoints: the network settings a checkpoint needs, which stage it holds, where a training
saves (also under MONAI Label), and stage-1 -> stage-2 loading."""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import torch
from torch import nn

from ..config import flag
from ..errors import CheckpointError, MissingFileError
from ..networks import ENCODERS, LightweightHierarchicalUTANet

logger = logging.getLogger(__name__)

MOE_PREFIX = "moe."
NETWORK_SETTINGS_KEY = "network_settings"
# the architecture options of LightweightHierarchicalUTANet beyond the encoder, with the values of the network that
# checkpoints without them (the shipped model.pt included) hold
ARCHITECTURE_DEFAULTS: dict[str, object] = {"full_resolution_skip": 0, "norm": "batch", "deep_supervision": False}
# the ids that rebuild a trained network: the shape settings are fixed by its weights
SHAPE_SETTINGS: tuple[str, ...] = ("encoder", "use_moe", "in_channels", "out_channels", *ARCHITECTURE_DEFAULTS)
NETWORK_SETTINGS: tuple[str, ...] = (*SHAPE_SETTINGS, "top_k", "image_size")
FULL_RESOLUTION_KEY = "full_resolution.0.0.weight"  # (C, in_channels, 3, 3): the full-resolution skip's first conv


def load_checkpoint(path: str | os.PathLike) -> object:
    """``torch.load`` of ``path`` on the CPU (``weights_only``).

    Raises FileNotFoundError or ValueError naming the file when it is missing, truncated or corrupt.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"checkpoint not found: {path}; pass --ckpt_path FILE or --ckpt_dir FOLDER.")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises RuntimeError, EOFError, pickle errors ... for broken files
        raise CheckpointError(
            f"checkpoint {path} is truncated or corrupt, or not a PyTorch checkpoint ({type(error).__name__}); "
            "download or train it again."
        ) from error


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Load a model state_dict from ``path`` on the CPU.

    Accepts a plain state_dict or a dict holding one under ``"model"`` or ``"state_dict"`` (this bundle's
    training, MONAI CheckpointSaver, Lightning). Raises FileNotFoundError or ValueError naming the file when
    it is missing, truncated or not a checkpoint.
    """
    return _state_dict_of(load_checkpoint(path), path)


def _state_dict_of(checkpoint: object, path: str | os.PathLike) -> dict[str, torch.Tensor]:
    for key in ("model", "state_dict"):
        if isinstance(checkpoint, dict) and isinstance(checkpoint.get(key), dict):
            checkpoint = checkpoint[key]
    if not isinstance(checkpoint, dict) or not all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        raise CheckpointError(f"{path} does not hold a model state_dict (a dict of tensors); pass a model checkpoint.")
    return checkpoint


class NetworkSettings:
    """The network ids a training used (NETWORK_SETTINGS), saved beside the weights as the checkpoint entry
    ``network_settings`` (an item of the checkpoint saver's ``save_dict``), so that evaluation, inference,
    export and MONAI Label rebuild the same network from the checkpoint alone.
    """

    def __init__(self, settings: dict[str, object]) -> None:
        self.settings = {
            key: settings[key] if key in settings else ARCHITECTURE_DEFAULTS[key] for key in NETWORK_SETTINGS
        }

    def state_dict(self) -> dict[str, object]:
        return {**self.settings, "image_size": [int(s) for s in self.settings["image_size"]]}

    def load_state_dict(self, state: dict[str, object]) -> None:
        self.settings = dict(state)


def read_network_settings(path: str | os.PathLike) -> dict[str, object]:
    """The NETWORK_SETTINGS of the LH-UTANet checkpoint at ``path`` that it records or that its weights show.

    ``encoder``, ``use_moe``, ``in_channels``, ``out_channels``, ``full_resolution_skip`` and ``deep_supervision``
    are read from the key names and the stem/head shapes (plain state_dicts, like the shipped weights, have nothing
    else); ``norm`` too when it is "batch" (running statistics), else from the ``network_settings`` entry that this
    bundle's training saves, as ``top_k`` and the training ``image_size``.
    Raises ValueError naming the file when it is not an LH-UTANet checkpoint.
    """
    checkpoint = load_checkpoint(path)
    state = _state_dict_of(checkpoint, path)
    stems = {f"encoder.{entry.cls.stem_key}": name for name, entry in ENCODERS.items()}
    found = [key for key in stems if key in state]
    if len(found) != 1 or "head.weight" not in state:
        raise CheckpointError(f"{path} is not an LH-UTANet checkpoint (no encoder stem or head weights found).")
    recorded = checkpoint.get(NETWORK_SETTINGS_KEY, {}) if isinstance(checkpoint, dict) else {}
    batch_norm = any(key.endswith(".running_mean") for key in state)
    return {
        **recorded,
        "encoder": stems[found[0]],
        "use_moe": any(key.startswith(MOE_PREFIX) for key in state),
        "in_channels": int(state[found[0]].shape[1]),
        "out_channels": int(state["head.weight"].shape[0]),
        "full_resolution_skip": int(state[FULL_RESOLUTION_KEY].shape[0]) if FULL_RESOLUTION_KEY in state else 0,
        "norm": "batch" if batch_norm else recorded.get("norm", "group"),
        "deep_supervision": any(key.startswith("aux_heads.") for key in state),
    }


def network_from_checkpoint(path: str | os.PathLike) -> nn.Module:
    """The LH-UTANet that checkpoint ``path`` holds (its :func:`read_network_settings`), weights loaded, in eval mode."""
    settings = read_network_settings(path)
    network = LightweightHierarchicalUTANet(
        **{key: settings[key] for key in SHAPE_SETTINGS}, top_k=int(settings.get("top_k", 2))
    )
    network.load_state_dict(read_state_dict(path), strict=True)
    return network.eval()


class SettingsMismatchError(CheckpointError):
    """Settings given on the command line contradict the checkpoint (one line on the command line,
    :mod:`bundle.errors`)."""


def resolve_network_settings(
    ckpt_path: str | os.PathLike, defaults: dict[str, object], **given: object
) -> dict[str, object]:
    """NETWORK_SETTINGS to build the network that ``ckpt_path`` needs: each from ``given`` when not None, else
    recorded in the checkpoint (:func:`read_network_settings`), else from ``defaults`` (for plain state_dicts:
    ``top_k``, ``image_size``).

    ``top_k`` and ``image_size`` may differ from the training's; a given encoder, use_moe or channel count that
    contradicts the weights raises SettingsMismatchError naming the file and the values it needs.
    """
    unknown = sorted(set(given) - set(NETWORK_SETTINGS))
    if unknown:
        raise ValueError(f"unknown network settings {unknown}; choose from {list(NETWORK_SETTINGS)}")
    if isinstance(given.get("use_moe"), str):  # "--use_moe false" arrives as a string
        given["use_moe"] = flag(given["use_moe"], "use_moe")
    found = read_network_settings(ckpt_path)
    contradictions = [key for key in SHAPE_SETTINGS if given.get(key) is not None and given[key] != found[key]]
    if contradictions:
        passed = " ".join(f"--{key} {json.dumps(given[key])}" for key in contradictions)
        needed = " ".join(f"--{key} {json.dumps(found[key])}" for key in contradictions)
        raise SettingsMismatchError(
            f"error: {ckpt_path} does not fit {passed}: it needs {needed} (or leave these ids out; they are read "
            "from the checkpoint)."
        )
    settings = {**defaults, **found, **{key: value for key, value in given.items() if value is not None}}
    missing = [key for key in NETWORK_SETTINGS if key not in settings]
    if missing:
        raise ValueError(f"{ckpt_path} records no {', '.join(missing)}; pass them, e.g. --image_size \"[128, 128]\".")
    return {key: settings[key] for key in NETWORK_SETTINGS}


def final_or_stage1_checkpoint(ckpt_dir: str | os.PathLike) -> str:
    """``ckpt_dir/model.pt`` (stage 2, the final model) if it exists, else ``ckpt_dir/stage1/model.pt``."""
    candidates = [Path(ckpt_dir) / "model.pt", Path(ckpt_dir) / "stage1" / "model.pt"]
    for candidate in candidates:
        if candidate.is_file():
            return str(candidate)
    raise MissingFileError(
        f"no checkpoint found: looked for {candidates[0]} and {candidates[1]}; train first or pass --ckpt_path FILE."
    )


MONAI_LABEL_ENV = "MONAI_LABEL_APP_DIR"  # set by ``monailabel start_server`` for its app and training runs


def training_save_dir(folder: str | os.PathLike) -> str:
    """Where stage 1 saves: ``folder``; under a MONAI Label server a new ``<folder>/../monailabel/<UTC time>``.

    MONAI Label trains the bundle in place, from the shipped weights and with no way to pass ``--ckpt_dir``;
    a folder of its own per training keeps the shipped ``models/`` untouched and every earlier training.
    """
    if not os.environ.get(MONAI_LABEL_ENV):
        return str(folder)
    root = Path(folder).parent / "monailabel"
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    candidate, suffix = root / stamp, 1
    while candidate.exists():
        suffix += 1
        candidate = root / f"{stamp}-{suffix}"
    return str(candidate)


def training_network_settings(requested: dict[str, object], served_ckpt: str | os.PathLike) -> dict[str, object]:
    """train.json's network settings: ``requested`` (its ids); under a MONAI Label server, with the encoder and
    channels of the model it serves and warm-starts the training from (``served_ckpt``, when it exists), so that
    MONAI Label's non-strict CheckpointLoader finds every weight it can load (``use_moe`` stays as requested).
    ``use_moe`` and ``deep_supervision`` are read with ``flag``: ``--use_moe false`` arrives as the string "false"."""
    requested = {**requested, **{key: flag(requested[key], key) for key in ("use_moe", "deep_supervision")}}
    if not os.environ.get(MONAI_LABEL_ENV) or not Path(served_ckpt).is_file():
        return requested
    served = read_network_settings(served_ckpt)
    return {**requested, **{key: served[key] for key in SHAPE_SETTINGS if key != "use_moe"}}


def stage2_network_settings(requested: dict[str, object], stage1_ckpt: str | os.PathLike) -> dict[str, object]:
    """finetune_moe.json's network settings: :func:`training_network_settings` with the architecture of the stage-1
    checkpoint it starts from (encoder, channels, ``norm``, ``full_resolution_skip``, ``deep_supervision``), so that
    stage 2 of a GroupNorm stage 1, or of the BatchNorm shipped model, builds the network those weights need.
    Each setting that differs from train.json's id is logged."""
    settings = training_network_settings(requested, stage1_ckpt)
    found = read_network_settings(stage1_ckpt)
    for key in (key for key in SHAPE_SETTINGS if key != "use_moe" and settings[key] != found[key]):
        logger.info("stage 2: %s %r from %s (train.json: %r)", key, found[key], stage1_ckpt, settings[key])
        settings[key] = found[key]
    return settings


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
    mismatched = [
        f"{k} {tuple(state[k].shape)}->{tuple(v.shape)}"
        for k, v in own.items()
        if k in state and state[k].shape != v.shape
    ]
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
    logger.info(
        "stage 1 -> stage 2: loaded %d tensors from %s; %d new MoE tensors: %s",
        len(state),
        path,
        len(new),
        ", ".join(new),
    )
    return network
