"""Cross-validation (bundle/data/folds.py, bundle/training/folds.py, scripts/train_folds.py): the folds partition
training + validation by seed, per source and in frame blocks; fold K trains into ckpt_dir/fold_K; a folder of folds
is predicted by their ensemble; train_folds.py trains, resumes, skips and summarises on the synthetic demo set."""

import json
from collections import Counter
from pathlib import Path

import pytest
from bundle.data.demo import make_demo_dataset
from bundle.data.folds import assign_folds, fold_split
from bundle.errors import MissingFileError, SettingError
from bundle.training.folds import ensemble_checkpoints, fold_checkpoints, fold_dir, model_checkpoint
from monai.bundle import ConfigParser
from scripts import train_folds
from scripts.folds import domains

from tests.helpers import CONFIGS, FAST, make_rectangles_dataset, messages, run_bundle

pytestmark = pytest.mark.usefixtures("one_thread")


def pairs(names, source=None):
    return [
        {"image": f"/d/{n}.png", "label": f"/d/{n}_mask.png", **({"source": source} if source else {})} for n in names
    ]


def datalist(count=21, test=3):
    names = [f"case_{i:02d}" for i in range(count + test)]
    return {"training": pairs(names[4:count]), "validation": pairs(names[:4]), "test": pairs(names[count:])}


def test_the_folds_partition_training_and_validation_and_keep_the_test_split():
    data = datalist()
    pool = sorted(p["image"] for p in data["training"] + data["validation"])
    assert fold_split(data, None) is data  # no fold: today's split, unchanged
    validations = []
    for fold in range(5):
        split = fold_split(data, fold, 5, seed=0)
        assert split["test"] == data["test"]
        assert sorted(p["image"] for p in split["training"] + split["validation"]) == pool
        assert not {p["image"] for p in split["training"]} & {p["image"] for p in split["validation"]}
        validations.append([p["image"] for p in split["validation"]])
    assert sorted(sum(validations, [])) == pool  # every image validates once
    assert {len(v) for v in validations} <= {4, 5}  # 21 images in 5 folds
    assert fold_split(data, "2", "5", seed=0) == fold_split(data, 2, 5, seed=0)  # command-line strings
    assert fold_split(data, 2, 5, seed=1)["validation"] != fold_split(data, 2, 5, seed=0)["validation"]


def test_every_fold_holds_its_share_of_every_source():
    folds = assign_folds(pairs(range(10), "kvasir") + pairs(range(100, 105), "clinicdb"), 5, seed=3)
    for fold in folds:
        assert Counter(p["source"] for p in fold) == {"kvasir": 2, "clinicdb": 1}


def test_numbered_frames_stay_in_contiguous_blocks():
    folds = assign_folds(pairs([str(n) for n in range(1, 41)]), 5, seed=0)  # 40 frames: 10 blocks of 4
    for fold in folds:
        frames = sorted(int(p["image"].split("/")[-1].split(".")[0]) for p in fold)
        runs = 1 + sum(b != a + 1 for a, b in zip(frames, frames[1:]))
        assert len(frames) == 8 and runs <= 2


@pytest.mark.parametrize(
    "fold, num_folds, match",
    [(5, 5, "fold must be in 0..4"), (0, 1, "at least 2"), ("x", 5, "must be an integer"), (-1, 5, "0 or more")],
)
def test_bad_fold_ids_name_the_fix(fold, num_folds, match):
    with pytest.raises(SettingError, match=match):
        fold_split(datalist(), fold, num_folds)


def test_too_few_images_for_the_folds():
    with pytest.raises(SettingError, match="3 training \\+ validation image\\(s\\) cannot fill 5 folds"):
        fold_split({"training": pairs(range(2)), "validation": pairs(range(5, 6)), "test": []}, 0, 5)
    with pytest.raises(SettingError, match="of source clinicdb"):
        assign_folds(pairs(range(10), "kvasir") + pairs(range(100, 103), "clinicdb"), 5)


