"""torchrun on two CPU processes (gloo): both training stages through multi_gpu_train.json (with the MoE statistics
across ranks), evaluation through multi_gpu_evaluate.json, and SyncBatchNorm conversion."""

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from bundle.distributed import convert_trainable_batchnorm
from bundle.networks import LightweightHierarchicalUTANet
from bundle.training.checkpoints import read_state_dict
from bundle.training.finetune import freeze_except
from monai.bundle import ConfigParser

from tests.helpers import CONFIGS, FAST, REPO_ROOT, bundle_run_arguments, make_rectangles_dataset, run_bundle

STAGE_CONFIGS = {1: ["train.json"], 2: ["train.json", "finetune_moe.json"]}
# 10 images, 3 for validation: the two ranks validate 2 and 1 images; 7 training images in batches of 2
SETTINGS = {**FAST, "batch_size": 2, "val_fraction": 0.3, "epochs": 1}
# each rank saves its weights, its validator's metrics and its MoE handler's sums of the last epoch (stage 2; an empty
# list in stage 1, which has no MoE handler) (RANK is torchrun's)
SAVE_RANK_STATE = {
    "+finalize": [
        (
            "$torch.save({'weights': @unwrapped_network.state_dict(), 'metrics': @validate#evaluator.state.metrics, "
            "'moe': [{'gate_mass': h.gate_mass.tolist() if h.gate_mass is not None else None, "
            "'balance_sum': h.balance_sum, 'iterations': h.iterations} "
            "for h in @train#handlers if isinstance(h, bundle.training.handlers.MoEBalanceLossHandler)][:1]}, "
            "@bundle_root + '/rank' + os.environ['RANK'] + '.pt')"
        )
    ]
}


def torchrun(config_files: list[str | Path], **overrides) -> str:
    """``torchrun --nproc_per_node 2 -m monai.bundle run`` on the CPU; returns its output, asserting it succeeded."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m"]
    result = subprocess.run(
        command + bundle_run_arguments(config_files, **overrides),
        check=False,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-5000:]
    return output


def metric_lines(output: str, metric: str) -> list[str]:
    """StatsHandler's epoch lines that report ``metric``."""
    return [line for line in output.splitlines() if re.search(rf"Metrics -- .*\b{metric}: ", line)]


@pytest.fixture(scope="module")
def two_stages(tmp_path_factory):
    """Stage 1, then stage 2, each one epoch with torchrun on 2 processes; what each stage left behind."""
    root = tmp_path_factory.mktemp("ddp")
    dataset = make_rectangles_dataset(root / "data", count=10)
    save_rank_state = root / "save_rank_state.json"
    save_rank_state.write_text(json.dumps(SAVE_RANK_STATE))
    bundle_root = root / "bundle"
    stages = {}
    for stage, configs in STAGE_CONFIGS.items():
        events_before = set((bundle_root / "eval").glob("events.out.tfevents.*"))
        output = torchrun(
            [*configs, "multi_gpu_train.json", save_rank_state],
            bundle_root=str(bundle_root),
            dataset_dir=str(dataset),
            **SETTINGS,
        )
        stages[stage] = SimpleNamespace(
            output=output,
            checkpoints=sorted(
                str(p.relative_to(bundle_root / "models")) for p in (bundle_root / "models").rglob("*.pt")
            ),
            events=set((bundle_root / "eval").glob("events.out.tfevents.*")) - events_before,
            ranks=[torch.load(bundle_root / f"rank{rank}.pt", weights_only=True) for rank in (0, 1)],
            moe_usage=json.loads((bundle_root / "eval" / "moe_usage.json").read_text()) if stage == 2 else None,
        )
    return SimpleNamespace(root=bundle_root, dataset=dataset, stages=stages)


def test_each_stage_writes_one_checkpoint_and_logs_metrics_once(two_stages):
    assert two_stages.stages[1].checkpoints == ["stage1/model.pt"]
    assert two_stages.stages[2].checkpoints == ["model.pt", "stage1/model.pt"]
    for stage in two_stages.stages.values():
        assert len(metric_lines(stage.output, "val_mean_dice")) == 1, stage.output[-3000:]
        writers = {path.name.split(".")[-2] for path in stage.events}  # events.out.tfevents.TIME.HOST.PID.N
        assert len(stage.events) == 2 and len(writers) == 1, stage.events  # trainer and validator, one process
    assert len(metric_lines(two_stages.stages[2].output, "moe_balance_loss")) == 1
    assert two_stages.stages[2].moe_usage["epochs"][0]["usage"].keys() == {"gate0", "gate1", "gate2", "gate3"}


def test_final_weights_are_identical_across_ranks_and_saved(two_stages):
    """Parameters and BatchNorm statistics; the checkpoint of the single epoch holds the final weights."""
    checkpoints = {1: two_stages.root / "models" / "stage1" / "model.pt", 2: two_stages.root / "models" / "model.pt"}
    for number, stage in two_stages.stages.items():
        rank0, rank1 = (state["weights"] for state in stage.ranks)
        saved = read_state_dict(checkpoints[number])
        assert rank0.keys() == rank1.keys() == saved.keys()  # no "module." prefix from DDP
        for key in rank0:
            assert torch.equal(rank0[key], rank1[key]), f"stage {number}: {key} differs between ranks"
            assert torch.equal(rank0[key], saved[key]), f"stage {number}: {key} differs from the checkpoint"


