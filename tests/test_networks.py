"""LH-UTANet network: shapes, stages, MoE routing and balance loss, export, encoder weights."""

import itertools

import numpy as np
import pytest
import torch
from bundle.networks import (
    ENCODERS,
    EXPERT_NAMES,
    LightweightHierarchicalUTANet,
    balance_loss,
    build_encoder,
    cv_squared,
    lightweight_hierarchical_utanet,
)

from tests.helpers import REPO_ROOT


def randomise_dockers(model: LightweightHierarchicalUTANet) -> None:
    """Dockers start at zero (stage 2 starts as stage 1); give them weights so the MoE changes the output."""
    for docker in model.moe.dockers:
        torch.nn.init.normal_(docker.weight, std=0.1)


def test_invalid_input_size_names_the_multiple():
    model = LightweightHierarchicalUTANet(encoder="mobilenetv2").eval()
    with pytest.raises(ValueError, match="multiples of 32"):
        model(torch.randn(1, 3, 64, 70))
    with pytest.raises(ValueError, match="multiples of 32"):
        model(torch.randn(3, 64, 64))


def test_invalid_arguments():
    with pytest.raises(ValueError, match="Unknown encoder"):
        LightweightHierarchicalUTANet(encoder="vgg16")
    with pytest.raises(ValueError, match="top_k"):
        LightweightHierarchicalUTANet(encoder="mobilenetv2", use_moe=True, top_k=5)


def test_cv_squared_matches_formula_and_is_zero_for_uniform():
    gates = [
        torch.tensor([[0.7, 0.3, 0.0, 0.0], [0.0, 0.6, 0.4, 0.0], [0.5, 0.0, 0.0, 0.5]]),
        torch.tensor([[1.0, 0.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]]),
    ]
    expected = 0.0
    for g in gates:
        usage = g.numpy().sum(axis=0)
        expected += usage.var(ddof=1) / (usage.mean() ** 2 + 1e-10)
    assert balance_loss(gates).item() == pytest.approx(expected, rel=1e-6)
    assert cv_squared(torch.full((4,), 0.25)).item() == 0.0
    assert balance_loss([torch.full((5, 4), 0.25)] * 4).item() == 0.0


def test_gate_keeps_top_k_and_renormalises():
    model = LightweightHierarchicalUTANet(encoder="mobilenetv2", use_moe=True, top_k=3).eval()
    with torch.no_grad():
        model(torch.randn(4, 3, 64, 64))
    assert len(model.gate_weights) == 4
    for weights in model.gate_weights:
        assert weights.shape == (4, len(EXPERT_NAMES))
        assert torch.all((weights > 0).sum(dim=1) == 3)
        torch.testing.assert_close(weights.sum(dim=1), torch.ones(4))


@pytest.mark.parametrize("top_k", (1, 2, 3, 4))
def test_every_top_k_trains(top_k):
    model = LightweightHierarchicalUTANet(encoder="mobilenetv2", use_moe=True, top_k=top_k).train()
    logits = model(torch.randn(4, 3, 64, 64))
    (logits.mean() + 0.01 * model.balance_loss).backward()
    assert model.balance_loss.requires_grad
    assert all((w > 0).sum(dim=1).eq(top_k).all() for w in model.gate_weights)


def test_every_expert_receives_gradient_at_k2():
    torch.manual_seed(0)
    model = LightweightHierarchicalUTANet(encoder="mobilenetv2", use_moe=True, top_k=2).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    got_grad = {name: False for name, _ in model.moe.experts.named_parameters()}
    for _ in range(4):
        optimizer.zero_grad()
        logits = model(torch.randn(8, 3, 64, 64))
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, torch.rand_like(logits).round())
        (loss + 0.01 * model.balance_loss).backward()
        for name, param in model.moe.experts.named_parameters():
            got_grad[name] |= param.grad is not None and bool(param.grad.abs().sum() > 0)
        optimizer.step()
    assert all(got_grad.values()), [name for name, ok in got_grad.items() if not ok]


