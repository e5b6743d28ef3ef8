"""MONAI's workflow checks on the three configs, and inference from any checkpoint the bundle trains."""

import subprocess
import sys
from pathlib import Path

import pytest
from bundle.data.demo import make_demo_dataset
from bundle.errors import bundle_error_in_chain
from bundle.training.checkpoints import SettingsMismatchError
from monai.bundle import create_workflow
from PIL import Image

from tests.helpers import CONFIGS, REPO_ROOT, bundle_run_arguments, export_checkpoint, run_bundle

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = {"batch_size": 4, "num_workers": 0}


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return Path(make_demo_dataset(tmp_path_factory.mktemp("demo") / "demo", num_images=8, size=64))


@pytest.mark.parametrize(
    "configs, workflow_type, overrides",
    [
        (["train.json"], "train", {"image_size": [64, 64]}),
        (["train.json", "evaluate.json"], "infer", {"ckpt_path": str(REPO_ROOT / "models" / "model.pt")}),
        (["inference.json"], "inference", {"ckpt_dir": str(REPO_ROOT / "models")}),
    ],
    ids=["train", "evaluate", "inference"],
)
def test_check_properties_passes(tmp_path, demo, configs, workflow_type, overrides):
    """MONAI's required and optional properties of each workflow type are all there (what property-based apps check)."""
    dataset_dir = str(demo) if workflow_type != "inference" else str(demo / "images")
    workflow = create_workflow(
        config_file=[str(CONFIGS / name) for name in configs],
        workflow_type=workflow_type,
        meta_file=str(CONFIGS / "metadata.json"),
        bundle_root=str(tmp_path),
        dataset_dir=dataset_dir,
        output_dir=str(tmp_path / "out"),
        **TINY,
        **overrides,
    )
    assert workflow.check_properties() == []


def masks_of(out):
    return sorted(p.name for p in out.glob("*_mask.png"))


def test_inference_runs_any_trained_checkpoint_with_only_its_folder(tmp_path, demo):
    """A ResNet34 stage-1 model at 64 px and its stage-2 model: inference.json --ckpt_dir DIR, no other setting."""
    run = tmp_path / "run"
    train = {"bundle_root": str(tmp_path), "dataset_dir": str(demo), "ckpt_dir": str(run), "epochs": 1, **TINY}
    run_bundle(["train.json"], encoder="resnet34", image_size=[64, 64], **train)
    images = demo / "images"
    for stage, configs in (("stage1", None), ("stage2", ["train.json", "finetune_moe.json"])):
        if configs:
            run_bundle(configs, encoder="resnet34", image_size=[64, 64], **train)
        out = tmp_path / f"out_{stage}"
        workflow = run_bundle(
            ["inference.json"], "infer", ckpt_dir=str(run), dataset_dir=str(images), output_dir=str(out)
        )
        settings = workflow.parser.get_parsed_content("network_settings")
        assert settings["encoder"] == "resnet34" and settings["image_size"] == [64, 64]
        assert settings["use_moe"] is (stage == "stage2")
        assert masks_of(out) == sorted(f"{p.stem}_mask.png" for p in images.glob("*.png"))
        assert Image.open(out / masks_of(out)[0]).size == Image.open(next(images.glob("*.png"))).size

    with pytest.raises(Exception) as error:  # MONAI's config parser wraps it in a RuntimeError
        run_bundle(["inference.json"], "infer", ckpt_dir=str(run), encoder="mobilenetv2", dataset_dir=str(images))
    mismatch = bundle_error_in_chain(error.value)
    assert isinstance(mismatch, SettingsMismatchError) and 'needs --encoder "resnet34"' in str(mismatch)
    arguments = bundle_run_arguments(["inference.json"], ckpt_dir=str(run), dataset_dir=str(images), use_moe="false")
    command = [sys.executable, "-m", *arguments]
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, check=False)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert result.stderr.strip().splitlines()[-1].startswith(f"error: {run / 'model.pt'} does not fit --use_moe false")


def test_a_newly_registered_encoder_trains_evaluates_and_exports(tmp_path, demo):
    """EfficientNet-B0 (one module and one import line in bundle/networks/encoders/): both stages through the
    configs, evaluation, TorchScript (MONAI ckpt_export) and ONNX export, with no other edit."""
    import onnxruntime
    import torch

    run = tmp_path / "run"
    train = {"bundle_root": str(tmp_path), "dataset_dir": str(demo), "ckpt_dir": str(run), "epochs": 1, **TINY}
    run_bundle(["train.json"], encoder="efficientnet-b0", image_size=[64, 64], **train)
    run_bundle(["train.json", "finetune_moe.json"], encoder="efficientnet-b0", image_size=[64, 64], **train)
    ckpt = run / "model.pt"
    settings = torch.load(ckpt, weights_only=True)["network_settings"]
    assert settings["encoder"] == "efficientnet-b0" and settings["use_moe"] and settings["top_k"] == 2
    evaluation = run_bundle(
        ["train.json", "evaluate.json"], "infer", ckpt_path=str(ckpt), output_dir=str(tmp_path / "eval"), **train
    )
    assert 0.0 <= evaluation.parser.get_parsed_content("validate#evaluator").state.metrics["val_mean_dice"] <= 1.0

    ts_path, onnx_path = export_checkpoint(ckpt, tmp_path)
    x = torch.rand(1, 3, 64, 64)
    session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    scripted = torch.jit.load(str(ts_path)).eval()
    with torch.no_grad():
        torch.testing.assert_close(
            torch.from_numpy(session.run(None, {"image": x.numpy()})[0]), scripted(x), atol=1e-4, rtol=1e-4
        )
