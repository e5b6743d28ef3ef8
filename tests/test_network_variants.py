"""The network variants of issue 28 (full-resolution skip, GroupNorm / InstanceNorm, deep supervision) and the losses
that go with them: each trains through train.json (1 epoch, 64 px), records itself in the checkpoint, is rebuilt from
the checkpoint alone, and exports to TorchScript and ONNX with the eager network's outputs."""

from pathlib import Path

import pytest
import torch
from bundle.backends.predictors import export_onnx
from bundle.data.demo import make_demo_dataset
from bundle.networks import LightweightHierarchicalUTANet
from bundle.training.checkpoints import ARCHITECTURE_DEFAULTS, read_network_settings, read_state_dict
from bundle.training.losses import BoundaryDiceCELoss, DeepSupervisionLoss, boundary_band
from monai.losses import DiceCELoss

from tests.helpers import export_checkpoint, run_bundle

VARIANTS = {  # every option in two trainings (the norms exclude each other)
    "skip-groupnorm-deepsupervision": {"full_resolution_skip": 16, "norm": "group", "deep_supervision": True},
    "instance-norm": {"norm": "instance"},
}
NETWORK_KEYS = ("encoder", "use_moe", "in_channels", "out_channels", "top_k", *ARCHITECTURE_DEFAULTS)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return Path(make_demo_dataset(tmp_path_factory.mktemp("demo") / "demo", num_images=8, size=64))


@pytest.fixture(scope="module", params=list(VARIANTS), ids=list(VARIANTS))
def trained(request, demo, tmp_path_factory):
    """(variant settings, checkpoint) of a 1-epoch stage-1 training of the variant through train.json."""
    run = tmp_path_factory.mktemp(request.param)
    settings = VARIANTS[request.param]
    run_bundle(
        ["train.json"],
        bundle_root=str(run),
        dataset_dir=str(demo),
        ckpt_dir=str(run / "models"),
        epochs=1,
        batch_size=4,
        num_workers=0,
        image_size=[64, 64],
        **settings,
    )
    return settings, run / "models" / "stage1" / "model.pt"


def network_from_checkpoint(ckpt):
    """The network that the checkpoint's recorded and weight-derived settings alone build, weights loaded strictly."""
    settings = read_network_settings(ckpt)
    network = LightweightHierarchicalUTANet(**{key: settings[key] for key in NETWORK_KEYS})
    network.load_state_dict(read_state_dict(ckpt), strict=True)
    return network.eval()


def test_the_checkpoint_records_the_variant_and_rebuilds_it_alone(trained):
    settings, ckpt = trained
    recorded = torch.load(ckpt, weights_only=True)["network_settings"]
    assert {**recorded, **settings} == recorded  # recorded as trained
    assert {**ARCHITECTURE_DEFAULTS, **settings} == {key: recorded[key] for key in ARCHITECTURE_DEFAULTS}
    network = network_from_checkpoint(ckpt)
    assert network(torch.rand(1, 3, 64, 64)).shape == (1, 1, 64, 64)
    assert network.aux_logits == []  # deep supervision: nothing extra at inference


def test_the_variant_exports_to_torchscript_and_onnx(trained, tmp_path):
    import onnxruntime

    _, ckpt = trained
    network = network_from_checkpoint(ckpt)
    export_onnx(network, tmp_path / "model.onnx", [64, 64])
    scripted = torch.jit.script(network)
    x = torch.rand(2, 3, 96, 64)
    session = onnxruntime.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        expected = network(x)
        torch.testing.assert_close(scripted(x), expected, atol=1e-4, rtol=1e-4)
        onnx_out = torch.from_numpy(session.run(None, {"image": x.numpy()})[0])
    torch.testing.assert_close(onnx_out, expected, atol=1e-3, rtol=1e-3)  # ONNX Runtime's GroupNorm kernels


def test_inference_json_and_the_export_scripts_build_the_variant_from_the_checkpoint_alone(trained, tmp_path):
    import onnxruntime

    _, ckpt = trained
    ts_path, onnx_path = export_checkpoint(ckpt, tmp_path)
    x = torch.rand(1, 3, 64, 64)
    session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        expected = network_from_checkpoint(ckpt)(x)
        torch.testing.assert_close(torch.jit.load(str(ts_path)).eval()(x), expected, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(
        torch.from_numpy(session.run(None, {"image": x.numpy()})[0]), expected, atol=1e-3, rtol=1e-3
    )


def test_boundary_loss_weighs_the_band_around_edges():
    label = torch.zeros(1, 1, 16, 16)
    label[:, :, 4:12, 4:12] = 1
    band = boundary_band(label, 1)
    assert band[0, 0, 8, 8] == 0 and band[0, 0, 0, 0] == 0 and band[0, 0, 4, 8] == 1 and band[0, 0, 3, 8] == 1
    assert band.sum() == (10 * 10 - 6 * 6)
    perfect = (label * 2 - 1) * 10
    blurred = perfect.clone()
    blurred[band.bool()] = 0.0  # unsure exactly on the edges
    loss = BoundaryDiceCELoss(band_width=1)
    assert loss(blurred, label) - DiceCELoss(sigmoid=True)(blurred, label) > 0.6  # the band's BCE: log 2
    assert loss(perfect, label) < 0.01
    with pytest.raises(ValueError, match="band_width"):
        BoundaryDiceCELoss(band_width=0)


def test_deep_supervision_adds_the_auxiliary_losses_in_training_only():
    torch.manual_seed(0)
    network = LightweightHierarchicalUTANet(deep_supervision=True)
    base = DiceCELoss(sigmoid=True)
    loss = DeepSupervisionLoss(base, network)
    x, label = torch.rand(2, 3, 64, 64), (torch.rand(2, 1, 64, 64) > 0.5).float()
    network.train()
    logits = network(x)
    assert [a.shape[-1] for a in network.aux_logits] == [16, 32]
    assert loss(logits, label) > base(logits, label) + 0.1  # two auxiliary terms, weights 0.25 and 0.5
    network.eval()
    logits = network(x)
    assert loss(logits, label) == base(logits, label)
