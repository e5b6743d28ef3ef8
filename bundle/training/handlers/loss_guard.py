"""Stop training at the first non-finite loss, before it reaches the weights or any checkpoint."""

from __future__ import annotations

import torch
from ignite.engine import Engine
from monai.engines.utils import IterationEvents
from monai.utils import CommonKeys


class StopOnNonFiniteLoss:
    """Raises FloatingPointError when the training loss is NaN or infinite, before the optimizer step.

    It runs at MONAI's ``BACKWARD_COMPLETED``, after every ``LOSS_COMPLETED`` handler has added its term (the
    MoE balance loss), whatever the handler order, and before ``optimizer.step()``: no non-finite update reaches
    the weights and nothing is saved after it. The best model and the resume checkpoint of the last completed
    epoch stay as they were, and ``monai.bundle run`` exits non-zero. ignite's ``TerminateOnNan`` checks after the
    step and ends the run as completed (exit code 0).
    """

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(IterationEvents.BACKWARD_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        loss = engine.state.output[CommonKeys.LOSS]
        if bool(torch.isfinite(loss).all()):
            return
        state = engine.state
        in_epoch = (state.iteration - 1) % state.epoch_length + 1 if state.epoch_length else state.iteration
        raise FloatingPointError(
            f"non-finite training loss ({float(loss.detach().float().mean())}) at epoch {state.epoch}, iteration "
            f"{in_epoch} of {state.epoch_length}: training stopped before this step. The checkpoints written so far "
            f"are kept: the best model, and the state at the end of epoch {state.epoch - 1} (--resume true). "
            "Try a lower learning_rate, check the data (scripts/check_data.py), or run without amp (--amp false)."
        )
