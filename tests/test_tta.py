"""Test-time augmentation (``tta``): "none" is the plain forward, flips are inverted exactly, the configs run it."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from bundle.data.demo import make_demo_dataset
from bundle.data.readers import GREY_TO_COLOUR
from bundle.inference.report import GREY_WARNING
from bundle.inference.tta import (
    ADAPTIVE_THRESHOLD,
    FLIP_DIMS,
    FULL_TTA,
    TTA_MODES,
    TTAInferer,
    as_members,
    forced_full,
    probabilities,
    uncertain_fraction,
)
from monai.data import MetaTensor
from PIL import Image

from tests.helpers import REPO_ROOT, run_bundle, save_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")


def pointwise_network():
    """A 1×1 convolution: it commutes with flips, so every flipped pass, flipped back, equals the plain one."""
    torch.manual_seed(0)
    return torch.nn.Conv2d(3, 1, kernel_size=1).eval()


def test_tta_none_is_the_plain_forward():
    network, x = pointwise_network(), torch.rand(2, 3, 64, 96)
    with torch.no_grad():
        assert torch.equal(TTAInferer("none")(x, network), network(x))


def test_flips_are_inverted_exactly():
    network, x = pointwise_network(), torch.rand(2, 3, 64, 96)
    with torch.no_grad():
        plain, tta = network(x), TTAInferer("flips")(x, network)
    assert tta.shape == plain.shape
    assert torch.allclose(probabilities(tta), probabilities(plain), atol=1e-6)  # a misplaced flip would not match


def test_flips_average_the_probabilities_of_the_four_flips():
    """A network that is not flip-equivariant (it sees the position): TTA is the mean of the flipped-back passes."""
    ramp = torch.linspace(-3, 3, 96).expand(1, 1, 64, 96)

    def network(x):
        return x[:, :1] * 4 - 2 + ramp

    x = torch.rand(1, 3, 64, 96)
    flips = [(), (3,), (2,), (2, 3)]
    expected = torch.stack(
        [torch.sigmoid(torch.flip(network(torch.flip(x, d)), d) if d else network(x)) for d in flips]
    ).mean(0)
    assert torch.allclose(probabilities(TTAInferer("flips")(x, network)), expected, atol=1e-5)


def test_scales_keep_the_input_size_and_reject_bad_settings():
    rows, columns = torch.meshgrid(torch.linspace(0, 3, 64), torch.linspace(0, 3, 96), indexing="ij")
    network, x = pointwise_network(), torch.stack([rows.sin(), columns.cos(), rows * columns / 9])[None]  # smooth
    with torch.no_grad():
        out = TTAInferer("flips+scales", scales=[1.0, 1.25, 0.75])(x, network)
    assert out.shape == (1, 1, 64, 96)
    assert torch.allclose(probabilities(out), probabilities(network(x)), atol=0.05)  # resampling, not exact
    with pytest.raises(ValueError, match="tta must be one of"):
        TTAInferer("rotations")
    with pytest.raises(ValueError, match="positive"):
        TTAInferer("flips+scales", scales=[0])


def test_inference_and_evaluation_run_with_tta(tmp_path):
    demo = Path(make_demo_dataset(tmp_path / "demo", num_images=6, size=64))
    out = tmp_path / "out"
    common = {"num_workers": 0, "tta": "flips+scales", "tta_scales": [1.0, 1.5]}
    run_bundle(["inference.json"], "infer", dataset_dir=str(demo / "images"), output_dir=str(out), **common)
    for image in (demo / "images").glob("*.png"):
        assert Image.open(out / f"{image.stem}_mask.png").size == Image.open(image).size
    shipped = str(REPO_ROOT / "models" / "model.pt")
    workflow = run_bundle(
        ["train.json", "evaluate.json"],
        "infer",
        bundle_root=str(tmp_path),
        dataset_dir=str(demo),
        ckpt_path=shipped,
        output_dir=str(tmp_path / "eval"),
        **common,
    )
    assert isinstance(workflow.parser.get_parsed_content("validate#evaluator").inferer, TTAInferer)
    assert (tmp_path / "eval" / "metrics_summary.json").is_file()


class CountingNetwork(torch.nn.Module):
    """A network that sees the position (not flip-equivariant) and counts its forward calls and their batch sizes."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv, self.calls = torch.nn.Conv2d(3, 1, kernel_size=3, padding=1).eval(), []

    def forward(self, x):
        self.calls.append(x.shape[0])
        ramp = torch.linspace(-2, 2, x.shape[-1]).expand(1, 1, *x.shape[2:])
        return self.conv(x) * 3 + ramp


