"""Tests of bundle.data.datasets (dataset discovery, splitting, demo set) and scripts/prepare_datalist.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from bundle.data.check import check_dataset
from bundle.data.datasets import data_root, find_image_mask_pairs, load_datalist
from bundle.data.demo import make_demo_dataset
from bundle.data.splits import split_pairs
from bundle.errors import DatasetError, MissingFileError
from bundle.formats import IMAGE_SUFFIXES
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


def _write(path: Path, mask: bool = False) -> Path:
    """Write a tiny image (RGB) or mask (grey {0, 255}) whose format follows the file suffix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.name.lower().endswith((".nii", ".nii.gz")):
        nib.save(nib.Nifti1Image(np.zeros((8, 8), dtype=np.uint8), np.eye(4)), str(path))
    else:
        array = np.zeros((8, 8), np.uint8) if mask else np.full((8, 8, 3), 120, np.uint8)
        if mask:
            array[2:5, 2:5] = 255
        Image.fromarray(array).save(path)
    return path


def _make(root: Path, images: list[str], masks: list[str], image_dir: str = "images", mask_dir: str = "masks") -> Path:
    for name in images:
        _write(root / image_dir / name)
    for name in masks:
        _write(root / mask_dir / name, mask=True)
    return root


def _names(items: list[dict[str, str]], key: str = "image") -> list[str]:
    return [os.path.basename(item[key]) for item in items]


def test_image_suffixes() -> None:
    assert set(IMAGE_SUFFIXES) == {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".nii", ".nii.gz"}


def test_images_masks_same_stem_any_extension(tmp_path: Path) -> None:
    root = _make(tmp_path, ["a.jpg", "b.PNG", "c.nii.gz", "sub/d.png"], ["a.png", "b.jpg", "c.nii", "sub/d.png"])
    pairs = find_image_mask_pairs(root)
    assert [(_names([p])[0], _names([p], "label")[0]) for p in pairs] == [
        ("a.jpg", "a.png"),
        ("b.PNG", "b.jpg"),
        ("c.nii.gz", "c.nii"),
        ("d.png", "d.png"),
    ]
    assert all(os.path.isabs(p["image"]) and os.path.isabs(p["label"]) for p in pairs)


def test_labels_folder_and_mask_tags(tmp_path: Path) -> None:
    root = _make(
        tmp_path, ["ISIC_0000000.jpg", "x.jpg"], ["ISIC_0000000_segmentation.png", "x_mask.png"], mask_dir="labels"
    )
    assert _names(find_image_mask_pairs(root), "label") == ["ISIC_0000000_segmentation.png", "x_mask.png"]


def test_isic_flat_layout(tmp_path: Path) -> None:
    for name in ("ISIC_1.jpg", "ISIC_2.jpg", "ISIC_1_superpixels.png"):
        _write(tmp_path / name)
    (tmp_path / "notes.txt").write_text("ignored")
    _write(tmp_path / "ISIC_1_segmentation.png", mask=True)
    _write(tmp_path / "ISIC_2_mask.png", mask=True)
    pairs = find_image_mask_pairs(tmp_path)
    assert _names(pairs) == ["ISIC_1.jpg", "ISIC_2.jpg"]
    assert _names(pairs, "label") == ["ISIC_1_segmentation.png", "ISIC_2_mask.png"]


@pytest.mark.parametrize(
    ("images", "masks", "expected"),
    [
        (["a.png", "b.png"], ["a.png"], "b.png"),  # image without a mask
        (["a.png"], ["a.png", "z.png"], "z.png"),  # mask without an image
        (["a.png", "a.jpg"], ["a.png"], "a.jpg & a.png"),  # ambiguous stem
    ],
)
def test_discovery_errors_name_files(tmp_path: Path, images: list[str], masks: list[str], expected: str) -> None:
    root = _make(tmp_path / "ds", images, masks)
    with pytest.raises(ValueError, match=expected) as info:
        find_image_mask_pairs(root)
    assert str(root) in str(info.value)


