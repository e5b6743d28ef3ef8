"""The configuration search (bundle/data/configuration_search.py, scripts/train_folds.py --choose): the candidates, the
folds a time budget admits, and the choice by cross-validation Dice written into the plan."""

import json
import math
from pathlib import Path

import pytest
from bundle.data.configuration_search import (
    candidate_configurations,
    choose_configuration,
    cross_validation_plan,
    with_cross_validation,
)
from bundle.data.demo import make_demo_dataset
from bundle.data.planning import plan_overlay, plan_training
from bundle.errors import SettingError
from bundle.training.checkpoints import read_network_settings
from scripts import plan as plan_script
from scripts import train_folds

from tests.test_planning import write_dots_dataset

pytestmark = pytest.mark.usefixtures("one_thread")


def fake_fingerprint(side=500, images=85):
    return {"images": images, "training_images": 68, "median_size": [side, side], "small_object_diameter": 0.2}


def fake_timer(network, size, batch):
    """Seconds per step: 0.1 at 128 px for MobileNetV2, x4 for ResNet34, x1.5 with the skip, x pixels."""
    factor = (4 if network["encoder"] == "resnet34" else 1) * (1.5 if network["full_resolution_skip"] else 1)
    return 0.1 * factor * (size[0] / 128) ** 2


def test_candidates_cross_encoder_size_and_skip_with_the_plan_first():
    plan = plan_training(fake_fingerprint(), "cpu", base_learning_rate=3e-3)  # 128², batch 8, 112 epochs, 3e-3
    candidates = candidate_configurations(fake_fingerprint(), plan, "cpu")
    names = [c["name"] for c in candidates]
    assert names[0] == "mobilenetv2-128-fr0" and len(names) == 8
    assert set(names) == {f"{e}-{s}-fr{k}" for e in ("mobilenetv2", "resnet34") for s in (128, 192) for k in (0, 16)}
    rates = {c["encoder"]: c["learning_rate"] for c in candidates}
    assert rates == {"mobilenetv2": 3e-3, "resnet34": 1e-3}  # each encoder's registry rate
    small = candidate_configurations(fake_fingerprint(side=150), plan, "cpu")  # no side above the images'
    assert {c["image_size"][0] for c in small} == {128}


def test_the_budget_admits_the_folds_that_fit():
    found = fake_fingerprint()
    plan = plan_training(found, "cpu", base_learning_rate=3e-3)
    # 5 folds of 68 images: 9 steps x 112 epochs x 0.1 s x 1.15 = 1.93 min each, 9.66 min for the plan's own
    none, reason = cross_validation_plan(found, plan, "cpu", 5, fake_timer)
    assert none is None and "need about 9.7 minutes" in reason and "one model" in reason
    alone, reason = cross_validation_plan(found, plan, "cpu", 10, fake_timer)
    assert [c["name"] for c in alone["candidates"]] == ["mobilenetv2-128-fr0"] and alone["num_folds"] == 5
    assert alone["candidates"][0]["minutes"] == 9.7 and "fold ensemble of the plan's configuration" in reason
    two, reason = cross_validation_plan(found, plan, "cpu", 25, fake_timer)
    assert [c["name"] for c in two["candidates"]] == ["mobilenetv2-128-fr0", "mobilenetv2-128-fr16"]
    assert "left out: mobilenetv2-192-fr0 (21.7 min)" in reason and two["minutes"] == pytest.approx(24.2)
    every, _ = cross_validation_plan(found, plan, "cpu", 1000, fake_timer)
    minutes = [c["minutes"] for c in every["candidates"]]
    assert len(minutes) == 8 and minutes[1:] == sorted(minutes[1:])  # the plan's own first, then the cheapest


def overlay_with(section):
    found = fake_fingerprint()
    plan = plan_training(found, "cpu", base_learning_rate=3e-3)
    return with_cross_validation(plan_overlay(found, plan, "cpu"), section, "reason")


