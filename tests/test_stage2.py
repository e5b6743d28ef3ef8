"""Stage-2 MoE fine-tuning: checked stage-1 loading, freezing, the balance-loss handler and the two-stage pipeline."""

import json
import logging
import subprocess
import sys

import pytest
import torch
from bundle.data.demo import make_demo_dataset
from bundle.networks import LightweightHierarchicalUTANet
from bundle.training.checkpoints import load_stage1_weights, read_network_settings
from bundle.training.finetune import freeze_except
from bundle.training.handlers import MoEBalanceLossHandler
from monai.bundle import ConfigParser

from tests.helpers import CONFIGS, FAST, REPO_ROOT, fast_network_settings, messages, run_bundle, tiny_trainer


def stage1_checkpoint(folder, encoder="mobilenetv2"):
    path = folder / "models" / "stage1" / "model.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    torch.save(LightweightHierarchicalUTANet(encoder=encoder).state_dict(), path)
    return path


def test_one_stage2_epoch_changes_only_the_moe(tmp_path):
    dataset = make_demo_dataset(tmp_path / "demo", num_images=12, size=64)
    stage1 = torch.load(stage1_checkpoint(tmp_path), weights_only=True)
    workflow = run_bundle(
        ["train.json", "finetune_moe.json"], bundle_root=str(tmp_path), dataset_dir=dataset, epochs=1, **FAST
    )
    network = workflow.parser.get_parsed_content("network")
    after = network.state_dict()
    for key, value in stage1.items():  # frozen weights and BatchNorm buffers: bit-identical
        assert torch.equal(after[key].cpu(), value), key
    moe_keys = [k for k in after if k.startswith("moe.") and after[k].is_floating_point()]
    fresh = LightweightHierarchicalUTANet(encoder="mobilenetv2", use_moe=True).state_dict()
    assert any(not torch.equal(after[k].cpu(), fresh[k]) for k in moe_keys if k.startswith("moe.dockers"))
    optimizer = workflow.parser.get_parsed_content("optimizer")
    optimised = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert optimised == {id(p) for n, p in network.named_parameters() if n.startswith("moe.")}
    final = tmp_path / "models" / "model.pt"
    assert read_network_settings(final)["use_moe"] is True
    usage = json.loads((tmp_path / "eval" / "moe_usage.json").read_text())
    assert usage["epochs"][0]["usage"].keys() == {"gate0", "gate1", "gate2", "gate3"}


def one_training_iteration(loss_weight: float, collapse_gate: bool = False) -> LightweightHierarchicalUTANet:
    """Run SupervisedTrainer for one iteration with the MoE-loss handler; return the network (grads kept)."""
    torch.manual_seed(0)
    network = LightweightHierarchicalUTANet(encoder="mobilenetv2", use_moe=True)
    if collapse_gate:
        torch.nn.init.zeros_(network.moe.gates[0].logits.weight)
        network.moe.gates[0].logits.bias.data = torch.tensor([9.0, 5.0, 0.0, 0.0])  # "small" gets ~98%
    batch = [{"image": torch.randn(4, 3, 64, 64), "label": (torch.rand(4, 1, 64, 64) > 0.5).float()}]
    tiny_trainer(network, batch, [MoEBalanceLossHandler(loss_weight=loss_weight)], lr=0.0).run()
    return network


def test_balance_loss_reaches_backward():
    """Dockers start at zero, so only the balance loss reaches the gates in the first step."""
    with_lambda = one_training_iteration(loss_weight=0.1)
    without = one_training_iteration(loss_weight=0.0)
    for gate_with, gate_without in zip(with_lambda.moe.gates, without.moe.gates):
        assert gate_with.logits.weight.grad.abs().sum() > 0
        assert gate_without.logits.weight.grad is None or gate_without.logits.weight.grad.abs().sum() == 0


def test_collapse_warning_names_the_remedies(caplog):
    with caplog.at_level(logging.WARNING, logger="bundle.training.handlers.moe_loss"):
        one_training_iteration(loss_weight=0.01, collapse_gate=True)
    messages = [r.getMessage() for r in caplog.records if "collapsed" in r.getMessage()]
    assert any("gate 0" in m and "moe_loss_weight" in m for m in messages), messages