def test_error_lists_at_most_ten(tmp_path: Path) -> None:
    root = _make(tmp_path, [f"i{k:02d}.png" for k in range(15)] + ["m.png"], ["m.png"])
    with pytest.raises(ValueError, match="and 5 more"):
        find_image_mask_pairs(root)


def test_missing_and_empty_dir(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nowhere"):
        find_image_mask_pairs(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="accepted layouts"):
        find_image_mask_pairs(tmp_path)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_datalist(tmp_path / "nowhere")


def test_split_pairs_deterministic_with_test_names(tmp_path: Path) -> None:
    pairs = [{"image": f"/d/images/p{k:02d}.jpg", "label": f"/d/masks/p{k:02d}.jpg"} for k in range(20)]
    split = split_pairs(pairs, val_fraction=0.25, seed=3, test_names=["p00", "p01.jpg", " p02.png \n", ""])
    assert set(split) == {"training", "validation", "test"}
    assert _names(split["test"]) == ["p00.jpg", "p01.jpg", "p02.jpg"]
    assert len(split["validation"]) == 4 and len(split["training"]) == 13
    assert split == split_pairs(list(reversed(pairs)), val_fraction=0.25, seed=3, test_names=["p00", "p01", "p02"])
    assert (
        split["validation"]
        != split_pairs(pairs, val_fraction=0.25, seed=4, test_names=["p00", "p01", "p02"])["validation"]
    )
    assert split_pairs(pairs[:2], val_fraction=0.1)["validation"] != []
    assert split_pairs(pairs, val_fraction=0)["validation"] == []
    with pytest.raises(ValueError, match="nope"):
        split_pairs(pairs, test_names=["p00", "nope"])


def test_load_datalist_json_relative_paths(tmp_path: Path) -> None:
    _make(tmp_path, ["a.png", "b.png", "c.png", "d.png"], ["a.png", "b.png", "c.png", "d.png"])
    items = [{"image": f"images/{n}.png", "label": f"masks/{n}.png"} for n in "abcd"]
    absolute = {key: str(tmp_path / value) for key, value in items[3].items()}
    (tmp_path / "datalist.json").write_text(json.dumps({"training": items[:3], "test": [absolute]}))
    data = load_datalist(tmp_path, val_fraction=0.5, seed=0)
    assert set(data) == {"training", "validation", "test"}
    assert len(data["training"]) + len(data["validation"]) == 3 and len(data["validation"]) == 2
    assert data["test"] == [{"image": str(tmp_path / "images/d.png"), "label": str(tmp_path / "masks/d.png")}]

    missing = {"image": "images/x.png", "label": "masks/x.png"}
    (tmp_path / "datalist.json").write_text(json.dumps({"training": items[:1], "validation": [missing]}))
    with pytest.raises(FileNotFoundError, match="x.png"):
        load_datalist(tmp_path)


def test_dataset_dir_takes_a_datalist_file_as_well_as_its_folder(tmp_path: Path) -> None:
    """``--dataset_dir DIR/datalist.json`` is DIR; a datalist elsewhere (prepare_datalist.py --output) lists paths
    relative to itself, and its data root holds both; a missing file or another kind of file fails in one line."""
    names = [f"n{k}.png" for k in range(6)]
    root = _make(tmp_path / "ds", names, names)
    items = [{"image": f"images/{n}", "label": f"masks/{n}"} for n in names]
    (root / "datalist.json").write_text(
        json.dumps({"training": items[:4], "validation": items[4:5], "test": items[5:]})
    )
    assert load_datalist(root / "datalist.json") == load_datalist(root)
    assert data_root(root / "datalist.json") == str(root)
    elsewhere = tmp_path / "runs" / "split" / "mine.json"
    elsewhere.parent.mkdir(parents=True)
    moved = [{key: f"../../ds/{value}" for key, value in item.items()} for item in items]
    elsewhere.write_text(json.dumps({"training": moved[:3], "validation": moved[3:]}))
    data = load_datalist(elsewhere)
    assert _names(data["training"]) == names[:3] and _names(data["validation"]) == names[3:] and data["test"] == []
    assert data_root(elsewhere) == str(tmp_path)  # the list's folder and the data it lists
    report = check_dataset(elsewhere)
    assert report.ok and report.pairs == 6 and str(tmp_path) in report.source
    merged = load_datalist([str(elsewhere), str(root)])  # several sources: a datalist is named after its folder
    assert {pair["source"] for pair in merged["training"]} == {"split", "ds"}
    for path, kind in ((root / "nowhere.json", MissingFileError), (root / "images" / "n0.png", DatasetError)):
        with pytest.raises(kind, match=str(path)) as error:
            load_datalist(path)
        assert "\n" not in str(error.value)
    (root / "broken.json").write_text("{not json")
    with pytest.raises(DatasetError, match="broken.json: not valid JSON"):
        load_datalist(root / "broken.json")


def test_plan_py_takes_a_datalist_file(tmp_path: Path) -> None:
    """The issue's command: ``scripts/plan.py --dataset_dir DIR/datalist.json`` plans (it ended in a traceback)."""
    from scripts import plan as plan_script

    names = [f"n{k}.png" for k in range(5)]
    root = _make(tmp_path / "ds", names, names)
    items = [{"image": f"images/{n}", "label": f"masks/{n}"} for n in names]
    (root / "datalist.json").write_text(json.dumps({"training": items[:4], "validation": items[4:]}))
    output = tmp_path / "plan.json"
    overlay = plan_script.main(
        ["--dataset_dir", str(root / "datalist.json"), "--output", str(output), "--device", "cpu"]
    )
    assert overlay["plan"]["fingerprint"]["training_images"] == 4 and json.loads(output.read_text()) == overlay


def test_load_datalist_split_csv(tmp_path: Path) -> None:
    _make(tmp_path, ["ISIC_1.jpg", "ISIC_2.jpg", "ISIC_3.jpg"], ["ISIC_1.png", "ISIC_2_segmentation.png", "ISIC_3.png"])
    (tmp_path / "split.csv").write_text("name,split,orig_width\nISIC_1,train,5\nISIC_2,val,5\nISIC_3,test,5\n")
    data = load_datalist(tmp_path)
    assert {key: _names(items) for key, items in data.items()} == {
        "training": ["ISIC_1.jpg"],
        "validation": ["ISIC_2.jpg"],
        "test": ["ISIC_3.jpg"],
    }
    (tmp_path / "split.csv").write_text("name,split\nISIC_1,train\nISIC_9,val\n")
    with pytest.raises(ValueError, match="ISIC_9"):
        load_datalist(tmp_path)


def test_load_datalist_discovers_and_splits(tmp_path: Path) -> None:
    names = [f"n{k}.png" for k in range(10)]
    data = load_datalist(_make(tmp_path, names, names), val_fraction=0.2, seed=1)
    assert (len(data["training"]), len(data["validation"]), data["test"]) == (8, 2, [])
    (tmp_path / "my_test_names.txt").write_text("n3\nn7.png\n")
    data = load_datalist(tmp_path, val_fraction=0.2, seed=1)
    assert [Path(p["image"]).name for p in data["test"]] == ["n3.png", "n7.png"]
    assert (len(data["training"]), len(data["validation"])) == (6, 2)


def _run_prepare(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(REPO_ROOT / "scripts" / "prepare_datalist.py"), *args],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        check=False,
    )


