"""int8 export (scripts/quantize.py) and the onnx-int8 backend."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from bundle.backends.predictors import export_onnx, load_predictor
from bundle.data.demo import make_demo_dataset
from bundle.networks import LightweightHierarchicalUTANet
from monai.bundle import ConfigParser
from scripts import quantize

from tests.helpers import REPO_ROOT


def test_quantized_model_loads_as_onnx_int8_and_follows_fp32(tmp_path):
    torch.manual_seed(0)
    network = LightweightHierarchicalUTANet(encoder="mobilenetv2", use_moe=True).eval()
    fp32 = tmp_path / "model.onnx"
    export_onnx(network, fp32, (64, 64))
    calibration = [np.random.default_rng(i).random((1, 3, 64, 64), dtype=np.float32) for i in range(4)]
    int8 = quantize.quantize_onnx(fp32, tmp_path / "model.int8.onnx", calibration)
    assert int8.stat().st_size < fp32.stat().st_size / 2  # int8 weights
    predictor = load_predictor("onnx-int8", "cpu", network, "", "", fp32, int8_path=int8)
    x = torch.rand(2, 3, 64, 96)  # another batch and size than at export
    with torch.no_grad():
        expected, got = network(x), predictor(x)
    assert got.shape == expected.shape
    assert np.corrcoef(got.numpy().ravel(), expected.numpy().ravel())[0, 1] > 0.95
    with pytest.raises(FileNotFoundError, match="onnx-int8 model not found"):
        load_predictor("onnx-int8", "cpu", network, "", "", fp32, int8_path=tmp_path / "missing.onnx")


def test_quantize_script_calibrates_on_training_images_and_never_overwrites(tmp_path):
    dataset = make_demo_dataset(tmp_path / "demo", num_images=6, size=64)
    torch.manual_seed(0)
    ckpt = tmp_path / "model.pt"
    torch.save(LightweightHierarchicalUTANet(encoder="mobilenetv2", use_moe=True).state_dict(), ckpt)
    output = tmp_path / "model.int8.onnx"
    argv = ["--ckpt_file", str(ckpt), "--dataset_dir", dataset, "--output", str(output), "--num_images", "3"]
    quantize.main(argv)
    written = output.read_bytes()
    with pytest.raises(SystemExit, match="exists; nothing is overwritten"):
        quantize.main(argv)
    assert output.read_bytes() == written


def test_shipped_int8_model_matches_the_shipped_model(tmp_path):
    """models/model.int8.onnx is models/model.pt quantised: on demo images their masks agree (Dice)."""
    parser = ConfigParser()
    parser.read_config(str(REPO_ROOT / "configs" / "inference.json"))
    preprocessing = parser.get_parsed_content("preprocessing")
    images = sorted((Path(make_demo_dataset(tmp_path / "demo", num_images=8, size=256)) / "images").iterdir())
    x = torch.stack([torch.as_tensor(preprocessing({"image": str(path)})["image"]) for path in images])
    network = LightweightHierarchicalUTANet(encoder="mobilenetv2", use_moe=True)
    torch_model = load_predictor("torch", "cpu", network, REPO_ROOT / "models" / "model.pt", "", "")
    int8_model = load_predictor(
        "onnx-int8", "cpu", network, "", "", "", int8_path=REPO_ROOT / "models" / "model.int8.onnx"
    )
    with torch.no_grad():
        expected, got = torch_model(x) > 0, int8_model(x) > 0
    dice = 2 * (expected & got).sum().item() / (expected.sum().item() + got.sum().item())
    # measured on these synthetic, out-of-domain images: 0.957 for model 0.8.0 (0.985 for 0.7.0); another model's
    # fp32 masks agree with them at 0.79, so 0.95 still tells the quantised model.pt from any other model
    assert expected.any() and dice > 0.95, dice
