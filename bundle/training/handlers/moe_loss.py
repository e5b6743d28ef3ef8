"""Ignite handler that adds the MoE balance loss to the training loss and monitors expert usage."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import ignite.distributed as idist
import torch
from ignite.engine import Engine, Events
from monai.engines.utils import IterationEvents
from monai.utils import CommonKeys

from ...atomic_files import atomic_write_json
from ...distributed import unwrap

logger = logging.getLogger(__name__)

HISTORY_KEY = "moe_usage_history"  # engine.state attribute: the records of moe_usage.json, one per epoch

COLLAPSE_REMEDIES = (
    "the reference design's remedies: raise moe_loss_weight (lambda, e.g. 0.02-0.1), add training data, check the gate "
    "initialisation, and make sure stage 1 was trained before the MoE (end-to-end training can collapse)."
)


class MoEBalanceLossHandler:
    """Adds ``loss_weight * network.balance_loss`` to the trainer's loss before backward; logs expert usage.

    MONAI's SupervisedTrainer fires ``LOSS_COMPLETED`` between computing the loss and calling
    ``backward()``, so the sum is what gets differentiated. At the last iteration of every epoch (before any
    ``EPOCH_COMPLETED`` handler, so its place in ``train#handlers`` does not matter) it stores, in
    ``engine.state.metrics`` (picked up by StatsHandler and TensorBoardStatsHandler), the mean balance
    term as ``moe_balance_loss`` and each gate's share of gate mass per expert as
    ``moe_usage/gate{g}/{expert}``; it writes the history to ``output_dir/moe_usage.json`` and warns when
    one expert takes more than ``collapse_threshold`` of a gate's mass. Networks without a balance loss
    (stage 1, MONAI peers) are left alone after one info line. The history is kept in the trainer's state
    (``moe_usage_history``, one of its ``state_dict`` keys), so a resumed run keeps the epochs before it.

    Under DistributedDataParallel each rank adds the balance term of its own batch (DDP averages the
    gradients, so the update follows the mean of the per-rank terms). The gate mass, the balance sum and
    the iteration count are summed over all ranks at the end of each epoch, so the logged values describe
    all the data; only rank 0 warns and writes ``moe_usage.json``. Without a process group the sums are no-ops.

    Args:
        loss_weight: lambda; the LH-UTANet reference design recommends 0.005-0.02 (allowed 0.001-0.1), 0 only monitors.
        output_dir: folder for ``moe_usage.json``; None writes nothing.
        collapse_threshold: share of a gate's mass above which one expert counts as collapsed.
    """

    def __init__(
        self, loss_weight: float = 0.01, output_dir: str | os.PathLike | None = None, collapse_threshold: float = 0.8
    ) -> None:
        if loss_weight < 0:
            raise ValueError(f"moe_loss_weight must be >= 0, got {loss_weight}.")
        self.loss_weight = loss_weight
        self.summary_path = Path(output_dir) / "moe_usage.json" if output_dir is not None else None
        self.collapse_threshold = collapse_threshold
        self.reported_no_moe = False
        self._reset()

    def _reset(self) -> None:
        self.gate_mass: torch.Tensor | None = None
        self.balance_sum, self.iterations = 0.0, 0

    def attach(self, engine: Engine) -> None:
        setattr(engine.state, HISTORY_KEY, [])
        engine.state_dict_user_keys.append(HISTORY_KEY)
        engine.add_event_handler(IterationEvents.LOSS_COMPLETED, self.add_balance_loss)
        engine.add_event_handler(Events.EPOCH_STARTED, lambda _: self._reset())
        engine.add_event_handler(Events.ITERATION_COMPLETED(event_filter=self.is_last_iteration), self.epoch_completed)

    @staticmethod
    def is_last_iteration(engine: Engine, iteration: int) -> bool:
        return engine.state.epoch_length is not None and iteration % engine.state.epoch_length == 0

    def has_moe(self, engine: Engine) -> bool:
        return bool(getattr(unwrap(engine.network), "gate_weights", None))

    def add_balance_loss(self, engine: Engine) -> None:
        network = unwrap(engine.network)
        if not self.has_moe(engine):
            if not self.reported_no_moe:
                logger.info("%s has no MoE balance loss: nothing to add.", type(network).__name__)
                self.reported_no_moe = True
            return
        balance = network.balance_loss
        engine.state.output[CommonKeys.LOSS] = engine.state.output[CommonKeys.LOSS] + self.loss_weight * balance
        mass = torch.stack([weights.sum(dim=0) for weights in network.gate_weights]).float().cpu()  # (gates, experts)
        self.gate_mass = mass if self.gate_mass is None else self.gate_mass + mass
        self.balance_sum += float(balance.detach())
        self.iterations += 1

    def epoch_completed(self, engine: Engine) -> None:
        if self.gate_mass is None:
            return
        network = unwrap(engine.network)
        # sums over all ranks (no-ops without a process group)
        gate_mass = idist.all_reduce(self.gate_mass.clone())
        totals = idist.all_reduce(torch.tensor([self.balance_sum, self.iterations], dtype=torch.float64))
        is_rank0 = idist.get_rank() == 0
        experts = list(getattr(getattr(network, "moe", None), "expert_names", range(gate_mass.shape[1])))
        shares = gate_mass / gate_mass.sum(dim=1, keepdim=True).clamp_min(1e-12)
        record = {"epoch": engine.state.epoch, "balance_loss": float(totals[0] / totals[1].clamp_min(1)), "usage": {}}
        engine.state.metrics["moe_balance_loss"] = record["balance_loss"]
        for gate, gate_shares in enumerate(shares.tolist()):
            record["usage"][f"gate{gate}"] = dict(zip(map(str, experts), gate_shares))
            for expert, share in zip(experts, gate_shares):
                engine.state.metrics[f"moe_usage/gate{gate}/{expert}"] = share
            top = max(range(len(gate_shares)), key=gate_shares.__getitem__)
            if is_rank0 and gate_shares[top] > self.collapse_threshold:
                logger.warning(
                    "MoE gate %d collapsed in epoch %d: expert '%s' takes %.0f%% of its mass (> %.0f%%). Try %s",
                    gate,
                    engine.state.epoch,
                    experts[top],
                    100 * gate_shares[top],
                    100 * self.collapse_threshold,
                    COLLAPSE_REMEDIES,
                )
        history = getattr(engine.state, HISTORY_KEY)
        history.append(record)
        if is_rank0 and self.summary_path is not None:
            atomic_write_json(
                self.summary_path, {"moe_loss_weight": self.loss_weight, "experts": experts, "epochs": history}
            )