def test_sparse_routing_skips_unselected_experts_and_equals_dense():
    torch.manual_seed(0)
    model = LightweightHierarchicalUTANet(encoder="mobilenetv2", use_moe=True, top_k=2).eval()
    randomise_dockers(model)
    for gate in model.moe.gates:  # route every sample to experts 0 and 1
        torch.nn.init.zeros_(gate.logits.weight)
        gate.logits.bias.data = torch.tensor([2.0, 1.0, 0.0, -1.0])
    calls = dict.fromkeys(range(len(EXPERT_NAMES)), 0)
    hooks = [
        expert.register_forward_hook(
            lambda _m, args, _o, index=index: calls.__setitem__(index, calls[index] + len(args[0]))
        )
        for index, expert in enumerate(model.moe.experts)
    ]
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        sparse = model(x)
    assert calls == {0: 3, 1: 3, 2: 0, 3: 0}
    for hook in hooks:
        hook.remove()
    with torch.no_grad():
        fused, pooled = model.moe.fuse_and_pool(model.encoder(x)[:-1])
        forced = [gate(pooled) for gate in model.moe.gates]
        partial = [torch.zeros(3, 4) for _ in range(4)]  # gate g sends sample b to experts b+g and b+g+1
        for g, weights in enumerate(partial):
            for b in range(3):
                weights[b, (b + g) % 4], weights[b, (b + g + 1) % 4] = 0.6, 0.4
        for weights in (forced, partial):
            for dense_mix, sparse_mix in zip(model.moe.mix_dense(fused, weights), model.moe.mix_sparse(fused, weights)):
                torch.testing.assert_close(dense_mix, sparse_mix, atol=1e-6, rtol=1e-5)
    scripted = torch.jit.script(model)  # scripted code takes the dense path
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), sparse, atol=1e-5, rtol=1e-4)


def test_balance_loss_exposed_and_zero_in_stage1():
    model = LightweightHierarchicalUTANet(encoder="mobilenetv2").train()
    model(torch.randn(2, 3, 64, 64))
    assert model.balance_loss.item() == 0.0 and model.gate_weights == []


def test_reference_design_factory_call_style():
    model = lightweight_hierarchical_utanet(input_channel=1, num_classes=2, pretrained=True, use_mobilenet=True)
    assert model.use_moe and isinstance(model.encoder, type(build_encoder("mobilenetv2")))
    output, moe_loss = model.train()(torch.randn(2, 1, 64, 64))
    assert output.shape == (2, 2, 64, 64) and moe_loss.ndim == 0 and moe_loss.item() >= 0


# Names and parameter counts published for torchvision's resnet34 and mobilenet_v2 and MONAI's efficientnet-b0
# (without the classifier; for MobileNetV2 and EfficientNet-B0 also without the 1280-channel head conv that the
# encoders leave out). An encoder missing here is still tested by TestRegisteredEncoder.
PUBLISHED_KEYS = {
    "resnet34": ["conv1.weight", "bn1.running_var", "layer2.0.downsample.0.weight", "layer4.2.bn2.num_batches_tracked"],
    "mobilenetv2": ["features.0.0.weight", "features.1.conv.0.0.weight", "features.17.conv.3.bias"],
    "efficientnet-b0": ["_conv_stem.weight", "_bn0.running_mean", "_blocks.6.15._project_conv.weight"],
}
PUBLISHED_PARAMS = {
    "resnet34": 21_797_672 - 513_000,
    "mobilenetv2": 3_504_872 - 1_281_000 - 412_160,
    "efficientnet-b0": 5_288_548 - 1_281_000 - 409_600 - 2_560,
}


@pytest.mark.parametrize("encoder", sorted(PUBLISHED_PARAMS))
def test_encoder_matches_published_names_and_size(encoder):
    reference = build_encoder(encoder)
    assert sum(p.numel() for p in reference.parameters()) == PUBLISHED_PARAMS[encoder]
    assert set(PUBLISHED_KEYS[encoder]) <= set(reference.state_dict())


@pytest.fixture(params=sorted(ENCODERS))
def encoder(request):
    return request.param


