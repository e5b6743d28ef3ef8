"""Sharded folder inference (configs/multi_gpu_inference.json) with torchrun on two CPU processes (gloo): the masks
and predictions.csv of a single-process run, one row per input in input order; a rank killed mid-run leaves no
corrupt file and a re-run completes the rest; and the planning of each rank (bundle.inference.sharding)."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from bundle.inference.folder import FolderPlan
from bundle.inference.sharding import merge_partial_reports, report_path
from PIL import Image

from tests.helpers import make_rectangles_dataset, run_bundle, save_checkpoint
from tests.test_distributed import torchrun

# ranks take blocks of batch_size inputs: every batch holds the images of a single process's, so masks are bit-equal
SETTINGS = {"image_size": [64, 64], "batch_size": 2, "num_workers": 0, "backend": "torch"}
KILL_RANK_1 = {  # rank 1 SIGKILLs itself after its first batch, possibly while its writer thread writes
    "+handlers": [
        {
            "_target_": "tests.faults.InterruptAt",
            "epoch": 1,
            "iteration": 1,
            "kill": True,
            "_disabled_": "$torch.distributed.get_rank() != 1",
        }
    ]
}


def read_report(folder: Path) -> list[dict[str, str]]:
    with open(folder / "predictions.csv", encoding="utf-8") as stream:
        return list(csv.DictReader(stream))


def masks(folder: Path) -> dict[str, np.ndarray]:
    return {path.name: np.asarray(Image.open(path)) for path in sorted(folder.glob("*_mask.png"))}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """9 images, a file that is not an image (an error row), a checkpoint with mixed masks and a single-process run."""
    root = tmp_path_factory.mktemp("sharded")
    images = make_rectangles_dataset(root / "data", count=9) / "images"
    (images / "broken.png").write_text("not an image")
    checkpoint = save_checkpoint(root / "model.pt", all_foreground=False)
    common = {"dataset_dir": str(images), "ckpt_path": str(checkpoint), **SETTINGS}
    run_bundle(["inference.json"], "infer", output_dir=str(root / "single"), **common)
    return root, common


def test_two_ranks_write_the_masks_and_report_of_one_process(folder):
    root, common = folder
    torchrun(["inference.json", "multi_gpu_inference.json"], output_dir=str(root / "ddp"), **common)
    single, sharded = masks(root / "single"), masks(root / "ddp")
    assert len(single) == 9 and single.keys() == sharded.keys()
    for name, mask in single.items():
        assert np.array_equal(mask, sharded[name]), name
    assert 0 < np.mean([mask.mean() / 255 for mask in single.values()]) < 1  # mixed masks: a real comparison
    rows = read_report(root / "ddp")
    assert rows == read_report(root / "single")  # one row per input, in input order, same values
    assert [row["path"] for row in rows] == sorted(p.name for p in Path(common["dataset_dir"]).iterdir())
    assert rows[0]["status"].startswith("error:") and not list((root / "ddp").glob(".predictions.rank*"))


def test_a_killed_rank_leaves_no_corrupt_file_and_a_rerun_completes(folder):
    root, common = folder
    out, overlay = root / "killed", root / "kill_rank_1.json"
    overlay.write_text(json.dumps(KILL_RANK_1))
    with pytest.raises(AssertionError):  # torchrun fails: a worker was killed
        torchrun(["inference.json", "multi_gpu_inference.json", overlay], output_dir=str(out), **common)
    written = masks(out)  # every mask on disk decodes: written atomically
    assert 0 < len(written) < 9, written.keys()
    torchrun(["inference.json", "multi_gpu_inference.json"], output_dir=str(out), **common)
    single, resumed = masks(root / "single"), masks(out)
    assert single.keys() == resumed.keys() and all(np.array_equal(single[n], resumed[n]) for n in single)
    rows = read_report(out)
    assert sorted(row["path"] for row in rows) == sorted(p.name for p in Path(common["dataset_dir"]).iterdir())
    assert {row["status"] for row in rows if row["path"] != "broken.png"} <= {"ok", "skipped: output exists"}
    assert not list(out.glob(".*.tmp")) and not list(out.glob(".predictions.rank*"))


def test_each_rank_plans_its_share_and_the_merge_keeps_input_order(tmp_path):
    images = make_rectangles_dataset(tmp_path / "data", count=5) / "images"
    plans = [FolderPlan(images, tmp_path / "out", rank=rank, world_size=2) for rank in (0, 1)]
    assert [plan.todo for plan in plans] == [[0, 2, 4], [1, 3]]
    blocks = [FolderPlan(images, tmp_path / "out", rank=rank, world_size=2, shard_block=2) for rank in (0, 1)]
    assert [plan.todo for plan in blocks] == [[0, 1, 4], [2, 3]]
    assert plans[1].report_path == report_path(tmp_path / "out", 1, 2) != plans[0].report_path
    (tmp_path / "out" / "predictions.csv").write_text("path,status\ncase_01.png,ok\n")
    for rank, names in ((1, ["case_03.png", "case_01.png"]), (0, ["case_02.png", "case_00.png"])):
        lines = "".join(f"{name},ok\n" for name in names)
        report_path(tmp_path / "out", rank, 2).write_text("path,status\n" + lines)
    order = {f"case_{index:02d}.png": index for index in range(5)}
    merge_partial_reports(tmp_path / "out", order)
    rows = read_report(tmp_path / "out")
    assert [row["path"] for row in rows] == ["case_01.png", "case_00.png", "case_02.png", "case_03.png"]
    assert not list((tmp_path / "out").glob(".predictions.rank*"))
    with pytest.raises(ValueError, match="rank must be"):
        FolderPlan(images, tmp_path / "out", rank=2, world_size=2)
