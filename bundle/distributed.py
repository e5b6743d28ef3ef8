"""Helpers of the torchrun configs (multi_gpu_train.json, multi_gpu_evaluate.json, multi_gpu_inference.json):
process group, barriers and sums over ranks, buffers, SyncBatchNorm."""

from __future__ import annotations

import torch
import torch.distributed as dist
from ignite.engine import Engine, Events
from torch import nn

from .config import flag


def unwrap(network: nn.Module) -> nn.Module:
    """The module inside DistributedDataParallel / DataParallel wrappers."""
    return getattr(network, "module", network)


def init_process_group(device: torch.device | str) -> None:
    """Join the process group that torchrun describes in the environment: nccl for a CUDA device, gloo otherwise.

    On CUDA the device is made current first, so that nccl and ``ignite.distributed`` use this rank's GPU.
    Does nothing when a group already exists.
    """
    if dist.is_initialized():
        return
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")


def convert_trainable_batchnorm(network: nn.Module, enabled: bool = True) -> nn.Module:
    """Replace every BatchNorm layer that has trainable parameters by a SyncBatchNorm (when ``enabled``, id
    ``sync_batchnorm``); returns ``network``.

    Frozen BatchNorm layers (stage 2, see ``bundle.training.finetune.freeze_except``) normalise with their running
    statistics, so they have nothing to synchronise; they keep their eval-mode hooks. SyncBatchNorm runs on
    CUDA only.
    """
    if not flag(enabled, "sync_batchnorm"):
        return network
    for parent in list(network.modules()):
        for name, child in parent.named_children():
            if isinstance(child, nn.modules.batchnorm._BatchNorm) and any(p.requires_grad for p in child.parameters()):
                setattr(parent, name, nn.SyncBatchNorm.convert_sync_batchnorm(child))
    return network


class BroadcastBuffers:
    """After every training iteration, copy rank 0's buffers (BatchNorm running statistics) to all ranks.

    DistributedDataParallel averages gradients, so the parameters stay equal on all ranks, but each rank
    updates its BatchNorm statistics with its own batch. DDP's own buffer sync (``forward_sync_buffers``, in older
    torch ``broadcast_buffers``) copies rank 0's buffers at the start of the next forward, which leaves them different
    during validation and at the end of training. Broadcasting after the iteration instead (with
    ``forward_sync_buffers=False``, as ``configs/multi_gpu_train.json`` sets it) gives every
    rank the statistics of rank 0, whose weights the checkpoint holds, whenever validation runs.
    """

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.broadcast)

    @staticmethod
    def broadcast(engine: Engine) -> None:
        if not dist.is_initialized():
            return
        for buffer in unwrap(engine.network).buffers():
            dist.broadcast(buffer, src=0)


def world_size() -> int:
    """Processes in the current group; 1 without one."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def barrier() -> None:
    """Wait for every rank (nothing to wait for without a process group or with one rank)."""
    if world_size() > 1:
        dist.barrier()


def sum_over_ranks(counts: dict[str, int]) -> dict[str, int]:
    """``counts`` summed key by key over all ranks (``counts`` itself without a process group)."""
    if world_size() == 1:
        return dict(counts)
    gathered: list[dict[str, int] | None] = [None] * world_size()
    dist.all_gather_object(gathered, counts)
    return {key: sum(part[key] for part in gathered) for key in counts}
