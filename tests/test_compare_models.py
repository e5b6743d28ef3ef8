"""scripts/compare_models.py (the scripts/comparison package) end to end: two networks, one epoch each, on tiny
synthetic data."""

from __future__ import annotations

import csv
import json
import math
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from bundle.data.datasets import load_datalist
from ignite.engine import Events
from scripts.comparison import catalogue, cli, domains, report, runner, training_logs

from tests.helpers import REPO_ROOT, write_pair


def make_half_images_dataset(folder, count: int = 48, shape: tuple[int, int] = (48, 64)):
    """Images whose bright left part (40-60% of the width) is the mask.

    One epoch of ~20 steps (enough for BatchNorm running statistics) learns it.
    """
    rng = np.random.default_rng(0)
    for index in range(count):
        image = rng.integers(0, 80, (*shape, 3), dtype=np.uint8)
        mask = np.zeros(shape, np.uint8)
        mask[:, : int(shape[1] * rng.uniform(0.4, 0.6))] = 255
        image[mask > 0] = (220, 60, 60)
        write_pair(folder, f"case_{index:02d}", image, mask)
    return folder


@pytest.fixture(scope="module")
def comparison(tmp_path_factory):
    """The comparison of two rows, given its data as a datalist file outside the data folder (``--dataset_dir``
    takes one): the splits that discovery gives the folder, paths relative to the file."""
    root = tmp_path_factory.mktemp("compare")
    data = make_half_images_dataset(root / "data")
    datalist = root / "lists" / "datalist.json"
    datalist.parent.mkdir()
    splits = {
        key: [{k: f"../data/{Path(path).relative_to(data).as_posix()}" for k, path in pair.items()} for pair in pairs]
        for key, pairs in load_datalist(data).items()
    }
    datalist.write_text(json.dumps(splits))
    argv = ["--dataset_dir", str(datalist), "--work_dir", str(root / "runs"), "--output", str(root / "out")]
    argv += ["--rows", "lh-mobilenetv2-moe,unet", "--image_size", "64", "--epochs", "1", "--stage2_epochs", "1"]
    argv += ["--batch_size", "2", "--num_workers", "0", "--threads", "1"]
    assert cli.main(argv) == 0
    return root, argv


