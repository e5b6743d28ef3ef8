"""Knowledge distillation: the teacher's soft masks blended into the labels, MONAI's default batches without one, and
a teacher of other data stopping in one line."""

import pytest
import torch
from bundle.errors import SettingError
from bundle.networks import LightweightHierarchicalUTANet
from bundle.training.distillation import DistillationBatch
from monai.engines.utils import default_prepare_batch

from tests.helpers import FAST, fast_network_settings, make_rectangles_dataset, messages, run_bundle


def teacher_file(path, in_channels=3, seed=0):
    torch.manual_seed(seed)
    torch.save(
        {"model": LightweightHierarchicalUTANet(encoder="mobilenetv2", in_channels=in_channels).state_dict()}, path
    )
    return path


def batch():
    torch.manual_seed(1)
    return {"image": torch.rand(2, 3, 64, 64), "label": (torch.rand(2, 1, 64, 64) > 0.5).float()}


def test_without_a_teacher_the_batch_is_monais_default():
    data = batch()
    image, label = DistillationBatch(None, 0.5, fast_network_settings())(data, "cpu")
    reference_image, reference_label = default_prepare_batch(data, "cpu")
    assert torch.equal(image, reference_image) and torch.equal(label, reference_label)


def test_the_label_is_blended_with_the_mean_of_the_teachers(tmp_path):
    paths = [teacher_file(tmp_path / "a.pt", seed=0), teacher_file(tmp_path / "b.pt", seed=1)]
    data = batch()
    image, label = DistillationBatch(paths, 0.25, fast_network_settings())(data, "cpu")
    teachers = []
    for path in paths:
        network = LightweightHierarchicalUTANet(encoder="mobilenetv2").eval()
        network.load_state_dict(torch.load(path)["model"])
        with torch.no_grad():
            teachers.append(torch.sigmoid(network(data["image"])))
    expected = 0.75 * data["label"] + 0.25 * (teachers[0] + teachers[1]) / 2
    assert torch.allclose(label, expected, atol=1e-6)
    assert 0 < label.min() and label.max() < 1  # soft targets everywhere


def test_a_teacher_of_other_data_stops_in_one_line_naming_the_file(tmp_path):
    path = teacher_file(tmp_path / "grey_teacher.pt", in_channels=1)
    with pytest.raises(SettingError) as error:
        DistillationBatch(path, 0.5, fast_network_settings())
    message = str(error.value)
    assert "\n" not in message and str(path) in message and "in_channels 1" in message and "in_channels 3" in message


def test_an_out_of_range_weight_is_refused(tmp_path):
    with pytest.raises(SettingError, match="distillation_weight must be in"):
        DistillationBatch(teacher_file(tmp_path / "t.pt"), 0.0, fast_network_settings())


def test_stage1_trains_with_a_teacher(tmp_path):
    dataset = make_rectangles_dataset(tmp_path / "data")
    teacher = teacher_file(tmp_path / "teacher.pt")
    run_bundle(
        ["train.json"],
        bundle_root=str(tmp_path),
        dataset_dir=str(dataset),
        epochs=1,
        teacher_ckpt=str(teacher),
        distillation_weight=0.5,
        **FAST,
    )
    assert (tmp_path / "models" / "stage1" / "model.pt").is_file()
    with pytest.raises(Exception) as error:
        run_bundle(
            ["train.json"],
            bundle_root=str(tmp_path / "other"),
            dataset_dir=str(dataset),
            epochs=1,
            teacher_ckpt=str(teacher_file(tmp_path / "grey.pt", in_channels=1)),
            **FAST,
        )
    assert "does not match the student" in messages(error.value)