def touch(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return str(path)


def test_a_folder_of_folds_is_predicted_by_their_ensemble(tmp_path):
    cv = tmp_path / "cv"
    first = touch(cv / "fold_0" / "stage1" / "model.pt")
    touch(cv / "fold_1" / "stage1" / "model.pt")
    second = touch(cv / "fold_1" / "model.pt")  # fold 1 has a stage 2: its final model serves
    tenth = touch(cv / "fold_10" / "stage1" / "model.pt")  # ordered by number, not by name
    touch(cv / "single" / "stage1" / "model.pt")  # not a fold
    assert fold_checkpoints(cv) == ensemble_checkpoints(cv) == [first, second, tenth]
    assert model_checkpoint(cv) == first  # its settings and size serve the ensemble
    assert model_checkpoint(cv, 1) == second and ensemble_checkpoints(cv, "1") == []  # one fold chosen
    assert fold_dir(cv, None) == str(cv) and fold_dir(cv, 2) == str(cv / "fold_2")

    own = touch(cv / "stage1" / "model.pt")  # a model of its own wins over the folds
    assert model_checkpoint(cv) == own and ensemble_checkpoints(cv) == []
    (cv / "stage1" / "model.pt").unlink()
    touch(cv / "fold_2" / "stage1" / "resume.pt")  # a fold still training
    with pytest.raises(MissingFileError, match="fold_2 unfinished"):
        ensemble_checkpoints(cv)
    assert ensemble_checkpoints(tmp_path / "elsewhere") == []  # no folds: one model, as before
    with pytest.raises(MissingFileError, match="no checkpoint found"):
        model_checkpoint(tmp_path / "elsewhere")


def parsed(configs, **overrides):
    parser = ConfigParser()
    parser.read_config([str(CONFIGS / name) for name in configs])
    parser.update({**FAST, **overrides})
    return parser


def test_train_json_trains_fold_k_on_its_split_into_its_folder(tmp_path):
    data = make_rectangles_dataset(tmp_path / "data", count=10)
    ckpt = tmp_path / "cv"
    default = parsed(["train.json"], dataset_dir=str(data), ckpt_dir=str(ckpt))
    assert default.get_parsed_content("save_dir") == str(ckpt / "stage1")  # no fold: as before
    whole = default.get_parsed_content("datalist")
    assert default.get_parsed_content("train#dataset#data") == whole["training"]
    assert default.get_parsed_content("validate#dataset#data") == whole["validation"]

    fold = parsed(["train.json"], dataset_dir=str(data), ckpt_dir=str(ckpt), fold=1, num_folds=3, split_seed=4)
    expected = fold_split(whole, 1, 3, seed=4)
    assert fold.get_parsed_content("train#dataset#data") == expected["training"]
    assert fold.get_parsed_content("validate#dataset#data") == expected["validation"] != whole["validation"]
    assert fold.get_parsed_content("save_dir") == str(ckpt / "fold_1" / "stage1")
    assert fold.get_parsed_content("output_dir").endswith("fold_1")
    stage2 = parsed(["train.json", "finetune_moe.json"], dataset_dir=str(data), ckpt_dir=str(ckpt), fold=1)
    assert stage2.get_parsed_content("save_dir") == str(ckpt / "fold_1")
    assert stage2["stage1_ckpt"] == "$@fold_ckpt_dir + '/stage1/model.pt'"
    assert stage2.get_parsed_content("fold_ckpt_dir") == str(ckpt / "fold_1")


def attempts(work, fold):
    return json.loads((work / f"fold_{fold}" / "train_time.json").read_text())["attempts"]


def test_train_folds_trains_resumes_skips_and_the_ensemble_evaluates(tmp_path, capsys):
    """2 folds of 4 demo images, 2 epochs at 64 px: fold 1 is interrupted in its second epoch beforehand."""
    demo = Path(make_demo_dataset(tmp_path / "demo", 10))
    (demo / "test_names.txt").write_text("demo_0000\ndemo_0001\n")  # 2 test images; 8 in the folds
    work = tmp_path / "cv"
    common = {"dataset_dir": str(demo), "epochs": 2, "image_size": [64, 64], "batch_size": 4, "num_workers": 0}
    interrupt = tmp_path / "interrupt.json"
    handler = {"_target_": "tests.faults.InterruptAt", "epoch": 2, "iteration": 1}
    interrupt.write_text(json.dumps({"+train#handlers": [handler]}))
    fold_1 = {"ckpt_dir": str(work), "fold": 1, "num_folds": 2, "output_dir": str(work / "fold_1" / "train_logs")}
    with pytest.raises(Exception) as error:
        run_bundle(["train.json", str(interrupt)], **common, **fold_1)
    assert "interrupted in epoch 2" in messages(error.value)
    assert (work / "fold_1" / "stage1" / "resume.pt").is_file()

    argv = ["--work_dir", str(work), "--num_folds", "2", "--test"]
    for key, value in common.items():
        argv += [f"--{key}", json.dumps(value) if not isinstance(value, str) else value]
    summary = train_folds.main(argv)["cv"]
    assert [a["resumed"] for a in attempts(work, 0)] == [False] and [a["resumed"] for a in attempts(work, 1)] == [True]
    assert not (work / "fold_1" / "stage1" / "resume.pt").exists()
    assert [row["validation_images"] for row in summary["folds"]] == [4, 4]
    assert 0.0 <= summary["overall"]["pooled"] <= 1.0 and summary["ensemble_test"]["test_images"] == 2
    assert "ensemble of the 2 folds" in (work / "ensemble_test.log").read_text()
    written = json.loads((work / "cv_summary.json").read_text())
    assert written["overall"] == summary["overall"] and (work / "cv_summary.md").is_file()
    assert not Path(written["work_dir"]).is_absolute()  # a summary copied into docs/ names no machine path

    logs = {path: path.stat().st_mtime_ns for path in work.rglob("*.log")}
    again = train_folds.main(argv)["cv"]  # everything done: nothing trains or evaluates again
    assert len(attempts(work, 0)) == len(attempts(work, 1)) == 1 and again["overall"] == summary["overall"]
    assert {path: path.stat().st_mtime_ns for path in work.rglob("*.log")} == logs

    comparison = tmp_path / "comparison"  # a compare_models.py output with its BasicUNet row
    comparison.mkdir()
    (comparison / "results.csv").write_text("row,network,test_dice_mean\nbasicunet,MONAI BasicUNet,0.5\n")
    capsys.readouterr()
    domains.main([f"demo={work},{comparison}"])
    row = capsys.readouterr().out.strip().splitlines()[-1].split(" | ")
    ensemble = f"{summary['ensemble_test']['test_dice']:.4f}"
    assert row[1:5] == [f"{summary['overall']['pooled']:.4f}", "—", ensemble, "0.5000"], row
