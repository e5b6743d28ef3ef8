"""Fault suite (docs/reliability.md): resume after a kill, atomic checkpoints, corrupt checkpoints, the data check,
non-finite loss and determinism. Stage-1 runs: 8 images of 48x64 at 64 px, MobileNetV2, 3 epochs of 2 iterations.
"""

import json
import math
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch
from bundle.backends.predictors import load_predictor
from bundle.networks import LightweightHierarchicalUTANet
from bundle.training.checkpoints import load_checkpoint, read_state_dict
from bundle.training.handlers import AtomicCheckpointSaver, ResumeCheckpoint
from ignite.engine import Engine
from PIL import Image
from scripts.check_data import main as check_data_main

from tests.helpers import (
    FAST,
    REPO_ROOT,
    bundle_run_arguments,
    make_rectangles_dataset,
    messages,
    run_bundle,
    write_pair,
)

EPOCHS = 3
STAGE1 = ["train.json"]
STAGE2 = ["train.json", "finetune_moe.json"]

# one thread here and in the subprocesses (OMP_NUM_THREADS=1): equal results need equal reduction orders
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_rectangles_dataset(tmp_path_factory.mktemp("data") / "rectangles", count=8, shape=(48, 64))


def overlay(folder, name, content):
    """Write a config overlay (e.g. a fault handler appended with ``+train#handlers``); return its path."""
    path = folder / f"{name}.json"
    path.write_text(json.dumps(content))
    return str(path)


def interrupt_at(folder, epoch, iteration, kill=False):
    handler = {"_target_": "tests.faults.InterruptAt", "epoch": epoch, "iteration": iteration, "kill": kill}
    return overlay(folder, "interrupt", {"+train#handlers": [handler]})


def train(root, dataset, configs=STAGE1, **overrides):
    settings = {**FAST, "epochs": EPOCHS, **overrides}
    return run_bundle(configs, bundle_root=str(root), dataset_dir=str(dataset), **settings)


def train_in_subprocess(root, dataset, configs, **overrides):
    """``python -m monai.bundle run`` of ``configs`` (names in configs/ or paths), one CPU thread.

    Returns the exit code and the output. The output goes to a file, not a pipe: after a kill, an orphaned
    DataLoader worker would hold a pipe open until it notices (seconds later).
    """
    settings = {**FAST, "epochs": EPOCHS, "bundle_root": str(root), "dataset_dir": str(dataset), **overrides}
    command = [sys.executable, "-m", *bundle_run_arguments(configs, **settings)]
    log = root / "run.log"
    with open(log, "w") as output:
        process = subprocess.run(
            command,
            check=False,
            cwd=REPO_ROOT,
            stdout=output,
            stderr=subprocess.STDOUT,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )
    return process.returncode, log.read_text()


def outcome(workflow, save_dir):
    """Final weights, best checkpoint and final validation metrics of a finished run."""
    evaluator = workflow.parser.get_parsed_content("validate#evaluator")
    network = workflow.parser.get_parsed_content("network")
    return {
        "weights": {k: v.detach().clone() for k, v in network.state_dict().items()},
        "best": read_state_dict(save_dir / "model.pt"),
        "metrics": dict(evaluator.state.metrics),
        "best_metric": (evaluator.state.best_metric, evaluator.state.best_metric_epoch),
    }


def assert_same_run(run, reference):
    for part in ("weights", "best"):
        assert run[part].keys() == reference[part].keys()
        for key, value in reference[part].items():
            assert torch.equal(run[part][key], value), f"{part}: {key}"
    assert run["metrics"].keys() == reference["metrics"].keys()
    for name, value in reference["metrics"].items():
        assert run["metrics"][name] == value or (math.isnan(value) and math.isnan(run["metrics"][name])), name
    assert run["best_metric"] == reference["best_metric"]


@pytest.fixture(scope="module", params=[0, 1], ids=["no_workers", "one_worker"])
def reference(request, tmp_path_factory, dataset):
    """An uninterrupted stage-1 run, with ``num_workers`` 0 (transforms' own generators) or 1 (worker seeds)."""
    root = tmp_path_factory.mktemp("reference")
    run = outcome(train(root, dataset, num_workers=request.param), root / "models" / "stage1")
    return {**run, "num_workers": request.param}


def test_two_stage1_runs_with_one_seed_are_identical(reference, dataset, tmp_path):
    run = outcome(train(tmp_path, dataset, num_workers=reference["num_workers"]), tmp_path / "models" / "stage1")
    assert_same_run(run, reference)