def test_csv_has_every_column_filled_for_both_networks(comparison):
    root, _ = comparison
    with open(root / "out" / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [row["row"] for row in rows] == ["lh-mobilenetv2-moe", "unet"]
    assert list(rows[0]) == list(report.COLUMNS)
    for row in rows:
        for column in report.COLUMNS:
            assert row[column] not in ("", "nan"), f"{row['row']}: column {column} is empty"
        assert float(row["params_m"]) > 0 and float(row["gmacs"]) > 0 and float(row["cpu_latency_ms"]) > 0
        assert 0.0 <= float(row["test_dice_mean"]) <= 1.0
        assert int(row["test_images"]) > 0
    lh, unet = rows
    assert lh["expert_usage"].startswith("gate0 ") and unet["expert_usage"] == "no MoE"
    # stage 1 + 2 counts the minutes of both stages, and its stage-1 run was made on the way
    stage1 = json.loads((root / "runs" / "lh-mobilenetv2" / "result.json").read_text())
    assert float(lh["train_minutes"]) > stage1["train_minutes"]
    assert math.isclose(float(unet["params_m"]), 6.496, abs_tol=0.01)  # MONAI UNet(32-512, 2 res units)
    for plot in ("dice_vs_latency.png", "validation_curves.png"):
        assert (root / "out" / plot).read_bytes().startswith(b"\x89PNG")
    assert "| LH-UTANet mobilenetv2 (stage 1 + 2" in (root / "out" / "results.md").read_text()


def test_results_md_names_its_command_relative_to_the_repository(comparison):
    """The fixture passes absolute paths; results.md's command line holds them relative to the repository root."""
    root, argv = comparison
    command = (root / "out" / "results.md").read_text().split("Command: `")[1].split("`")[0]
    words = shlex.split(command)
    assert words[:2] == ["python", "scripts/compare_models.py"] and len(words) == len(argv) + 2
    assert not any(word.startswith("/") for word in words)
    assert (REPO_ROOT / words[words.index("--output") + 1]).resolve() == (root / "out").resolve()


def test_validation_curve_of_a_stage2_row_continues_its_stage1_curve(comparison):
    root, argv = comparison
    runs = runner.Comparison(cli.parse_args(argv), catalogue.build_rows([]))
    stage1, both = runs.validation_curve("lh-mobilenetv2"), runs.validation_curve("lh-mobilenetv2-moe")
    stage1_minutes = json.loads((root / "runs" / "lh-mobilenetv2" / "result.json").read_text())["train_minutes"]
    assert len(stage1) == 1 and both[:1] == stage1 and len(both) == 2  # one validation per epoch
    assert 0 < stage1[0][0] < stage1_minutes < both[1][0]
    logged = training_logs.scalar_history(root / "runs" / "lh-mobilenetv2-moe" / "train_logs", "val_mean_dice")
    assert [dice for _, dice in both] == [stage1[0][1], *logged]


def test_rerun_reuses_finished_rows_and_refuses_another_budget(comparison):
    root, argv = comparison
    checkpoint = root / "runs" / "unet" / "models" / "model.pt"
    before = checkpoint.stat().st_mtime_ns
    assert cli.main(argv) == 0
    assert checkpoint.stat().st_mtime_ns == before
    elsewhere = [
        *argv[: argv.index("--output")],
        "--output",
        str(root / "elsewhere"),
        *argv[argv.index("--output") + 2 :],
    ]
    assert cli.main([*elsewhere, "--train_only"]) == 0
    assert not (root / "elsewhere").exists() and checkpoint.stat().st_mtime_ns == before
    changed = [*argv[: argv.index("--epochs")], "--epochs", "2", *argv[argv.index("--epochs") + 2 :]]
    with pytest.raises(RuntimeError, match="another budget"):
        cli.main(changed)
    plan = {"image_size": [64, 64], "batch_size": 2, "epochs": 1, "learning_rate": 0.01}  # the same budget, another lr
    (root / "plan.json").write_text(json.dumps(plan), encoding="utf-8")
    with pytest.raises(RuntimeError, match="another budget or settings"):
        cli.main([*argv, "--plan", str(root / "plan.json")])
    assert checkpoint.stat().st_mtime_ns == before


def test_a_trained_row_whose_evaluation_was_interrupted_is_evaluated_not_retrained(comparison):
    root, argv = comparison
    cached = root / "runs" / "unet" / "result.json"
    before = json.loads(cached.read_text())
    checkpoint = root / "runs" / "unet" / "models" / "model.pt"
    trained = checkpoint.stat().st_mtime_ns
    cached.unlink()  # as if the comparison had stopped between training and evaluation
    assert cli.main([*argv, "--train_only"]) == 0
    after = json.loads(cached.read_text())
    assert checkpoint.stat().st_mtime_ns == trained and after["test_dice_mean"] == before["test_dice_mean"]
    assert 0 < after["train_minutes"] <= before["train_minutes"]  # from its TensorBoard log


def test_ablation_table_lists_top_k_and_lambda_of_each_stage2_row():
    rows = catalogue.build_rows(["mobilenetv2"])
    assert {"ablation-mobilenetv2-top1", "ablation-mobilenetv2-top4", "ablation-mobilenetv2-lambda0"} <= rows.keys()
    assert not any(key.startswith("variant-") for key in rows)  # the stage-1 variants come with --variants only
    scores = {"test_dice_mean": 0.5, "test_dice_median": 0.6, "test_iou_mean": 0.4, "best_val_dice": 0.55}
    keys = [
        "lh-mobilenetv2",
        "lh-mobilenetv2-moe",
        "unet",
        "ablation-mobilenetv2-top3",
        "ablation-mobilenetv2-lambda0.1",
    ]
    results = [{**scores, "row": key, "expert_usage": f"usage of {key}"} for key in keys]
    lines = report.ablation_table(results, rows).splitlines()[4:]
    assert [line.split(" | ")[1:3] for line in lines] == [["2", "0.01"], ["3", "0.01"], ["2", "0.1"]]
    assert lines[1].endswith("usage of ablation-mobilenetv2-top3 |")
    assert report.ablation_table(results[:3], rows) == ""  # no ablation rows, no table


def test_plan_sets_the_budget_and_the_lh_learning_rate_but_not_the_peers(tmp_path):
    plan = {"image_size": [256, 256], "batch_size": 4, "epochs": 167, "learning_rate": 0.0015, "plan": {}}
    (tmp_path / "plan.json").write_text(json.dumps(plan), encoding="utf-8")
    args = cli.parse_args(
        ["--dataset_dir", "d", "--work_dir", "w", "--output", "o", "--plan", str(tmp_path / "plan.json")]
    )
    rows = cli.apply_plan(args, catalogue.build_rows([], variants=True))
    assert (args.image_size, args.batch_size, args.epochs) == (256, 4, 167)
    assert rows["lh-mobilenetv2"].settings == {"encoder": "mobilenetv2", "learning_rate": 0.0015}
    assert rows["variant-mobilenetv2-gn"].settings["learning_rate"] == 0.0015
    assert rows["variant-mobilenetv2-lr1e-3"].settings["learning_rate"] == 1e-3  # a row's own rate wins
    assert rows["basicunet"].settings["learning_rate"] == catalogue.PEER_LEARNING_RATE
    assert "learning_rate" not in rows["lh-mobilenetv2-moe"].settings  # stage 2 keeps finetune_moe.json's rate
    plan["image_size"] = [256, 192]
    (tmp_path / "plan.json").write_text(json.dumps(plan), encoding="utf-8")
    with pytest.raises(SystemExit, match="square"):
        cli.apply_plan(args, {})


def test_domain_table_puts_each_network_in_one_row_and_marks_missing_cells(tmp_path, capsys):
    for domain, rows in {
        "a": [("basicunet", 0.61, 0.52), ("lh-mobilenetv2", 0.64, 0.53)],
        "b": [("lh-mobilenetv2", 0.8, 0.7)],
    }.items():
        (tmp_path / domain).mkdir()
        lines = ["row,network,best_val_dice,test_dice_mean"] + [
            f"{key},net {key},{val},{test}" for key, val, test in rows
        ]
        (tmp_path / domain / "results.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert domains.main([f"A={tmp_path / 'a'}", f"B={tmp_path / 'b'}"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0] == "| network (validation / test Dice) | A | B |"
    assert table[2:] == [
        "| net basicunet (`basicunet`) | 0.610 / 0.520 | — |",
        "| net lh-mobilenetv2 (`lh-mobilenetv2`) | 0.640 / 0.530 | 0.800 / 0.700 |",
    ]
    with pytest.raises(SystemExit, match="label=folder"):
        domains.main([str(tmp_path / "a")])


def run_study(root, name: str, seeds: str, rows: str) -> list[str]:
    """``--study mobilenetv2`` rows (one stage-2 epoch each) from the comparison's stage-1 checkpoint, into
    ``root/name`` (results in ``root/name-out``); returns the argv."""
    stage1 = root / "runs" / "lh-mobilenetv2" / "models" / "model.pt"
    argv = ["--dataset_dir", str(root / "data"), "--work_dir", str(root / name), "--output", str(root / f"{name}-out")]
    argv += ["--study", "mobilenetv2", "--study_seeds", seeds, "--stage1_ckpt", str(stage1), "--stage2_epochs", "1"]
    argv += ["--rows", rows, "--image_size", "64", "--batch_size", "2", "--num_workers", "0", "--threads", "1"]
    assert cli.main(argv) == 0
    return argv


def test_stage2_study_fine_tunes_the_given_checkpoint_and_tabulates_seeds(comparison):
    """--study with --stage1_ckpt: the stage-1 row only evaluates that checkpoint (validation and test); each recipe
    row fine-tunes it with its own seed; the table gives mean ± std per recipe and the gain over stage 1."""
    root, _ = comparison
    argv = run_study(root, "study", "0,1", "study-mobilenetv2-stage1,study-mobilenetv2-e-s0,study-mobilenetv2-e-s1")
    assert not (root / "study" / "study-mobilenetv2-stage1" / "models").exists()  # evaluated, not trained
    results = {
        key: json.loads((root / "study" / key / "result.json").read_text())
        for key in argv[argv.index("--rows") + 1].split(",")
    }
    assert all(0 <= r["validation_dice_mean"] <= 1 and 0 <= r["test_dice_mean"] <= 1 for r in results.values())
    seeds = [results[f"study-mobilenetv2-e-s{seed}"]["settings"]["seed"] for seed in (0, 1)]
    assert seeds == [0, 1]
    validation = [  # the seed varies the training, never the split: every row validates on the same images
        sorted(
            row["image"] for row in csv.DictReader(open(root / "study" / key / "validation" / "metrics_per_image.csv"))
        )
        for key in results
    ]
    assert validation[0] == validation[1] == validation[2]
    table = (root / "study-out" / "results.md").read_text().split("## Stage-2 recipes")[1].splitlines()
    row = next(line for line in table if line.startswith("| (e)"))
    mean = sum(results[f"study-mobilenetv2-e-s{seed}"]["validation_dice_mean"] for seed in (0, 1)) / 2
    assert f"| 2 | {mean:.4f} ± " in row


def test_recipes_c_and_d_train_and_evaluate_through_their_overlays(comparison):
    """(c) runs KMeansGateInit before the first stage-2 epoch; (d) trains and evaluates the shared-expert network."""
    root, _ = comparison
    run_study(root, "recipes", "0", "study-mobilenetv2-c-s0,study-mobilenetv2-d-s0")
    runs = root / "recipes"
    assert "KMeansGateInit: " in (runs / "study-mobilenetv2-c-s0" / "train.log").read_text()
    for recipe in ("c", "d"):
        weights = torch.load(runs / f"study-mobilenetv2-{recipe}-s0" / "models" / "model.pt", weights_only=True)
        shared = [key for key in weights["model"] if key.startswith("moe.shared_expert.")]
        assert bool(shared) == (recipe == "d")
        result = json.loads((runs / f"study-mobilenetv2-{recipe}-s0" / "result.json").read_text())
        assert 0 <= result["validation_dice_mean"] <= 1 and 0 <= result["test_dice_mean"] <= 1


def test_equal_time_budget_splits_lh_utanet_stages_and_stops_on_time(comparison):
    """--minutes: the stage-2 row trains a quarter of the budget on a stage-1 run of the rest; both stop on time."""
    root, _ = comparison
    argv = ["--dataset_dir", str(root / "data"), "--work_dir", str(root / "timed"), "--output", str(root / "tout")]
    argv += ["--rows", "lh-mobilenetv2-moe", "--minutes", "0.2", "--image_size", "64"]
    argv += ["--batch_size", "2", "--num_workers", "0", "--threads", "1"]
    assert cli.main(argv) == 0
    for key, minutes in (("lh-mobilenetv2", 0.15), ("lh-mobilenetv2-moe", 0.05)):
        result = json.loads((root / "timed" / key / "result.json").read_text())
        assert result["budget"]["minutes"] == pytest.approx(minutes)
        log = (root / "timed" / key / "train.log").read_text()
        assert "time budget:" in log, log[-2000:]  # stopped by the budget, long before TIME_BUDGET_EPOCHS
    assert "every network 0.2 wall-clock minutes of training" in (root / "tout" / "results.md").read_text()


def test_time_budget_anneals_the_learning_rate_and_ends_on_whole_epochs(monkeypatch):
    """A fake clock advancing 1 s per iteration, 2 iterations per epoch, a 6 s budget: 3 whole epochs run."""
    from bundle.networks import LightweightHierarchicalUTANet
    from bundle.training.handlers import TimeBudget, time_budget

    from tests.helpers import tiny_trainer

    now = [0.0]
    monkeypatch.setattr(time_budget.time, "perf_counter", lambda: now[0])
    network = LightweightHierarchicalUTANet(encoder="mobilenetv2")
    batch = {"image": torch.rand(2, 3, 64, 64), "label": torch.ones(2, 1, 64, 64)}
    trainer = tiny_trainer(network, [batch, batch], [], lr=1.0)
    rates = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: rates.append(e.optimizer.param_groups[0]["lr"]))
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: now.__setitem__(0, now[0] + 1.0))
    TimeBudget(0.1, trainer.optimizer).attach(trainer)
    trainer.state.max_epochs = 100
    trainer.run()
    assert trainer.state.iteration == 6
    assert rates == pytest.approx([0.5 * (1 + math.cos(math.pi * t / 6)) for t in range(6)])


def test_entry_point_keeps_the_command_line():
    """``python scripts/compare_models.py --help``: the package's command line, with its description and flags."""
    result = subprocess.run(
        [sys.executable, "scripts/compare_models.py", "--help"], cwd=REPO_ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: compare_models.py [-h] --dataset_dir DATASET_DIR --work_dir WORK_DIR")
    assert "Rows (``--rows``, default all):" in result.stdout and "--train_only" in result.stdout


def test_a_datalist_file_is_named_after_its_folder(comparison):
    """The fixture's ``--dataset_dir`` is a datalist file outside the data: results.md names its folder."""
    root, _ = comparison
    assert (root / "out" / "results.md").read_text().startswith("# Model comparison on `lists`")
