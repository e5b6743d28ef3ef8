"""scripts/expert_usage.py: per-gate expert usage of a stage-2 checkpoint, CSV + PNG, refusals."""

import csv

import pytest
import torch
from bundle.data.demo import make_demo_dataset
from bundle.networks import LightweightHierarchicalUTANet
from scripts.expert_usage import main

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_demo_dataset(tmp_path_factory.mktemp("data") / "demo", num_images=8, size=64)


def test_expert_usage_csv_png_and_refusals(tmp_path, dataset, capsys):
    torch.manual_seed(0)
    model = LightweightHierarchicalUTANet(encoder="mobilenetv2", use_moe=True)
    with torch.no_grad():  # gate 0 always picks small + medium, whatever the image
        model.moe.gates[0].logits.weight.zero_()
        model.moe.gates[0].logits.bias.copy_(torch.tensor([5.0, 4.0, 0.0, 0.0]))
    checkpoint = tmp_path / "models" / "model.pt"
    checkpoint.parent.mkdir()
    torch.save(model.state_dict(), checkpoint)
    out = tmp_path / "usage"
    argv = [
        "--ckpt",
        str(checkpoint),
        "--dataset_dir",
        dataset,
        "--split",
        "all",
        "--output_dir",
        str(out),
        "--image_size",
        "64",
        "64",
        "--batch_size",
        "3",
    ]

    assert main(argv) == 0
    assert "mass_share" in capsys.readouterr().out
    with open(out / "expert_usage.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    experts = model.moe.expert_names
    gates = len(model.moe.gates)
    assert [(int(r["gate"]), r["expert"]) for r in rows] == [(g, e) for g in range(gates) for e in experts]
    usage = {(int(r["gate"]), r["expert"]): (float(r["mass_share"]), float(r["selection_rate"])) for r in rows}
    assert usage[0, "large"][0] == 0.0 and usage[0, "global"][0] == 0.0
    assert usage[0, "small"][1] == 1.0 and usage[0, "medium"][1] == 1.0
    expected_small = torch.softmax(torch.tensor([5.0, 4.0]), 0)[0].item()
    assert usage[0, "small"][0] == pytest.approx(expected_small, abs=1e-5)
    for gate in range(gates):
        assert sum(usage[gate, e][0] for e in experts) == pytest.approx(1.0, abs=1e-4)
        assert sum(usage[gate, e][1] for e in experts) == pytest.approx(2.0)  # top-2: two experts per image
    png = (out / "expert_usage.png").read_bytes()
    assert png.startswith(PNG_SIGNATURE) and len(png) > 1000

    before = {name: (out / name).read_bytes() for name in ("expert_usage.csv", "expert_usage.png")}
    assert main(argv) == 1
    assert "--overwrite" in capsys.readouterr().err
    assert {name: (out / name).read_bytes() for name in before} == before


def test_stage1_checkpoint_is_refused(tmp_path, dataset, capsys):
    checkpoint = tmp_path / "stage1.pt"
    torch.save(LightweightHierarchicalUTANet(encoder="mobilenetv2").state_dict(), checkpoint)
    out = tmp_path / "usage"
    assert (
        main(
            ["--ckpt", str(checkpoint), "--dataset_dir", dataset, "--output_dir", str(out), "--image_size", "64", "64"]
        )
        == 1
    )
    assert "train stage 2 first" in capsys.readouterr().err
    assert not out.exists()