class TestRegisteredEncoder:
    """The contract of bundle/networks/encoders/base.py, checked for every registered encoder."""

    def test_features_match_declared_channels_and_strides(self, encoder):
        module = build_encoder(encoder, in_channels=2).eval()
        with torch.no_grad():
            features = module(torch.randn(1, 2, 64, 96))
        assert [f.shape[1] for f in features] == list(module.out_channels)
        assert [(f.shape[2], f.shape[3]) for f in features] == [(64 // s, 96 // s) for s in (2, 4, 8, 16, 32)]
        assert module.output_stride == 32
        stem = module.state_dict()[module.stem_key]
        assert stem.ndim == 4 and stem.shape[1] == 2

    def test_every_parameter_is_used(self, encoder):
        module = build_encoder(encoder).train()
        sum(f.mean() for f in module(torch.randn(2, 3, 64, 64))).backward()
        unused = [name for name, p in module.named_parameters() if p.grad is None]
        assert unused == []  # DDP needs no find_unused_parameters in stage 1

    @pytest.mark.parametrize("use_moe", (False, True))
    def test_output_shapes(self, encoder, use_moe):
        for in_channels, out_channels, (h, w) in itertools.product((1, 3), (1, 3), ((64, 64), (96, 160))):
            model = LightweightHierarchicalUTANet(in_channels, out_channels, encoder=encoder, use_moe=use_moe).eval()
            with torch.no_grad():
                out = model(torch.randn(2, in_channels, h, w))
            assert isinstance(out, torch.Tensor)
            assert out.shape == (2, out_channels, h, w)

    def test_moe_fusion_index_default_comes_from_the_registry(self, encoder):
        model = LightweightHierarchicalUTANet(encoder=encoder, use_moe=True)
        assert model.moe.fusion_index == ENCODERS[encoder].moe_fusion_index
        assert LightweightHierarchicalUTANet(encoder=encoder, use_moe=True, moe_fusion_index=1).moe.fusion_index == 1

    def test_train_json_takes_its_learning_rate_from_the_registry(self, encoder):
        from monai.bundle import ConfigParser

        parser = ConfigParser()
        parser.read_config(str(REPO_ROOT / "configs" / "train.json"))
        parser["encoder"] = encoder
        assert parser.get_parsed_content("learning_rate") == ENCODERS[encoder].learning_rate
        parser["learning_rate"] = 0.02  # the command line wins
        assert parser.get_parsed_content("learning_rate") == 0.02

    def test_stage1_state_dict_loads_into_stage2(self, encoder):
        stage1 = LightweightHierarchicalUTANet(encoder=encoder, use_moe=False)
        stage2 = LightweightHierarchicalUTANet(encoder=encoder, use_moe=True)
        result = stage2.load_state_dict(stage1.state_dict(), strict=False)
        assert result.unexpected_keys == []
        assert result.missing_keys and all(key.startswith("moe.") for key in result.missing_keys)
        assert {key.split(".")[1] for key in result.missing_keys} == {"fuse", "experts", "gates", "dockers"}
        stage2.eval()
        stage1.eval()
        x = torch.randn(1, 3, 64, 64)
        with torch.no_grad():  # zero-initialised dockers: stage 2 starts exactly at stage 1's output
            torch.testing.assert_close(stage2(x), stage1(x))

    def test_torchscript_and_onnx_match_eager(self, encoder, tmp_path):
        import onnxruntime  # a pinned requirement: this test must not be skipped
        from bundle.backends.predictors import export_onnx
        from monai.networks.utils import convert_to_torchscript

        torch.manual_seed(0)
        model = LightweightHierarchicalUTANet(encoder=encoder, use_moe=True).eval()
        randomise_dockers(model)
        x = torch.randn(2, 3, 64, 96)
        with torch.no_grad():
            eager = model(x)
        scripted = convert_to_torchscript(model, filename_or_obj=str(tmp_path / "model.ts"))
        with torch.no_grad():
            torch.testing.assert_close(scripted(x), eager, atol=1e-4, rtol=1e-4)
        onnx_path = tmp_path / "model.onnx"
        export_onnx(model, onnx_path, image_size=(64, 96))
        session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
        other = torch.randn(1, 3, 128, 64)  # another batch and size than at export
        for sample in (x, other):
            with torch.no_grad():
                expected = model(sample).numpy()
            np.testing.assert_allclose(session.run(None, {"image": sample.numpy()})[0], expected, atol=1e-4)

    def test_encoder_weights_load_by_name(self, encoder, tmp_path):
        reference = build_encoder(encoder)
        state = {key: torch.randn_like(value.float()).to(value.dtype) for key, value in reference.state_dict().items()}
        unused = {f"{prefix}weight": torch.randn(3, 2) for prefix in reference.unused_pretrained_prefixes}
        path = tmp_path / "imagenet.pth"
        torch.save({**state, **unused}, path)

        model = LightweightHierarchicalUTANet(encoder=encoder, encoder_weights=str(path))
        for key, value in model.encoder.state_dict().items():
            torch.testing.assert_close(value, state[key])
        grey = LightweightHierarchicalUTANet(in_channels=1, encoder=encoder, encoder_weights=str(path))
        stem = grey.encoder.stem_key
        torch.testing.assert_close(grey.encoder.state_dict()[stem], state[stem].sum(dim=1, keepdim=True))

        dropped = [key for key in state if key != stem][len(state) // 2]
        del state[dropped]
        state["layer9.weird.weight"] = torch.zeros(1)
        torch.save(state, path)
        with pytest.raises(ValueError) as error:
            LightweightHierarchicalUTANet(encoder=encoder, encoder_weights=str(path))
        assert "layer9.weird.weight" in str(error.value) and dropped in str(error.value)
        with pytest.raises(FileNotFoundError, match="never downloaded"):
            LightweightHierarchicalUTANet(encoder=encoder, encoder_weights=str(tmp_path / "missing.pth"))


def test_register_encoder_checks_the_contract():
    from bundle.networks.encoders import register_encoder

    class Incomplete(torch.nn.Module):
        out_channels = (8, 16)

    with pytest.raises(TypeError, match="out_channels must list 5.*output_stride.*stem_key"):
        register_encoder("incomplete", moe_fusion_index=3)(Incomplete)
    with pytest.raises(TypeError, match="already registered"):
        register_encoder("mobilenetv2", moe_fusion_index=3)(type(build_encoder("mobilenetv2")))
    assert "incomplete" not in ENCODERS


def test_the_architecture_options_default_to_todays_network_and_old_checkpoints_keep_their_outputs(tmp_path):
    """full_resolution_skip / norm / deep_supervision: the defaults add no module and keep BatchNorm, so the shipped
    model.pt (a plain state_dict) and checkpoints that record settings from before these options load strictly,
    resolve to the defaults, and give the same logits as the network built without the new arguments."""
    from bundle.training.checkpoints import (
        ARCHITECTURE_DEFAULTS,
        read_network_settings,
        read_state_dict,
        resolve_network_settings,
    )

    shipped = REPO_ROOT / "models" / "model.pt"
    state = read_state_dict(shipped)
    settings = read_network_settings(shipped)
    assert {key: settings[key] for key in ARCHITECTURE_DEFAULTS} == ARCHITECTURE_DEFAULTS
    old_call = LightweightHierarchicalUTANet(encoder=settings["encoder"], use_moe=settings["use_moe"]).eval()
    assert old_call.full_resolution is None and old_call.aux_heads is None
    assert not any(isinstance(m, torch.nn.GroupNorm) for m in old_call.modules())
    resolved = resolve_network_settings(shipped, {"top_k": 2, "image_size": [224, 224]})  # as inference.json does
    rebuilt = LightweightHierarchicalUTANet(**{k: v for k, v in resolved.items() if k != "image_size"}).eval()
    for network in (old_call, rebuilt):
        network.load_state_dict(state, strict=True)
    x = torch.rand(1, 3, 224, 224)
    with torch.no_grad():
        assert torch.equal(old_call(x), rebuilt(x))

    recorded_before = {"encoder": "mobilenetv2", "use_moe": True, "top_k": 2, "in_channels": 3, "out_channels": 1}
    torch.save({"model": state, "network_settings": {**recorded_before, "image_size": [96, 96]}}, tmp_path / "old.pt")
    resolved = resolve_network_settings(tmp_path / "old.pt", {})
    assert resolved == {**recorded_before, "image_size": [96, 96], **ARCHITECTURE_DEFAULTS}


def test_variant_settings_are_read_from_the_weights_and_contradictions_fail(tmp_path):
    from bundle.training.checkpoints import SettingsMismatchError, read_network_settings, resolve_network_settings

    network = LightweightHierarchicalUTANet(full_resolution_skip=8, norm="instance", deep_supervision=True)
    torch.save(network.state_dict(), tmp_path / "plain.pt")  # no recorded settings: only what the weights show
    found = read_network_settings(tmp_path / "plain.pt")
    assert (found["full_resolution_skip"], found["deep_supervision"], found["norm"]) == (8, True, "group")
    torch.save({"model": network.state_dict(), "network_settings": {"norm": "instance"}}, tmp_path / "recorded.pt")
    assert read_network_settings(tmp_path / "recorded.pt")["norm"] == "instance"
    with pytest.raises(SettingsMismatchError, match="--full_resolution_skip 8"):
        resolve_network_settings(tmp_path / "plain.pt", {"top_k": 2, "image_size": [64, 64]}, full_resolution_skip=0)
    with pytest.raises(ValueError, match="full_resolution_skip must be >= 0 and norm one of"):
        LightweightHierarchicalUTANet(norm="layer")