def test_moe_usage_sums_all_ranks_while_each_rank_adds_its_own_balance_loss(two_stages):
    stage = two_stages.stages[2]
    rank0, rank1 = (state["moe"][0] for state in stage.ranks)  # finetune_moe.json's handler
    assert rank0["balance_sum"] != rank1["balance_sum"]  # each rank's term comes from its own batches
    mass0, mass1 = torch.tensor(rank0["gate_mass"]), torch.tensor(rank1["gate_mass"])  # (gates, experts)
    shares = (mass0 + mass1) / (mass0 + mass1).sum(dim=1, keepdim=True)
    assert not torch.allclose(shares, mass0 / mass0.sum(dim=1, keepdim=True))  # the ranks routed differently
    logged = stage.moe_usage["epochs"][0]
    for gate, usage in enumerate(logged["usage"].values()):
        assert list(usage.values()) == pytest.approx(shares[gate].tolist())
    mean_balance = (rank0["balance_sum"] + rank1["balance_sum"]) / (rank0["iterations"] + rank1["iterations"])
    assert logged["balance_loss"] == pytest.approx(mean_balance)


def single_process_validation(config_files: list[str], checkpoint: Path, **overrides) -> dict[str, float]:
    """Metrics of train.json's validator in this process, with the weights of ``checkpoint``."""
    parser = ConfigParser()
    parser.read_config([str(CONFIGS / name) for name in config_files])
    parser.update({**overrides, "validate#handlers": []})
    parser.get_parsed_content("network").load_state_dict(read_state_dict(checkpoint))
    evaluator = parser.get_parsed_content("validate#evaluator")
    evaluator.run()
    return evaluator.state.metrics


def test_validation_metrics_equal_a_single_process_evaluation(two_stages):
    """Both ranks report the metrics of all 3 validation images, as one process with the saved weights does."""
    checkpoints = {1: two_stages.root / "models" / "stage1" / "model.pt", 2: two_stages.root / "models" / "model.pt"}
    for number, stage in two_stages.stages.items():
        rank0, rank1 = (state["metrics"] for state in stage.ranks)
        assert rank0 == pytest.approx(rank1, nan_ok=True)
        expected = single_process_validation(
            ["train.json"], checkpoints[number], dataset_dir=str(two_stages.dataset), use_moe=number == 2, **SETTINGS
        )
        assert {"val_mean_dice", "val_loss"} <= expected.keys()
        assert rank0 == pytest.approx(expected, rel=1e-6, abs=1e-7, nan_ok=True), f"stage {number}"


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path) as f:
        return list(csv.DictReader(f))


def test_distributed_evaluation_reports_every_image_once(tmp_path):
    """multi_gpu_evaluate.json: the per-image CSV and summary equal those of a single-process evaluation."""
    dataset = make_rectangles_dataset(tmp_path / "data", count=10)
    (tmp_path / "models").mkdir()
    network = LightweightHierarchicalUTANet(encoder="mobilenetv2", use_moe=True)
    torch.nn.init.zeros_(network.head.weight)
    torch.nn.init.constant_(network.head.bias, 10.0)  # foreground everywhere: Dice, precision and HD95 not 0 or NaN
    torch.save(network.state_dict(), tmp_path / "models" / "model.pt")
    overrides = {"bundle_root": str(tmp_path), "dataset_dir": str(dataset), **FAST, "val_fraction": 0.3}
    output = torchrun(
        ["train.json", "evaluate.json", "multi_gpu_evaluate.json"], **overrides, output_dir=str(tmp_path / "ddp")
    )
    run_bundle(["train.json", "evaluate.json"], workflow_type="eval", **overrides, output_dir=str(tmp_path / "single"))
    distributed = read_rows(tmp_path / "ddp" / "metrics_per_image.csv")
    single = read_rows(tmp_path / "single" / "metrics_per_image.csv")
    assert [row["image"] for row in distributed] == [row["image"] for row in single] and len(single) == 3
    for ddp_row, row in zip(distributed, single):
        assert {k: float(v) for k, v in ddp_row.items() if k != "image"} == pytest.approx(
            {k: float(v) for k, v in row.items() if k != "image"}, rel=1e-5, nan_ok=True
        )
    assert all(0 < float(row["dice"]) < 1 and float(row["hd95"]) > 0 for row in single)
    summaries = [json.loads((tmp_path / run / "metrics_summary.json").read_text()) for run in ("ddp", "single")]
    assert summaries[0]["images"] == summaries[1]["images"] == 3
    for metric, stats in summaries[1]["metrics"].items():
        assert summaries[0]["metrics"][metric] == pytest.approx(stats), metric
    assert len(metric_lines(output, "val_mean_dice")) == 1


def test_sync_batchnorm_replaces_only_the_trainable_norms():
    network = freeze_except(LightweightHierarchicalUTANet(encoder="mobilenetv2", use_moe=True))
    norms = {name: module for name, module in network.named_modules() if isinstance(module, torch.nn.BatchNorm2d)}
    trainable = {name for name, module in norms.items() if module.weight.requires_grad}
    parameters = set(map(id, network.parameters()))
    convert_trainable_batchnorm(network)
    synced = {name for name, module in network.named_modules() if isinstance(module, torch.nn.SyncBatchNorm)}
    assert synced == trainable and trainable and all(name.startswith("moe.") for name in synced)
    for name in norms.keys() - trainable:  # frozen: still a BatchNorm kept in eval mode by its hook
        module = network.get_submodule(name)
        assert type(module) is torch.nn.BatchNorm2d and module._forward_pre_hooks
    assert set(map(id, network.parameters())) == parameters  # the optimizer's parameters stay the same objects