def test_resume_after_sigkill_matches_uninterrupted_run(reference, dataset, tmp_path):
    save_dir = tmp_path / "models" / "stage1"
    returncode, output = train_in_subprocess(
        tmp_path,
        dataset,
        [*STAGE1, interrupt_at(tmp_path, epoch=EPOCHS, iteration=1, kill=True)],
        num_workers=reference["num_workers"],
    )
    assert returncode == -signal.SIGKILL, output[-3000:]
    assert load_checkpoint(save_dir / "resume.pt")["trainer"]["iteration"] == 2 * (EPOCHS - 1)  # 2 per epoch
    assert sorted(p.name for p in save_dir.iterdir()) == ["model.pt", "resume.pt"]  # no temp file left

    resumed = train(tmp_path, dataset, resume=True, num_workers=reference["num_workers"])
    assert_same_run(outcome(resumed, save_dir), reference)
    assert not (save_dir / "resume.pt").exists()  # a completed run removes its resume checkpoint


def stage1_checkpoint(root):
    path = root / "models" / "stage1" / "model.pt"
    path.parent.mkdir(parents=True)
    torch.manual_seed(0)
    torch.save(LightweightHierarchicalUTANet(encoder="mobilenetv2").state_dict(), path)


def test_stage2_resumes_with_its_expert_usage_history(dataset, tmp_path):
    reference_root, root = tmp_path / "reference", tmp_path / "interrupted"
    for folder in (reference_root, root):
        stage1_checkpoint(folder)
    reference = outcome(train(reference_root, dataset, STAGE2, epochs=2), reference_root / "models")
    with pytest.raises(Exception) as error:
        train(root, dataset, [*STAGE2, interrupt_at(tmp_path, epoch=2, iteration=1)], epochs=2)
    assert "interrupted in epoch 2" in messages(error.value), messages(error.value)
    resumed = outcome(train(root, dataset, STAGE2, epochs=2, resume="true"), root / "models")
    assert_same_run(resumed, reference)
    usage, reference_usage = (json.loads((r / "eval" / "moe_usage.json").read_text()) for r in (root, reference_root))
    assert [e["epoch"] for e in usage["epochs"]] == [1, 2] and usage == reference_usage


