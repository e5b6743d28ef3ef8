"""Checkpoint ensembles (``ckpt_paths``): the mean probability of the members, networks of different encoders
included, through folder inference."""

import numpy as np
import pytest
import torch
from bundle.backends.predictors import EnsemblePredictor, Predictor, load_ensemble
from bundle.inference.tta import probabilities
from bundle.networks import LightweightHierarchicalUTANet
from PIL import Image

from tests.helpers import make_rectangles_dataset, run_bundle, save_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")


def efficientnet_checkpoint(path):
    torch.manual_seed(1)
    torch.save(LightweightHierarchicalUTANet(encoder="efficientnet-b0", use_moe=False).state_dict(), path)
    return path


def test_the_ensemble_is_the_mean_probability_of_its_members():
    torch.manual_seed(0)
    members = [Predictor(torch.nn.Conv2d(3, 1, 1).eval()) for _ in range(3)]
    x = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        expected = torch.stack([torch.sigmoid(member.model(x)) for member in members]).mean(0)
        got = probabilities(EnsemblePredictor(members)(x).as_tensor())
    assert torch.allclose(got, expected, atol=1e-5)


def test_no_ckpt_paths_keeps_the_single_predictor_and_bad_settings_raise(tmp_path):
    single = Predictor(torch.nn.Identity())
    assert load_ensemble(single, "a.pt", [], "inference.json", "auto", "cpu") is single
    with pytest.raises(ValueError, match="backend auto or torch"):
        load_ensemble(single, "a.pt", ["a.pt", "b.pt"], "inference.json", "onnx", "cpu")
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        load_ensemble(single, "a.pt", [str(tmp_path / "missing.pt")], "inference.json", "torch", "cpu")


def read_masks(folder):
    return {path.name: np.asarray(Image.open(path)) > 0 for path in sorted(folder.glob("*_mask.png"))}


def test_folder_inference_with_two_tiny_checkpoints_of_different_encoders(tmp_path):
    """The ensemble's masks are those of the mean of the members' probabilities (each member run alone, with
    --save_probabilities; images at the network's size, so that no resampling comes between), and differ from each
    member's own."""
    images = make_rectangles_dataset(tmp_path / "data", count=3, shape=(64, 64)) / "images"  # no resizing
    paths = [
        str(save_checkpoint(tmp_path / "a.pt", all_foreground=False)),
        str(efficientnet_checkpoint(tmp_path / "b.pt")),
    ]
    common = {"dataset_dir": str(images), "image_size": [64, 64], "num_workers": 0, "backend": "torch", "tta": "none"}
    probs = []
    for index, path in enumerate(paths):
        out = tmp_path / f"member{index}"
        run_bundle(["inference.json"], "infer", output_dir=str(out), ckpt_path=path, save_probabilities=True, **common)
        probs.append({p.name: np.load(p) for p in sorted(out.glob("*_prob.npy"))})
    out = tmp_path / "ensemble"
    run_bundle(["inference.json"], "infer", output_dir=str(out), ckpt_path=paths[0], ckpt_paths=paths, **common)
    masks = read_masks(out)
    assert len(masks) == 3
    for name, mask in masks.items():
        mean = (probs[0][name.replace("_mask.png", "_prob.npy")] + probs[1][name.replace("_mask.png", "_prob.npy")]) / 2
        agreement = np.mean(mask == (mean >= 0.5))
        assert agreement > 0.999, (name, agreement)
    members = [read_masks(tmp_path / f"member{index}") for index in (0, 1)]
    assert any(not np.array_equal(masks[name], member[name]) for member in members for name in masks)
