"""MONAI Label integration (its BundleTrainTask / BundleInferTask ids and overrides, emulated) and the bundle zip."""

import json
import shutil
import zipfile
from pathlib import Path

import pytest
import torch
from bundle.data.demo import make_demo_dataset
from bundle.errors import run_script
from bundle.networks import LightweightHierarchicalUTANet
from monai.bundle import ConfigParser
from monai.networks.nets import BasicUNet
from scripts.package_bundle import main as package_main

from tests.helpers import CONFIGS, FAST, REPO_ROOT, run_bundle


@pytest.mark.parametrize("server", [False, True], ids=["bundle-run", "under-a-monailabel-server"])
def test_monailabel_style_training_run(tmp_path, capsys, monkeypatch, server):
    """Train as BundleTrainTask does: explicit datalists, max_epochs, device and a pretrained CheckpointLoader.

    Under a MONAI Label server (MONAI_LABEL_APP_DIR set) the network follows the served model (a ResNet34 here,
    while the configs ask for MobileNetV2) and stage 1 saves to models/monailabel/<time>/, never over models/.
    """
    if server:
        monkeypatch.setenv("MONAI_LABEL_APP_DIR", str(tmp_path / "app"))
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
    encoder = "resnet34" if server else "mobilenetv2"
    torch.save(LightweightHierarchicalUTANet(encoder=encoder, use_moe=True).state_dict(), shipped)
    before = shipped.read_bytes()
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
    saved = sorted((tmp_path / "models").glob("monailabel/*/model.pt" if server else "stage1/model.pt"))
    assert len(saved) == 1 and not (server and (tmp_path / "models" / "stage1").exists())
    assert torch.load(saved[0])["network_settings"]["encoder"] == encoder
    assert shipped.read_bytes() == before
    assert not (tmp_path / "data").exists()  # the bundle's own datalist (dataset_dir) was never needed
    assert workflow.parser.get_parsed_content("train#trainer").state.epoch == 1
    assert f"Restored all variables from {shipped}" in "".join(capsys.readouterr())  # non-strict warm start
    assert isinstance(workflow.parser.get_parsed_content("train#handlers"), list)


def package(argv: list[str]) -> int:
    """``python scripts/package_bundle.py ARGV``'s exit status (one ``error:`` line and 1 on a refusal)."""
    return run_script(package_main, argv)


def _bundle_copy(tmp_path: Path) -> Path:
    """The files package_bundle reads, copied to tmp_path/copy (no data, no checkpoints)."""
    root = tmp_path / "copy"
    for folder in ("configs", "docs", "bundle", "scripts"):
        shutil.copytree(REPO_ROOT / folder, root / folder, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("LICENSE", "requirements.txt", "pyproject.toml"):
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

    # weights go in only when inference.json builds a network they load into (it reads the network from them)
    weights = root / "models" / "model.pt"
    weights.parent.mkdir()
    torch.save(BasicUNet(spatial_dims=2, in_channels=3, out_channels=1).state_dict(), weights)  # not an LH-UTANet
    assert package(["--bundle-root", str(root), "--output", str(output), "--include-weights", "--overwrite"]) == 1
    assert "inference.json" in capsys.readouterr().err
    torch.save(LightweightHierarchicalUTANet(encoder="mobilenetv2", use_moe=False).state_dict(), weights)  # stage 1
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


def test_model_zoo_layout_downloads_its_weights_through_file_urls(tmp_path):
    """``--model-zoo``: no binaries, large_files.yml with url/hash per file; MONAI's download_large_files fetches them."""
    import yaml
    from bundle.atomic_files import sha256_of
    from monai.bundle import download_large_files
    from scripts.package_bundle import MODEL_ZOO_NAME
    from scripts.write_large_files import SHIPPED

    zoo = tmp_path / "models"
    weights_url = (REPO_ROOT / "models").as_uri()  # file:///.../models, as if models/ were uploaded there
    assert package(["--model-zoo", str(zoo), "--weights-url", weights_url]) == 0
    bundle = zoo / MODEL_ZOO_NAME
    files = [p for p in bundle.rglob("*") if p.is_file()]
    assert not [p for p in files if p.suffix in (".pt", ".ts", ".onnx", ".zip")]
    assert (bundle / "configs" / "inference.json").is_file() and (bundle / "LICENSE").is_file()
    entries = yaml.safe_load((bundle / "large_files.yml").read_text())["large_files"]
    assert sorted(entry["path"] for entry in entries) == sorted(SHIPPED)
    for entry in entries:
        assert entry["url"] == f"{weights_url}/{entry['path'].removeprefix('models/')}"
        assert entry["hash_type"] == "sha256" and entry["hash_val"] == sha256_of(REPO_ROOT / entry["path"])
    download_large_files(bundle_path=str(bundle))  # (MONAI 1.6.1 fails when large_file_name is given)
    for entry in entries:  # download_url checked each hash; the files are the shipped ones
        assert sha256_of(bundle / entry["path"]) == entry["hash_val"]
    assert package(["--model-zoo", str(zoo), "--weights-url", weights_url]) == 1  # never over an existing folder