def test_prepare_datalist_writes_relative_and_refuses_overwrite(tmp_path: Path) -> None:
    names = [f"n{k}.jpg" for k in range(10)]
    root = _make(tmp_path / "ds", names, [n.replace(".jpg", ".png") for n in names])
    (tmp_path / "test.txt").write_text("n0\nn1.jpg\n")
    result = _run_prepare(str(root), "--test-names", str(tmp_path / "test.txt"), "--val-fraction", "0.25")
    assert result.returncode == 0, result.stderr
    assert "test: 2" in result.stdout and "validation: 2" in result.stdout
    written = json.loads((root / "datalist.json").read_text())
    assert written["test"] == [{"image": f"images/n{k}.jpg", "label": f"masks/n{k}.png"} for k in (0, 1)]
    counts = {key: len(items) for key, items in load_datalist(root).items()}
    assert counts == {"training": 6, "validation": 2, "test": 2}

    before = (root / "datalist.json").read_bytes()
    refused = _run_prepare(str(root), "--seed", "5")
    assert refused.returncode == 1 and "--overwrite" in refused.stderr
    assert (root / "datalist.json").read_bytes() == before
    assert _run_prepare(str(root), "--seed", "5", "--overwrite").returncode == 0
    assert not [p for p in root.iterdir() if p.name.endswith(".tmp")]


