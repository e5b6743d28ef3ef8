"""Train for a wall-clock budget instead of a number of epochs, with the learning rate annealed over the time."""

from __future__ import annotations

import logging
import math
import time

import torch
from ignite.engine import Engine, Events

logger = logging.getLogger(__name__)


class TimeBudget:
    """Ends training at the first epoch start from which the next epoch would overrun ``minutes``, and anneals
    every param group's learning rate from its initial value to 0 on a cosine over the budget (set at each
    iteration, so it replaces the epoch schedule).

    Whole epochs run (the validation at their end included), so checkpoints are selected as in an epoch-budget
    run; the first epoch always runs. An epoch's cost is estimated by the previous one's (training + validation).
    For equal-time comparisons (``scripts/compare_models.py --minutes``).

    Args:
        minutes: the wall-clock budget from the trainer's start.
        optimizer: the optimizer whose learning rates are annealed.
    """

    def __init__(self, minutes: float, optimizer: torch.optim.Optimizer) -> None:
        if minutes <= 0:
            raise ValueError(f"minutes must be > 0, got {minutes}.")
        self.seconds, self.optimizer = 60.0 * minutes, optimizer
        self.base_lrs = [group["lr"] for group in optimizer.param_groups]
        self.start = self.epoch_start = 0.0

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self.started)
        engine.add_event_handler(Events.EPOCH_STARTED, self.epoch_started)
        engine.add_event_handler(Events.ITERATION_STARTED, self.anneal)

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def started(self, engine: Engine) -> None:
        self.start = time.perf_counter()

    def epoch_started(self, engine: Engine) -> None:
        now = self.elapsed()
        if engine.state.epoch > 1 and now + (now - self.epoch_start) > self.seconds:
            logger.info(
                "time budget: %.1f of %.1f min used after %d epoch(s)",
                now / 60,
                self.seconds / 60,
                engine.state.epoch - 1,
            )
            engine.terminate()
        self.epoch_start = now

    def anneal(self, engine: Engine) -> None:
        factor = 0.5 * (1 + math.cos(math.pi * min(self.elapsed() / self.seconds, 1.0)))
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = base * factor
