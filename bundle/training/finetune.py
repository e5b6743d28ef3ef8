"""Stage-2 preparation: load the stage-1 weights, freeze the base network, keep its BatchNorm in eval mode."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence

from torch import nn

from .checkpoints import load_stage1_weights

logger = logging.getLogger(__name__)

DEFAULT_TRAINABLE_PATTERNS: tuple[str, ...] = ("moe",)  # the MoE: fuse, experts, gates, dockers


def _matches(name: str, patterns: Sequence[str]) -> bool:
    """True when a pattern (a regex) matches at the start of one of the dotted components of ``name``."""
    return any(re.search(rf"(^|\.){pattern}", name) for pattern in patterns)


def _keep_eval(module: nn.Module, _inputs: object) -> None:
    """Forward pre-hook: a frozen BatchNorm normalises with its running statistics and never updates them."""
    module.training = False


def freeze_except(network: nn.Module, trainable_patterns: Sequence[str] = DEFAULT_TRAINABLE_PATTERNS) -> nn.Module:
    """Freeze every parameter whose name does not match ``trainable_patterns``; returns ``network``.

    BatchNorm layers whose parameters are all frozen stay in eval mode even under ``network.train()``
    (which MONAI's trainer calls every iteration), so their running statistics stay bit-identical.
    Raises ValueError when no parameter matches, since nothing would train.
    """
    trainable = 0
    for name, parameter in network.named_parameters():
        parameter.requires_grad_(_matches(name, trainable_patterns))
        trainable += parameter.numel() if parameter.requires_grad else 0
    if trainable == 0:
        raise ValueError(
            f"no parameter matches the trainable patterns {list(trainable_patterns)}; nothing would train."
        )
    frozen_norms = 0
    for module in network.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and not any(
            p.requires_grad for p in module.parameters()
        ):
            module.register_forward_pre_hook(_keep_eval)
            frozen_norms += 1
    total = sum(p.numel() for p in network.parameters())
    logger.info(
        "trainable: %d of %d parameters (patterns %s); %d frozen BatchNorm layers kept in eval mode",
        trainable,
        total,
        list(trainable_patterns),
        frozen_norms,
    )
    return network


def prepare_moe_finetuning(
    network: nn.Module, stage1_ckpt: str | os.PathLike, trainable_patterns: Sequence[str] = DEFAULT_TRAINABLE_PATTERNS
) -> nn.Module:
    """Stage 2: load ``stage1_ckpt`` into the MoE network (checked, see ``load_stage1_weights``), then freeze the base."""
    return freeze_except(load_stage1_weights(network, stage1_ckpt), trainable_patterns)