def test_the_best_cross_validation_dice_is_written_into_the_plan():
    found = fake_fingerprint()
    section, _ = cross_validation_plan(found, plan_training(found, "cpu"), "cpu", 1000, fake_timer)
    overlay = overlay_with(section)
    results = {c["name"]: 0.7 for c in section["candidates"]} | {"resnet34-192-fr16": 0.75}
    chosen = choose_configuration(overlay, results, "/work/search")
    assert (chosen["encoder"], chosen["image_size"], chosen["full_resolution_skip"]) == ("resnet34", [192, 192], 16)
    assert chosen["learning_rate"] == 1e-3 and chosen["epochs"] == overlay["epochs"]
    search = chosen["plan"]["cross_validation"]
    assert search["chosen"] == "resnet34-192-fr16" and search["ckpt_dir"] == str(Path("/work/search/resnet34-192-fr16"))
    assert "0.7500" in chosen["plan"]["reasons"]["configuration"] and search["results"] == results
    tied = choose_configuration(overlay, {c["name"]: 0.7 for c in section["candidates"]}, "/w")
    assert tied["plan"]["cross_validation"]["chosen"] == "mobilenetv2-128-fr0"  # a tie: the plan's own
    with pytest.raises(SettingError, match="no cross-validation Dice for mobilenetv2-128-fr0"):
        choose_configuration(overlay, {}, "/w")
    with pytest.raises(SettingError, match="plan.json names no cross-validation"):
        choose_configuration(overlay_with(None), results, "/w", "plan.json")


def test_plan_py_with_a_budget_names_the_cross_validation(tmp_path, monkeypatch):
    monkeypatch.setattr(plan_script, "measure_seconds_per_step", lambda net, size, batch, device: 1e-3)
    folder = write_dots_dataset(tmp_path / "data", count=10, side=300, radius=30, per_image=2)
    argv = ["--dataset_dir", str(folder), "--device", "cpu", "--output", str(tmp_path / "plan.json")]
    planned = plan_script.main([*argv, "--minutes", "60"])
    candidates = planned["plan"]["cross_validation"]["candidates"]
    assert candidates[0]["name"] == "mobilenetv2-128-fr0" and len(candidates) == 8
    assert "8 configuration(s) x 5 folds" in planned["plan"]["reasons"]["cross_validation"]
    command = planned["plan"]["cross_validation"]["command"]
    assert command.startswith(f"python scripts/train_folds.py --choose {tmp_path / 'plan.json'} --work_dir WORK_DIR")
    monkeypatch.setattr(plan_script, "measure_seconds_per_step", lambda net, size, batch, device: 10.0)
    single = plan_script.main([*argv, "--minutes", "60"])
    assert "cross_validation" not in single["plan"] and "one model" in single["plan"]["reasons"]["cross_validation"]
    assert "cross_validation" not in plan_script.main(argv)["plan"]["reasons"]  # no budget: as before


def test_train_folds_choose_cross_validates_the_candidates_and_writes_the_best(tmp_path):
    """Two candidates (MobileNetV2 at 64 px with and without the skip), 2 folds of 4 demo images, 1 epoch each."""
    demo = make_demo_dataset(tmp_path / "demo", 8)
    candidates = [
        {"name": f"mobilenetv2-64-fr{skip}", "encoder": "mobilenetv2", "image_size": [64, 64]}
        | {"full_resolution_skip": skip, "learning_rate": 3e-3}
        for skip in (0, 16)
    ]
    plan = {"image_size": [64, 64], "batch_size": 4, "epochs": 1, "learning_rate": 3e-3}
    plan["plan"] = {"reasons": {}, "cross_validation": {"num_folds": 2, "candidates": candidates}}
    plan_file, work = tmp_path / "plan.json", tmp_path / "search"
    plan_file.write_text(json.dumps(plan))
    argv = ["--choose", str(plan_file), "--work_dir", str(work), "--dataset_dir", str(demo), "--num_workers", "0"]
    summaries = train_folds.main(argv)
    dice = {name: summary["overall"]["pooled"] for name, summary in summaries.items()}
    assert set(dice) == {"mobilenetv2-64-fr0", "mobilenetv2-64-fr16"} and all(0 <= d <= 1 for d in dice.values())
    best = max(dice, key=lambda name: (dice[name], name.endswith("fr0")))
    written = json.loads(plan_file.read_text())
    assert (
        written["plan"]["cross_validation"]["chosen"] == best and written["plan"]["cross_validation"]["results"] == dice
    )
    assert written["full_resolution_skip"] == int(best.rsplit("fr", 1)[1]) and written["epochs"] == 1
    for name in dice:  # each candidate trained its own network into its own folds
        skip = int(name.rsplit("fr", 1)[1])
        for fold in (0, 1):
            settings = read_network_settings(work / name / f"fold_{fold}" / "stage1" / "model.pt")
            assert settings["full_resolution_skip"] == skip and settings["image_size"] == [64, 64]
    assert not math.isnan(summaries[best]["folds"][0]["best_logged_dice"])