def test_handler_leaves_networks_without_moe_alone(caplog):
    """Peer networks run through the same configs: the handler only logs one info line."""
    from monai.networks.nets import BasicUNet

    network = BasicUNet(spatial_dims=2, in_channels=3, out_channels=1, features=(4, 4, 8, 8, 16, 4))
    batch = {"image": torch.randn(2, 3, 32, 32), "label": (torch.rand(2, 1, 32, 32) > 0.5).float()}
    trainer = tiny_trainer(network, [batch, batch], [MoEBalanceLossHandler(loss_weight=0.1)], lr=0.0)
    with caplog.at_level(logging.INFO, logger="bundle.training.handlers.moe_loss"):
        trainer.run()
    with torch.no_grad():
        expected = torch.nn.BCEWithLogitsLoss()(network(batch["image"]), batch["label"])
    assert float(trainer.state.output[0]["loss"]) == pytest.approx(expected.item(), rel=1e-5)
    handler_messages = [r.getMessage() for r in caplog.records if r.name == "bundle.training.handlers.moe_loss"]
    assert handler_messages == ["BasicUNet has no MoE balance loss: nothing to add."]
    assert "moe_balance_loss" not in trainer.state.metrics


def test_other_encoder_checkpoint_is_refused(tmp_path):
    resnet_stage1 = stage1_checkpoint(tmp_path, encoder="resnet34")
    network = LightweightHierarchicalUTANet(encoder="mobilenetv2", use_moe=True)
    with pytest.raises(ValueError, match="another encoder") as error:
        load_stage1_weights(network, resnet_stage1)
    assert str(resnet_stage1) in str(error.value)
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        load_stage1_weights(network, tmp_path / "nothing.pt")


@pytest.mark.parametrize("given, expected", [("false", False), ("True", True), (False, False)])
def test_use_moe_from_the_command_line_is_read_as_a_flag(given, expected):
    """``--use_moe false`` reaches train.json as the string "false": the network must not get the MoE."""
    parser = ConfigParser()
    parser.read_config([str(CONFIGS / "train.json"), str(CONFIGS / "finetune_moe.json")])
    parser.update({"use_moe": given})
    assert parser.get_parsed_content("network_settings")["use_moe"] is expected
    assert (parser.get_parsed_content("network_def").moe is not None) is expected
    parser.update({"use_moe": "no"})
    with pytest.raises(RuntimeError) as error:
        parser.get_parsed_content("network_settings", lazy=False)
    assert "use_moe must be true or false, got 'no'" in messages(error.value)


def test_freezing_keeps_batchnorm_in_eval_mode():
    network = freeze_except(LightweightHierarchicalUTANet(encoder="mobilenetv2", use_moe=True))
    stem_norm = network.encoder.features[0][1]
    before = stem_norm.running_mean.clone()
    network.train()(torch.randn(2, 3, 64, 64))
    assert torch.equal(stem_norm.running_mean, before)
    assert network.moe.fuse.norm.running_mean.abs().sum() > 0  # the MoE's own BatchNorm still trains
    with pytest.raises(ValueError, match="nothing would train"):
        freeze_except(network, ["no_such_module"])


def test_two_stage_pipeline_ends_with_moe_model(tmp_path):
    dataset = make_demo_dataset(tmp_path / "demo", num_images=10, size=64)
    overrides = [
        f"--bundle_root={tmp_path}",
        f"--dataset_dir={dataset}",
        "--image_size=[64,64]",
        "--batch_size=4",
        "--num_workers=0",
        "--encoder=mobilenetv2",
    ]
    command = [sys.executable, "scripts/train_two_stage.py", "--stage1-epochs", "1", "--stage2-epochs", "1", *overrides]
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert (tmp_path / "models" / "stage1" / "model.pt").is_file()
    settings = read_network_settings(tmp_path / "models" / "model.pt")
    assert settings == fast_network_settings(use_moe=True)
