"""MONAI Label integration (its BundleTrainTask / BundleInferTask ids and overrides, emulated) and the bundle zip."""

import json
import shutil
import zipfile
from pathlib import Path

import torch
from monai.bundle import ConfigParser
from monai.inferers import Inferer
from monai.transforms import Compose
from PIL import Image

from bundle.data import make_demo_dataset
from bundle.networks import LightweightHierarchicalUTANet
from scripts.package_bundle import main as package
from tests.helpers import CONFIGS, FAST, REPO_ROOT, make_rectangles_dataset, run_bundle


def test_monailabel_style_training_run(tmp_path, capsys):
    """Train as BundleTrainTask does: explicit datalists, max_epochs, device and a pretrained CheckpointLoader."""
    dataset = Path(make_demo_dataset(tmp_path / "d", num_images=8, size=64))
    images = sorted((dataset / "images").glob("*.png"))
    pairs = [{"image": str(p), "label": str(dataset / "masks" / p.name)} for p in images]
    # BundleTrainTask reads the raw train#handlers list and, when models/model.pt exists, puts a non-strict
    # CheckpointLoader in front; here models/model.pt is a stage-2 (MoE) model, the network a stage-1 one
    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "train.json"))
    handlers = parser.get("train#handlers")
    assert isinstance(handlers, list)
    shipped = tmp_path / "models" / "model.pt"
    shipped.parent.mkdir()
    torch.save(LightweightHierarchicalUTANet(encoder="mobilenetv2", use_moe=True).state_dict(), shipped)
    loader = {
        "_target_": "CheckpointLoader",
        "load_path": str(shipped),
        "load_dict": {"model": "$@network"},
        "strict": False,
    }
    overrides = {
        "bundle_root": str(tmp_path),
        "device": "cpu",
        "train#trainer#max_epochs": 1,
        "train#dataset#data": pairs[:6],
        "validate#dataset#data": pairs[6:],
        "train#handlers": [loader, *handlers],
    }
    workflow = run_bundle(["train.json"], **overrides, **FAST)
    assert (tmp_path / "models" / "stage1" / "model.pt").is_file()
    assert not (tmp_path / "data").exists()  # the bundle's own datalist (dataset_dir) was never needed
    assert workflow.parser.get_parsed_content("train#trainer").state.epoch == 1
    assert f"Restored all variables from {shipped}" in "".join(capsys.readouterr())  # non-strict warm start
    assert isinstance(workflow.parser.get_parsed_content("train#handlers"), list)


def test_monailabel_inference_ids_resolve_from_inference_json(tmp_path):
    """BundleInferTask's ids parse from inference.json alone and segment a non-square image at its own size."""
    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "inference.json"))
    parser.config.update({"bundle_root": str(tmp_path), "device": "cpu", "image_size": [64, 64]})
    network = parser.get_parsed_content("network_def")
    preprocessing = parser.get_parsed_content("preprocessing")
    postprocessing = parser.get_parsed_content("postprocessing")
    inferer = parser.get_parsed_content("inferer")
    assert isinstance(network, torch.nn.Module) and isinstance(inferer, Inferer)
    assert isinstance(preprocessing, Compose) and isinstance(postprocessing, Compose)
    assert torch.device(parser.get_parsed_content("device")) == torch.device("cpu")

    image = make_rectangles_dataset(tmp_path / "data", count=1, shape=(50, 70)) / "images" / "case_00.png"
    data = preprocessing({"image": str(image)})
    with torch.no_grad():  # as BasicInferTask.run_inferer: add a batch axis, keep item 0
        data["pred"] = inferer(data["image"][None], network.eval())[0]
    mask = postprocessing(data)["pred"]
    assert tuple(mask.shape) == (1, *Image.open(image).size[::-1])
    assert set(mask.unique().tolist()) <= {0.0, 1.0}


def _bundle_copy(tmp_path: Path) -> Path:
    """The files package_bundle reads, copied to tmp_path/copy (no data, no checkpoints)."""
    root = tmp_path / "copy"
    for folder in ("configs", "docs", "bundle", "scripts"):
        shutil.copytree(REPO_ROOT / folder, root / folder, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("LICENSE", "requirements.txt"):
        shutil.copy(REPO_ROOT / name, root / name)
    return root


def test_package_bundle_zip_refusals_and_metadata_check(tmp_path, capsys):
    root = _bundle_copy(tmp_path)
    output = tmp_path / "out" / "lh_utanet.zip"
    assert package(["--bundle-root", str(root), "--output", str(output)]) == 0
    assert "no weights" in capsys.readouterr().err
    with zipfile.ZipFile(output) as archive:
        names = set(archive.namelist())
    for name in ("configs/metadata.json", "configs/train.json", "docs/README.md", "LICENSE", "requirements.txt"):
        assert f"lh_utanet/{name}" in names
    assert {"lh_utanet/bundle/networks/lh_utanet.py", "lh_utanet/docs/schema/meta_schema_20240725.json"} <= names
    assert not any("__pycache__" in name or name.endswith(".pyc") for name in names)
    assert all(name.startswith("lh_utanet/") for name in names)

    before = output.read_bytes()
    assert package(["--bundle-root", str(root), "--output", str(output)]) == 1
    assert "--overwrite" in capsys.readouterr().err
    assert output.read_bytes() == before

    # weights go in only when they fit inference.json's network_def
    weights = root / "models" / "model.pt"
    weights.parent.mkdir()
    torch.save(LightweightHierarchicalUTANet(encoder="mobilenetv2", use_moe=False).state_dict(), weights)  # stage 1
    assert package(["--bundle-root", str(root), "--output", str(output), "--include-weights", "--overwrite"]) == 1
    assert "inference.json" in capsys.readouterr().err
    inference = json.loads((root / "configs" / "inference.json").read_text())
    (root / "configs" / "inference.json").write_text(json.dumps({**inference, "use_moe": False}))
    assert package(["--bundle-root", str(root), "--output", str(output), "--include-weights", "--overwrite"]) == 0
    with zipfile.ZipFile(output) as archive:
        assert "lh_utanet/models/model.pt" in archive.namelist()

    metadata_path = root / "configs" / "metadata.json"
    metadata = json.loads(metadata_path.read_text())
    metadata_path.write_text(json.dumps({**metadata, "version": "9.9.9"}))
    assert package(["--bundle-root", str(root)]) == 1
    assert "9.9.9 has no changelog entry" in capsys.readouterr().err
    changelog = {**metadata["changelog"], "0.0.1": "older", "1.0.0": "newer"}
    metadata_path.write_text(json.dumps({**metadata, "changelog": changelog}))
    assert package(["--bundle-root", str(root)]) == 1
    assert "older than changelog entry 1.0.0" in capsys.readouterr().err
    assert not (root / "dist").exists()
