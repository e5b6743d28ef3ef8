"""Training handlers whose order matters: what the code guarantees whatever the order, and what it refuses."""

from __future__ import annotations

import pytest
import torch
from bundle.networks import LightweightHierarchicalUTANet
from bundle.training.handlers import MoEBalanceLossHandler, ResumeCheckpoint, StopOnNonFiniteLoss
from ignite.engine import Events
from monai.engines import SupervisedEvaluator
from monai.handlers import ValidationHandler

from tests.helpers import tiny_trainer


def trainer(network: torch.nn.Module, handlers: list):
    torch.manual_seed(0)
    data = [{"image": torch.rand(2, 3, 32, 32), "label": torch.rand(2, 1, 32, 32).round()} for _ in range(2)]
    return tiny_trainer(network, data, handlers)


def test_non_finite_moe_term_is_caught_with_the_moe_handler_after_the_guard():
    """finetune_moe.json appends the MoE handler after train.json's guard; the guard still sees the full loss."""
    network = LightweightHierarchicalUTANet(encoder="mobilenetv2", use_moe=True)
    before = {name: value.detach().clone() for name, value in network.named_parameters()}
    engine = trainer(network, [StopOnNonFiniteLoss(), MoEBalanceLossHandler(loss_weight=float("nan"))])
    with pytest.raises(FloatingPointError, match="non-finite training loss"):
        engine.run()
    for name, value in network.named_parameters():  # no optimizer step was taken
        assert torch.equal(value, before[name]), name


def test_moe_usage_is_recorded_before_epoch_end_handlers(tmp_path):
    """The epoch's usage record exists when EPOCH_COMPLETED handlers (the resume checkpoint) run."""
    network = LightweightHierarchicalUTANet(encoder="mobilenetv2", use_moe=True)
    seen = []
    engine = trainer(network, [])
    engine.add_event_handler(Events.EPOCH_COMPLETED, lambda e: seen.append(len(e.state.moe_usage_history)))
    MoEBalanceLossHandler(output_dir=tmp_path).attach(engine)  # attached after the epoch-end handler
    engine.run()
    assert seen == [1] and (tmp_path / "moe_usage.json").is_file()


def test_resume_checkpoint_before_validation_is_refused_naming_both(tmp_path):
    network = LightweightHierarchicalUTANet(encoder="mobilenetv2")
    evaluator = SupervisedEvaluator(device=torch.device("cpu"), val_data_loader=[], network=network)
    resume = ResumeCheckpoint(tmp_path / "resume.pt", {"model": network})
    engine = trainer(network, [resume, ValidationHandler(validator=evaluator, epoch_level=True, interval=1)])
    with pytest.raises(ValueError, match="ValidationHandler comes after ResumeCheckpoint"):
        engine.run()
    assert not (tmp_path / "resume.pt").exists()
