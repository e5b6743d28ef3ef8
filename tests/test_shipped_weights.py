"""The shipped polyp weights in models/: strict loading, frozen base, hashes, TorchScript, a default prediction."""

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from bundle.atomic_files import sha256_of
from bundle.data.demo import make_demo_dataset
from bundle.training.checkpoints import read_state_dict
from monai.bundle import ConfigParser
from PIL import Image
from scripts.write_large_files import SHIPPED, SIZE_CAP_MB

from tests.helpers import CONFIGS, REPO_ROOT, run_bundle

pytestmark = pytest.mark.usefixtures("one_thread")

MODELS = REPO_ROOT / "models"


def inference_network(**overrides) -> torch.nn.Module:
    """``network_def`` of configs/inference.json with its defaults (plus ``overrides``), in eval mode."""
    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "inference.json"))
    parser.update(overrides)
    return parser.get_parsed_content("network_def").eval()


def test_shipped_weights_load_strictly_and_run_at_the_model_card_settings():
    """model.pt (a plain state_dict, as the model zoo loads it) is the MoE network that stage 2 fine-tuned, whole,
    from the 128-px stage1/model.pt (at 160 and 224 px on Kvasir-SEG, then at 224 px on Kvasir-SEG + CVC-ClinicDB);
    inference.json runs it at 224×224."""
    final = inference_network()
    final.load_state_dict(read_state_dict(MODELS / "model.pt"), strict=True)
    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "inference.json"))
    parser.update({"bundle_root": str(REPO_ROOT)})
    assert parser.get_parsed_content("network_settings") == {
        "encoder": "mobilenetv2",
        "use_moe": True,
        "in_channels": 3,
        "out_channels": 1,
        "top_k": 2,
        "image_size": [224, 224],
        "full_resolution_skip": 0,
        "norm": "batch",
        "deep_supervision": False,
    }
    stage1 = inference_network(ckpt_path=str(MODELS / "stage1" / "model.pt"))  # the network it needs, from itself
    stage1.load_state_dict(read_state_dict(MODELS / "stage1" / "model.pt"), strict=True)
    assert stage1.moe is None
    stage1_parameters = dict(stage1.named_parameters())
    base = [(name, p) for name, p in final.named_parameters() if name in stage1_parameters]
    assert len(base) == len(stage1_parameters)
    similarity = [  # every base tensor trained on from stage 1's: changed, but close
        torch.nn.functional.cosine_similarity(p.flatten(), stage1_parameters[name].flatten(), dim=0).item()
        for name, p in base
        if p.numel() > 1
    ]
    assert min(similarity) > 0.9 and any(not torch.equal(p, stage1_parameters[name]) for name, p in base)


def test_large_files_yml_hashes_match_the_files():
    listed = yaml.safe_load((REPO_ROOT / "large_files.yml").read_text(encoding="utf-8"))["large_files"]
    assert sorted(entry["path"] for entry in listed) == sorted(SHIPPED)
    for entry in listed:
        path = REPO_ROOT / entry["path"]
        assert path.stat().st_size <= SIZE_CAP_MB * 1e6, entry["path"]
        assert entry["hash_type"] == "sha256" and sha256_of(path) == entry["hash_val"], entry["path"]


def test_torchscript_export_matches_the_checkpoint():
    network = inference_network()
    network.load_state_dict(read_state_dict(MODELS / "model.pt"), strict=True)
    scripted = torch.jit.load(str(MODELS / "model.ts"), map_location="cpu").eval()
    image = torch.rand(2, 3, 96, 128, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected, got = network(image), scripted(image)
    assert expected.shape == (2, 1, 96, 128)
    assert torch.allclose(got, expected, atol=1e-4)


def test_default_inference_segments_a_synthetic_polyp(tmp_path):
    """inference.json with nothing but the input and output folders: the shipped model.pt finds a synthetic polyp."""
    demo = Path(make_demo_dataset(tmp_path / "demo", num_images=2, size=160))
    (demo / "images" / "demo_0000.png").unlink()  # demo image 0 has no polyp
    output = tmp_path / "out"
    run_bundle(
        ["inference.json"],
        "infer",
        bundle_root=str(REPO_ROOT),
        dataset_dir=str(demo / "images"),
        output_dir=str(output),
        num_workers=0,
    )
    assert [p.name for p in output.glob("*_mask.png")] == ["demo_0001_mask.png"]
    mask = np.asarray(Image.open(output / "demo_0001_mask.png"))
    assert mask.shape == (160, 160) and set(np.unique(mask)) == {0, 255}
    truth = np.asarray(Image.open(demo / "masks" / "demo_0001.png")) > 0
    dice = 2 * (truth & (mask > 0)).sum() / (truth.sum() + (mask > 0).sum())
    assert dice > 0.6  # 0.82 measured; random weights do not find it