@pytest.mark.parametrize("mode,scales,calls", [("flips", [1.0], 1), ("flips+scales", [1.0, 1.2, 0.5, 1.01], 3)])
def test_batched_members_equal_one_pass_per_member_in_fewer_calls(mode, scales, calls):
    """The batched inferer gives the logits and ``member_spread`` of one forward per member, in one call per distinct
    scaled size (1.0 and 1.01 round to the same size), each call carrying the four flips of the batch."""
    x = torch.rand(2, 3, 64, 96)
    results = {}
    for batched in (True, False):
        network, inferer = CountingNetwork(), TTAInferer(mode, scales=scales, batched=batched)
        with torch.no_grad():
            results[batched] = (inferer(x, network), inferer.member_spread, network.calls)
    (batched_out, batched_spread, batched_calls), (out, spread, single_calls) = results[True], results[False]
    assert batched_calls == [8] * calls and single_calls == [2] * 4 * calls
    assert torch.allclose(probabilities(batched_out), probabilities(out), atol=1e-6)
    assert batched_spread.shape == (2,) and torch.allclose(batched_spread, spread, atol=1e-6)
    assert (batched_spread > 0).all()  # the members disagree: the network sees the position


def test_member_spread_is_the_mean_absolute_deviation_of_the_members():
    network, x = CountingNetwork(), torch.rand(3, 3, 32, 32)
    inferer = TTAInferer("flips")
    with torch.no_grad():
        inferer(x, network)
        members = torch.stack(
            [torch.sigmoid(torch.flip(network(torch.flip(x, d)), d) if d else network(x)) for d in FLIP_DIMS]
        )
    expected = (members - members.mean(0)).abs().mean(dim=(0, 2, 3, 4))
    assert torch.allclose(inferer.member_spread, expected, atol=1e-6)


