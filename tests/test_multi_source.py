"""Several dataset folders (centres) in one run: each keeps its test list, numbered frames are validated in
contiguous blocks (no leak of a sequence), and validation Dice is logged per source."""

import numpy as np
import pytest
from bundle.data.datasets import load_datalist

from tests.helpers import FAST, make_rectangles_dataset, run_bundle, write_pair

pytestmark = pytest.mark.usefixtures("one_thread")


def make_frames(folder, count=40, test=(3, 4, 5, 20, 21)):
    """``count`` numbered frames ``1.png`` ... with masks, and a test-name list, like CVC-ClinicDB."""
    rng = np.random.default_rng(1)
    for number in range(1, count + 1):
        image = rng.integers(0, 80, (40, 56, 3), dtype=np.uint8)
        mask = np.zeros((40, 56), np.uint8)
        mask[10:25, 12:30] = 255
        image[mask > 0] = (200, 70, 50)
        write_pair(folder, str(number), image, mask)
    (folder / "pranet_test_names.txt").write_text("".join(f"{number}.png\n" for number in test))
    return folder


def frame(pair):
    return int(pair["image"].rsplit("/", 1)[1].split(".")[0])


def runs(numbers, order):
    """How many maximal runs of consecutive positions in ``order`` the ``numbers`` form."""
    positions = sorted(order.index(number) for number in numbers)
    return 1 + sum(b != a + 1 for a, b in zip(positions, positions[1:]))


def test_sources_keep_their_test_lists_and_frames_are_validated_in_blocks(tmp_path):
    centre_a = make_rectangles_dataset(tmp_path / "centre_a", count=6)
    (centre_a / "test_names.txt").write_text("case_00\ncase_01\n")
    centre_b = make_frames(tmp_path / "centre_b")
    datalist = load_datalist([str(centre_a), str(centre_b)], val_fraction=0.2, seed=0)
    by_source = {
        key: {source: [p for p in pairs if p["source"] == source] for source in ("centre_a", "centre_b")}
        for key, pairs in datalist.items()
    }
    assert [p["image"].rsplit("/", 1)[1] for p in by_source["test"]["centre_a"]] == ["case_00.png", "case_01.png"]
    assert sorted(frame(p) for p in by_source["test"]["centre_b"]) == [3, 4, 5, 20, 21]
    images = [p["image"] for pairs in datalist.values() for p in pairs]
    assert len(images) == len(set(images)) == 46  # no image in two splits
    rest = sorted(frame(p) for p in by_source["training"]["centre_b"] + by_source["validation"]["centre_b"])
    validation = [frame(p) for p in by_source["validation"]["centre_b"]]
    assert len(validation) == 7 and runs(validation, rest) <= 2  # two contiguous blocks, not 7 scattered frames
    assert load_datalist(str(centre_b), 0.2, 0)["validation"] == [
        {key: value for key, value in p.items() if key != "source"} for p in by_source["validation"]["centre_b"]
    ]


def test_training_on_two_sources_logs_validation_dice_per_source(tmp_path):
    folders = [make_rectangles_dataset(tmp_path / "centre_a", count=6), make_frames(tmp_path / "centre_b", 12, ())]
    (folders[1] / "pranet_test_names.txt").unlink()
    workflow = run_bundle(
        ["train.json"],
        bundle_root=str(tmp_path),
        dataset_dir=[str(folder) for folder in folders],
        ckpt_dir=str(tmp_path / "run"),
        output_dir=str(tmp_path / "eval"),
        epochs=1,
        **FAST,
    )
    metrics = workflow.parser.get_parsed_content("validate#evaluator").state.metrics
    assert {"val_mean_dice/centre_a", "val_mean_dice/centre_b"} <= set(metrics)
    assert all(0.0 <= metrics[f"val_mean_dice/{name}"] <= 1.0 for name in ("centre_a", "centre_b"))