def test_resume_refuses_to_lose_or_invent_a_run(dataset, tmp_path):
    resume_ckpt = tmp_path / "models" / "stage1" / "resume.pt"
    with pytest.raises(Exception) as error:
        train(tmp_path, dataset, resume="yes")
    assert "resume must be true or false, got 'yes'" in messages(error.value)
    with pytest.raises(Exception) as error:
        train(tmp_path, dataset, resume=True)
    assert "no checkpoint to resume from" in messages(error.value) and str(resume_ckpt) in messages(error.value)

    with pytest.raises(Exception) as error:  # an interrupted run leaves its state ...
        train(tmp_path, dataset, [*STAGE1, interrupt_at(tmp_path, epoch=2, iteration=1)], epochs=2)
    assert "interrupted in epoch 2" in messages(error.value)
    saved = resume_ckpt.read_bytes()
    with pytest.raises(Exception) as error:  # ... which a new run does not overwrite
        train(tmp_path, dataset, epochs=2)
    assert "interrupted run" in messages(error.value) and str(resume_ckpt) in messages(error.value)
    with pytest.raises(Exception) as error:
        train(tmp_path, dataset, resume=True, epochs=5)
    assert "resume with --epochs 2" in messages(error.value)

    resume_ckpt.write_bytes(saved[: len(saved) // 2])
    with pytest.raises(Exception) as error:
        train(tmp_path, dataset, resume=True, epochs=2)
    assert "truncated or corrupt" in messages(error.value) and str(resume_ckpt) in messages(error.value)


def test_training_refuses_to_overwrite_a_checkpoint_unless_told(dataset, tmp_path):
    """models/ holds the shipped weights: a new training into it stops before writing, unless --overwrite true."""
    checkpoint = tmp_path / "models" / "stage1" / "model.pt"
    checkpoint.parent.mkdir(parents=True)
    checkpoint.write_bytes(b"shipped weights")
    with pytest.raises(Exception) as error:
        train(tmp_path, dataset, epochs=1)
    assert str(checkpoint) in messages(error.value) and "--overwrite true" in messages(error.value)
    assert checkpoint.read_bytes() == b"shipped weights"
    train(tmp_path, dataset, epochs=1, overwrite="true")
    assert len(read_state_dict(checkpoint)) > 100  # replaced by the new training's checkpoint


def test_non_finite_loss_stops_the_run_and_keeps_the_last_good_checkpoints(dataset, tmp_path):
    """NaN from the 3rd training step: epoch 2, iteration 1. The process fails; epoch 1's checkpoints stay."""
    nan_loss = {"loss": {"_target_": "tests.faults.NanLossAt", "loss": "@losses#dicece", "step": 3}}
    returncode, output = train_in_subprocess(tmp_path, dataset, [*STAGE1, overlay(tmp_path, "nan", nan_loss)])
    assert returncode != 0
    assert "FloatingPointError: non-finite training loss (nan) at epoch 2, iteration 1 of 2" in output, output[-3000:]
    save_dir = tmp_path / "models" / "stage1"
    state = load_checkpoint(save_dir / "resume.pt")
    assert state["trainer"]["iteration"] == 2
    best = read_state_dict(save_dir / "model.pt")
    for key, value in best.items():  # the best model is epoch 1's, finite, and the same as in resume.pt
        assert torch.isfinite(value.float()).all() and torch.equal(value, state["model"][key]), key


def test_checkpoint_write_that_fails_leaves_the_previous_file(tmp_path, monkeypatch):
    """A crash inside torch.save (disk full, kill) leaves the old best model and the old resume state whole."""
    network = torch.nn.Linear(2, 1)
    saver = AtomicCheckpointSaver(
        str(tmp_path), {"model": network}, save_key_metric=True, key_metric_name="dice", key_metric_filename="model.pt"
    )
    resume = ResumeCheckpoint(tmp_path / "resume.pt", {"model": network})
    engine = Engine(lambda engine, batch: None)
    engine.run([0], max_epochs=1)
    engine.state.metrics["dice"] = 0.5
    saver.metrics_completed(engine)
    resume.save(engine)
    before = {path: path.read_bytes() for path in (tmp_path / "model.pt", tmp_path / "resume.pt")}

    def crash(obj, path, *args, **kwargs):
        with open(path, "wb") as f:
            f.write(b"half a checkpoint")
        raise OSError("No space left on device")

    monkeypatch.setattr(torch, "save", crash)
    with torch.no_grad():
        network.weight.add_(1.0)
    engine.state.metrics["dice"] = 0.7  # a new best: the saver replaces model.pt
    for write in (lambda: saver.metrics_completed(engine), lambda: resume.save(engine)):
        with pytest.raises(OSError, match="No space"):
            write()
    monkeypatch.undo()
    assert {path: path.read_bytes() for path in before} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt", "resume.pt"]  # no temp file left

    restarted = AtomicCheckpointSaver(
        str(tmp_path), {"model": network}, save_key_metric=True, key_metric_name="dice", key_metric_filename="model.pt"
    )
    restarted.load_state_dict(saver.state_dict())  # the record says 0.7 is the best so far
    engine.state.metrics["dice"] = 0.6
    restarted.metrics_completed(engine)
    assert (tmp_path / "model.pt").read_bytes() == before[tmp_path / "model.pt"]


def test_truncated_model_checkpoints_name_the_file(dataset, tmp_path):
    """Evaluation and inference (torch and TorchScript backends) name a truncated checkpoint."""
    network = LightweightHierarchicalUTANet(encoder="mobilenetv2").eval()
    full = tmp_path / "full.pt"
    torch.save(network.state_dict(), full)
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 1)), tmp_path / "full.ts")
    truncated = {}
    for name in ("full.pt", "full.ts"):
        truncated[name] = tmp_path / f"truncated_{name}"
        truncated[name].write_bytes((tmp_path / name).read_bytes()[:1000])
    with pytest.raises(Exception) as error:
        run_bundle(
            ["train.json", "evaluate.json"],
            "eval",
            bundle_root=str(tmp_path),
            dataset_dir=str(dataset),
            ckpt_path=str(truncated["full.pt"]),
            **FAST,
        )
    assert "truncated or corrupt" in messages(error.value) and str(truncated["full.pt"]) in messages(error.value)
    for backend in ("torch", "torchscript"):
        with pytest.raises(ValueError, match="truncated or corrupt") as error:
            load_predictor(backend, "cpu", network, truncated["full.pt"], truncated["full.ts"], tmp_path / "none.onnx")
        assert str(truncated["full.pt" if backend == "torch" else "full.ts"]) in str(error.value)


def make_faulty_dataset(root):
    """Six good pairs (one with an empty mask, one with a 0/1 label map, one a JPEG-noise mask) and five faults."""
    make_rectangles_dataset(root, count=6, shape=(48, 64))
    masks, images = root / "masks", root / "images"
    Image.fromarray(np.zeros((48, 64), np.uint8)).save(masks / "case_00.png")  # empty: counted, allowed
    label_map = (np.asarray(Image.open(masks / "case_01.png")) > 0).astype(np.uint8)
    Image.fromarray(label_map).save(masks / "case_01.png")  # 0/1 label map: fine
    noisy = np.where(np.asarray(Image.open(masks / "case_02.png")) > 0, 249, 6).astype(np.uint8)
    Image.fromarray(noisy).save(masks / "case_02.png")  # Kvasir-like JPEG noise: fine
    rng = np.random.default_rng(0)
    write_pair(root, "no_mask", rng.integers(0, 255, (48, 64, 3), dtype=np.uint8), np.zeros((48, 64), np.uint8))
    (masks / "no_mask.png").unlink()
    write_pair(root, "small_mask", rng.integers(0, 255, (48, 64, 3), dtype=np.uint8), np.full((40, 64), 255, np.uint8))
    write_pair(
        root,
        "soft_mask",
        rng.integers(0, 255, (48, 64, 3), dtype=np.uint8),
        rng.integers(0, 255, (48, 64), dtype=np.uint8),
    )
    write_pair(root, "broken", np.zeros((48, 64, 3), np.uint8), np.zeros((48, 64), np.uint8))
    (images / "broken.png").write_bytes((images / "broken.png").read_bytes()[:60])
    Image.fromarray(np.zeros((48, 64, 3), np.uint8)).save(images / "case_03.jpg")  # a second case_03 image
    return root