class ScriptedNetwork(torch.nn.Module):
    """Logits set per image by its first pixel (image i's value i): image 0 confident (±8), image 1 uncertain
    (±0.5), image 2 confident; plus a position ramp so that the flips and scales disagree. Counts batch sizes."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def forward(self, x):
        self.calls.append(x.shape[0])
        height = torch.linspace(-1, 1, x.shape[-1]).expand(1, 1, *x.shape[2:])
        confidence = torch.where(x[:, :1, :1, :1].round() == 1, 0.5, 8.0)  # (B, 1, 1, 1) from the image index
        return confidence * torch.sign(height + 0.1 * x[:, :1])


def scripted_batch(batch=3, size=(96, 96)):
    """(B, 3, H, W): image i filled with i plus a little noise (so flips differ)."""
    noise = torch.rand(batch, 3, *size, generator=torch.Generator().manual_seed(0)) * 0.2 - 0.1
    return torch.arange(batch, dtype=torch.float32).view(-1, 1, 1, 1) + noise


def test_adaptive_takes_the_full_tta_only_for_uncertain_images():
    network, x = ScriptedNetwork(), scripted_batch()
    inferer = TTAInferer("adaptive", scales=[1.0, 1.2], adaptive_threshold=0.5)
    with torch.no_grad():
        out = inferer(x, network)
        signal = uncertain_fraction(probabilities(network(x)))
    assert signal[1] > 0.5 > max(signal[0], signal[2])  # the scripted uncertainty
    assert inferer.full_tta.tolist() == [False, True, False]
    assert network.calls[:3] == [3, 3, 4]  # one pass of all three; 3 flips at 1.0 and 4 at 1.2 of image 1 only
    full, single = TTAInferer("flips+scales", scales=[1.0, 1.2]), TTAInferer("none")
    with torch.no_grad():
        expected_full, expected_single = full(x, network), single(x, network)
    assert torch.allclose(out[1], expected_full[1], atol=1e-5)
    assert torch.equal(out[[0, 2]], expected_single[[0, 2]])
    assert torch.allclose(inferer.member_spread[1], full.member_spread[1], atol=1e-6)
    assert inferer.member_spread[0] == 0 and inferer.member_spread[2] == 0


@pytest.mark.parametrize("threshold", [-1.0, 2.0])
def test_adaptive_equals_full_tta_or_none_when_the_threshold_forces_it(threshold):
    """uncertain_fraction lies in [0, 1]: below 0 every image takes the full TTA, above 1 none does."""
    network, x = CountingNetwork(), torch.rand(2, 3, 64, 96)
    with torch.no_grad():
        adaptive = TTAInferer("adaptive", scales=[1.0, 1.2], adaptive_threshold=threshold)(x, network)
        full = TTAInferer("flips+scales", scales=[1.0, 1.2])(x, network)
        none = network(x)
    if threshold < 0:
        assert torch.allclose(probabilities(adaptive), probabilities(full), atol=1e-6)
    else:
        assert torch.equal(adaptive, none)


def test_adaptive_takes_the_full_tta_for_grey_and_tiny_images():
    """A grey image given to a colour network and an image upsampled to the input: always every member."""
    network, x = CountingNetwork(), MetaTensor(torch.rand(4, 3, 96, 96))
    x.is_batch = True
    x.meta[GREY_TO_COLOUR] = torch.tensor([False, True, False, False])
    x.meta["spatial_shape"] = torch.tensor([[300, 200], [300, 200], [20, 90], [96, 96]])
    inferer = TTAInferer("adaptive", scales=[1.0, 1.2], adaptive_threshold=2.0)  # no image is uncertain enough
    with torch.no_grad():
        out = inferer(x, network)
        full = TTAInferer("flips+scales", scales=[1.0, 1.2])(x.as_tensor(), network)
    assert inferer.full_tta.tolist() == [False, True, True, False]
    assert out.meta[FULL_TTA].tolist() == [False, True, True, False]
    assert x.meta[GREY_TO_COLOUR].tolist() == [False, True, False, False]  # the input's meta is left as it was
    assert torch.allclose(probabilities(out[1:3].as_tensor()), probabilities(full[1:3]), atol=1e-6)
    assert torch.equal(out[[0, 3]].as_tensor(), network(x.as_tensor())[[0, 3]])


def test_custom_members_and_signals():
    network, x = CountingNetwork(), torch.rand(2, 3, 64, 64)
    first, second = [[1.0, []], [1.0, [3]]], [[1.2, []]]
    inferer = TTAInferer("adaptive", [1.0, 1.2], adaptive_threshold=-1.0, adaptive_signal="spread", first=first)
    inferer.second = as_members(second)
    with torch.no_grad():
        out = inferer(x, network)
        members = TTAInferer("flips+scales", [1.0, 1.2]).member_probabilities(x, network, as_members(first + second))
    assert torch.allclose(probabilities(out), torch.stack(members).mean(0), atol=1e-6)
    with pytest.raises(ValueError, match="tta_adaptive_signal"):
        TTAInferer("adaptive", adaptive_signal="entropy")


def test_adaptive_folder_inference_keeps_the_full_tta_and_warning_for_grey_and_tiny_images(tmp_path):
    """inference.json with --tta adaptive: a grey and a tiny image get flips+scales' masks and report rows (the
    grey warning kept); a colour image, with a threshold no image crosses, gets --tta none's."""
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (90, 80), dtype=np.uint8)).save(images / "grey.png")
    Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(images / "tiny.png")
    Image.fromarray(rng.integers(0, 255, (100, 120, 3), dtype=np.uint8)).save(images / "colour.png")
    ckpt = save_checkpoint(tmp_path / "model.pt", all_foreground=False)
    common = {"image_size": [64, 64], "num_workers": 0, "backend": "torch", "ckpt_path": str(ckpt)}
    outputs = {}
    for tta in ("adaptive", "flips+scales", "none"):
        out = tmp_path / tta
        paths = {"dataset_dir": str(images), "output_dir": str(out)}
        run_bundle(
            ["inference.json"], "infer", tta=tta, tta_adaptive_threshold=2.0, save_probabilities=True, **paths | common
        )
        with open(out / "predictions.csv", newline="") as f:
            outputs[tta] = {row["path"]: row for row in csv.DictReader(f)}, out
    (adaptive, adaptive_dir), (full, full_dir), (_, none_dir) = (
        outputs["adaptive"],
        outputs["flips+scales"],
        outputs["none"],
    )
    for name, reference in (("grey", full_dir), ("tiny", full_dir), ("colour", none_dir)):
        assert np.allclose(
            np.load(adaptive_dir / f"{name}_prob.npy"), np.load(reference / f"{name}_prob.npy"), atol=1e-5
        )
        assert np.array_equal(
            np.asarray(Image.open(adaptive_dir / f"{name}_mask.png")),
            np.asarray(Image.open(reference / f"{name}_mask.png")),
        )
    assert adaptive["grey.png"]["warning"] == full["grey.png"]["warning"] == GREY_WARNING
    assert adaptive["tiny.png"]["warning"] == full["tiny.png"]["warning"]
    assert adaptive["grey.png"]["qc_score"] == full["grey.png"]["qc_score"]


def test_configs_default_threshold_is_the_inferers():
    config = json.loads((REPO_ROOT / "configs" / "inference.json").read_text())
    assert config["tta_adaptive_threshold"] == ADAPTIVE_THRESHOLD and config["tta"] in TTA_MODES


def test_forced_full_reads_one_image_or_a_batch_and_nifti_slices():
    one = MetaTensor(torch.zeros(1, 3, 96, 96))
    one.meta.update({GREY_TO_COLOUR: True, "spatial_shape": np.array([300, 200])})  # one image, not a batch
    assert forced_full(one).tolist() == [True]
    slices = MetaTensor(torch.zeros(2, 3, 96, 96))
    slices.is_batch = True
    slices.meta["spatial_shape"] = torch.tensor([[300, 200, 1], [50, 200, 1]])  # NIfTI 2D slices: (H, W, 1)
    assert forced_full(slices).tolist() == [False, True]
    assert forced_full(torch.zeros(2, 3, 96, 96)).tolist() == [False, False]  # no meta: nothing forced
