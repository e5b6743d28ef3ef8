"""Faults injected into bundle runs by the fault suite (tests/test_reliability.py), through config overrides."""

from __future__ import annotations

import os
import signal

import torch
from ignite.engine import Engine, Events


def _in_epoch(engine: Engine) -> int:
    if engine.state.epoch_length is None:  # a data iterable without a length (folder inference), in its first epoch
        return engine.state.iteration
    return (engine.state.iteration - 1) % engine.state.epoch_length + 1


class InterruptionError(Exception):
    """What :class:`InterruptAt` raises: an interruption the run cannot recover from by itself."""


class InterruptAt:
    """Handler that stops the run after ``iteration`` (counted within the epoch) of ``epoch``.

    ``kill``: SIGKILL to its own process, like the OOM killer or a scheduler; otherwise raise :class:`InterruptionError`.
    """

    def __init__(self, epoch: int, iteration: int, kill: bool = False) -> None:
        self.epoch, self.iteration, self.kill = epoch, iteration, kill

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        if engine.state.epoch == self.epoch and _in_epoch(engine) == self.iteration:
            if self.kill:
                os.kill(os.getpid(), signal.SIGKILL)
            raise InterruptionError(f"interrupted in epoch {self.epoch}, iteration {self.iteration}")


class NanLossAt(torch.nn.Module):
    """``loss`` that returns NaN from the ``step``-th training step on (1-based; evaluation calls, without
    gradients, are not counted and left alone).
    """

    def __init__(self, loss: torch.nn.Module, step: int) -> None:
        super().__init__()
        self.loss, self.step, self.steps = loss, step, 0

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        value = self.loss(pred, target)
        if not pred.requires_grad:
            return value
        self.steps += 1
        return value * float("nan") if self.steps >= self.step else value