def test_check_data_reports_every_fault_and_exits_non_zero(tmp_path, capsys):
    root = make_faulty_dataset(tmp_path / "faulty")
    assert check_data_main([str(root)]) == 1
    report = capsys.readouterr().out
    for heading, line in (
        ("1 image(s) without a mask", "no_mask.png"),
        ("1 image/mask size mismatch(es)", "images/small_mask.png (48x64) vs masks/small_mask.png (40x64)"),
        ("outside the binary/JPEG-noise band", "masks/soft_mask.png"),
        ("1 unreadable file(s)", "images/broken.png"),
        ("1 ambiguous image stem(s)", "case_03.jpg & case_03.png"),
        ("1 all-background mask(s), allowed (negative frames)", "masks/case_00.png"),
    ):
        assert heading in report and line in report.split(heading, 1)[1].split("\n  ")[1], (heading, report)
    # case_03.png's mask is left without an image too
    assert "FAILED: 6 hard error(s), 1 all-background mask(s)" in report
    for name in ("no_mask.png", "small_mask.png", "soft_mask.png", "broken.png", "case_03.jpg"):
        (root / "images" / name).unlink()
    for name in ("small_mask.png", "soft_mask.png", "broken.png"):
        (root / "masks" / name).unlink()
    assert check_data_main([str(root)]) == 0
    assert "OK: no hard errors, 1 all-background mask(s)" in capsys.readouterr().out


def test_check_data_reads_the_pairs_of_a_datalist(tmp_path, capsys):
    """With a datalist.json, the listed pairs are checked: a listed file that is missing, a pair listed twice."""
    root = make_rectangles_dataset(tmp_path / "listed", count=3, shape=(48, 64))
    pair = {"image": "images/case_00.png", "label": "masks/case_00.png"}
    missing = {"image": "images/case_01.png", "label": "masks/gone.png"}
    datalist = {"training": [pair, missing], "validation": [pair], "test": []}
    (root / "datalist.json").write_text(json.dumps(datalist))
    assert check_data_main([str(root)]) == 1
    report = capsys.readouterr().out
    assert "1 missing mask(s):\n    masks/gone.png\n" in report
    assert "1 duplicate image name(s):\n    images/case_00.png & images/case_00.png\n" in report
    assert "1 duplicate mask name(s):\n    masks/case_00.png & masks/case_00.png\n" in report


def test_training_refuses_bad_data_unless_the_check_is_off(tmp_path):
    root = make_rectangles_dataset(tmp_path / "data", count=6, shape=(48, 64))
    Image.fromarray(np.zeros((40, 64), np.uint8)).save(root / "masks" / "case_04.png")
    with pytest.raises(Exception) as error:
        train(tmp_path, root, epochs=1)
    assert "Training refuses to start" in messages(error.value)
    assert "images/case_04.png (48x64) vs masks/case_04.png (40x64)" in messages(error.value)
    assert not (tmp_path / "models").exists()
    train(tmp_path, root, epochs=1, check_data="false")  # as --check_data false passes it
    assert (tmp_path / "models" / "stage1" / "model.pt").is_file()


def test_overwrite_false_from_the_command_line_still_refuses(tmp_path):
    """``--overwrite false`` reaches the configs as the string "false", which must not mean overwrite."""
    from bundle.evaluation import SegmentationMetricsWriter
    from bundle.inference.writers import SaveMaskd

    writer = SegmentationMetricsWriter(tmp_path, overwrite="false")
    (tmp_path / "metrics_summary.json").write_text("{}")
    with pytest.raises(FileExistsError, match="metrics_summary.json"):
        writer.start(Engine(lambda engine, batch: None))
    assert SaveMaskd("pred", tmp_path, tmp_path, overwrite="False").overwrite is False
    assert SegmentationMetricsWriter(tmp_path, overwrite="true").overwrite is True
    with pytest.raises(ValueError, match="overwrite must be true or false"):
        SaveMaskd("pred", tmp_path, tmp_path, overwrite="no")
