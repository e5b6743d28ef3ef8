"""Test-time augmentation (``tta``): "none" is the plain forward, flips are inverted exactly, the configs run it."""

from pathlib import Path

import pytest
import torch
from bundle.data.demo import make_demo_dataset
from bundle.inference.tta import FLIP_DIMS, TTAInferer, probabilities
from PIL import Image

from tests.helpers import REPO_ROOT, run_bundle

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