def test_make_demo_dataset_deterministic_idempotent(tmp_path: Path) -> None:
    first = make_demo_dataset(tmp_path / "a", num_images=6, size=64, seed=1)
    second = make_demo_dataset(tmp_path / "b", num_images=6, size=64, seed=1)
    assert first == str(tmp_path / "a")
    files = sorted(p.relative_to(first) for p in Path(first).rglob("*") if p.is_file())
    assert len(files) == 13 and Path("DEMO_MANIFEST.json") in files
    for rel in files:
        assert (Path(first) / rel).read_bytes() == (Path(second) / rel).read_bytes()

    mtimes = {p: p.stat().st_mtime_ns for p in Path(first).rglob("*")}
    assert make_demo_dataset(first, num_images=6, size=64, seed=1) == first
    assert {p: p.stat().st_mtime_ns for p in Path(first).rglob("*")} == mtimes
    with pytest.raises(ValueError, match="different demo set"):
        make_demo_dataset(first, num_images=7, size=64, seed=1)


def test_make_demo_dataset_content(tmp_path: Path) -> None:
    root = Path(make_demo_dataset(tmp_path, num_images=30, size=64, seed=0))
    pairs = find_image_mask_pairs(root)
    assert len(pairs) == 30
    coverage = []
    for pair in pairs:
        image, mask = np.asarray(Image.open(pair["image"])), np.asarray(Image.open(pair["label"]))
        assert image.shape == (64, 64, 3) and image.dtype == np.uint8
        assert mask.shape == (64, 64) and set(np.unique(mask)) <= {0, 255}
        coverage.append((mask > 0).mean())
    assert 0 < sum(c == 0 for c in coverage) < 10
    assert all(0.01 < c < 0.4 for c in coverage if c > 0)


def test_make_demo_dataset_resumes_without_overwriting(tmp_path: Path) -> None:
    root = Path(make_demo_dataset(tmp_path, num_images=3, size=32, seed=0))
    reference = (root / "masks" / "demo_0001.png").read_bytes()
    (root / "DEMO_MANIFEST.json").unlink()
    (root / "masks" / "demo_0001.png").unlink()
    kept = root / "images" / "demo_0002.png"
    kept.write_bytes(b"not rewritten")
    make_demo_dataset(root, num_images=3, size=32, seed=0)
    assert (root / "masks" / "demo_0001.png").read_bytes() == reference
    assert kept.read_bytes() == b"not rewritten"
    assert (root / "DEMO_MANIFEST.json").is_file()


def test_make_demo_dataset_refuses_foreign_files(tmp_path: Path) -> None:
    _write(tmp_path / "images" / "real.png")
    with pytest.raises(ValueError, match="real.png"):
        make_demo_dataset(tmp_path, num_images=2, size=32)


def test_real_kvasir_pranet_split() -> None:
    kvasir = SHARED_DATA / "kvasir-seg"
    if not (kvasir / "pranet_test_names.txt").is_file():
        pytest.skip(f"real data not present at {kvasir}")
    names = (kvasir / "pranet_test_names.txt").read_text().splitlines()
    split = split_pairs(find_image_mask_pairs(kvasir), val_fraction=0.2, seed=0, test_names=names)
    assert len(split["test"]) == 100
    assert len(split["training"]) + len(split["validation"]) == 900
    assert load_datalist(kvasir)["test"] == split["test"]  # pranet_test_names.txt is picked up by itself
