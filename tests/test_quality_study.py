"""The quality study (scripts/quality_study.py) on tiny synthetic caches: its features, the temperature fit, the
leave-one-centre-out choice against the baseline, and a recorded command without machine paths."""

import json

import numpy as np
import pytest
from bundle.atomic_files import atomic_write_csv
from scripts import quality_study
from scripts.quality.candidates import CachedSet, expected_dice, fit_temperature, member_agreement
from scripts.quality.study import BASELINE, choose, final_model, leave_one_out

SIZE = 24


def disc(radius: float, centre=(12, 12)) -> np.ndarray:
    rows, columns = np.mgrid[0:SIZE, 0:SIZE]
    return (rows - centre[0]) ** 2 + (columns - centre[1]) ** 2 <= radius**2


def write_cache(folder, seed: int, count: int = 40):
    """A cached set whose masks fail (a disc beside the reference) for a third of the images; there the members
    disagree and the probabilities are less sure, so the scores can tell."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    members = np.zeros((count, 16, SIZE, SIZE), np.float16)
    labels = np.zeros((count, SIZE, SIZE), np.uint8)
    rows = []
    for index in range(count):
        failed = index % 3 == 0
        reference = disc(5)
        predicted = disc(5, (12, 19) if failed else (12, 12))
        confidence = rng.uniform(1.0, 3.0) if failed else rng.uniform(4.0, 8.0)
        for member in range(16):
            jitter = rng.normal(0, 2.5 if failed else 0.5, (SIZE, SIZE))
            members[index, member] = np.where(predicted, confidence, -confidence) + jitter
        labels[index] = reference * 255
        mask = 1 / (1 + np.exp(-members[index, :8].astype(np.float32))).mean(axis=0) >= 0.5
        dice = 2 * (mask & reference).sum() / (mask.sum() + reference.sum())
        rows.append({"image": f"{index}.png", "dice": dice})
    np.save(folder / "members.npy", members)
    np.save(folder / "labels.npy", labels)
    np.save(folder / "gates.npy", rng.dirichlet(np.ones(4), (count, 4)).astype(np.float32))
    np.save(folder / "reference_gates.npy", rng.dirichlet(np.ones(4), (30, 4)).astype(np.float32))
    np.save(folder / "pooled.npy", rng.normal(size=(count, 6)).astype(np.float32))
    np.save(folder / "reference_pooled.npy", rng.normal(size=(30, 6)).astype(np.float32))
    atomic_write_csv(folder / "images.csv", ["image", "dice"], rows)
    return CachedSet(folder)


def test_features_of_known_masks():
    mask = disc(5)
    assert expected_dice(mask.astype(float), mask) == pytest.approx(1.0)
    assert expected_dice(np.full(mask.shape, 0.5), mask) < 0.5
    assert expected_dice(np.zeros(mask.shape), np.zeros(mask.shape, bool)) == 0.0
    beside = disc(5, (12, 19))
    members = np.stack([mask, mask, beside]).astype(float)
    assert member_agreement(members, mask) == pytest.approx(
        (2 + 2 * (mask & beside).sum() / (mask.sum() + beside.sum())) / 3
    )


def test_the_temperature_of_overconfident_logits_is_recovered():
    rng = np.random.default_rng(0)
    calibrated = rng.normal(0, 2, 200_000)
    targets = (rng.random(calibrated.size) < 1 / (1 + np.exp(-calibrated))).astype(float)
    assert fit_temperature(calibrated * 3.0, targets) == pytest.approx(3.0, rel=0.05)


def test_leave_one_out_beats_the_baseline_and_calibrates_review(tmp_path):
    sets = {name: write_cache(tmp_path / name, seed) for seed, name in enumerate(("a", "b"))}
    results, temperatures = leave_one_out(sets)
    assert set(results) == {"a", "b"} and all(t > 0 for t in temperatures.values())
    for figures in results.values():
        assert figures["member_agreement"].auroc > 0.9 and figures["routing_kl"].auroc < 0.9  # routing is noise
    chosen, reason = choose(results)
    assert reason and (
        chosen == BASELINE or all(results[h][chosen].auroc > results[h][BASELINE].auroc for h in results)
    )
    model, per_set, temperature = final_model(sets, chosen)
    table = model["review_quantiles"]
    assert table["levels"][0] == 0.0 and table["levels"][-1] == 1.0
    assert np.all(np.diff(table["scores"]) >= 0) and len(table["scores"]) == len(table["levels"])
    assert temperature > 0 and set(per_set) == {"a", "b"}
    json.dumps(model)  # what --write-model stores


def test_recorded_command_names_no_machine_path(tmp_path):
    inside = str(quality_study.REPO_ROOT / "runs" / "model.pt")
    argv = ["--data_dir", str(tmp_path), "--set", "x", inside, "kvasir-seg", "cvc-clinicdb@training"]
    command = quality_study.recorded_command(argv, str(tmp_path))
    assert str(tmp_path) not in command and str(quality_study.REPO_ROOT) not in command
    assert "--data_dir D" in command and "runs/model.pt" in command
