"""Stage-2 recipes beyond the reference one: the shared expert (d) and k-means gate initialisation (c)."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from bundle.networks import LightweightHierarchicalUTANet
from bundle.networks.moe import TopKGate
from bundle.training.handlers import KMeansGateInit
from bundle.training.handlers.kmeans_gates import kmeans

from tests.helpers import tiny_trainer


def randomise_dockers(model: LightweightHierarchicalUTANet) -> LightweightHierarchicalUTANet:
    for docker in model.moe.dockers:
        torch.nn.init.normal_(docker.weight, std=0.1)
    return model


def test_shared_expert_starts_as_stage1_then_adds_to_every_gate():
    torch.manual_seed(0)
    stage1 = LightweightHierarchicalUTANet(encoder="mobilenetv2").eval()
    shared = LightweightHierarchicalUTANet(encoder="mobilenetv2", use_moe=True, moe_shared_expert=True).eval()
    missing, unexpected = shared.load_state_dict(stage1.state_dict(), strict=False)
    assert not unexpected and all(key.startswith("moe.") for key in missing)
    assert any(key.startswith("moe.shared_expert.") for key in missing)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(shared(x), stage1(x))  # dockers start at zero
        with_shared = randomise_dockers(shared)(x)
        for parameter in shared.moe.shared_expert.parameters():
            parameter.zero_()
        assert not torch.allclose(shared(x), with_shared)
    plain = LightweightHierarchicalUTANet(encoder="mobilenetv2", use_moe=True)
    assert plain.moe.shared_expert is None and not any("shared_expert" in key for key in plain.state_dict())


def test_shared_expert_trains_and_exports(tmp_path):
    import onnxruntime  # a pinned requirement: this test must not be skipped
    from bundle.backends.predictors import export_onnx

    torch.manual_seed(0)
    model = randomise_dockers(
        LightweightHierarchicalUTANet(encoder="mobilenetv2", use_moe=True, moe_shared_expert=True).train()
    )
    model(torch.randn(4, 3, 64, 64)).mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.moe.shared_expert.parameters())
    model.eval()
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        eager = model(x)
        torch.testing.assert_close(torch.jit.script(model)(x), eager, atol=1e-5, rtol=1e-4)
    export_onnx(model, tmp_path / "model.onnx", image_size=(64, 96))
    session = onnxruntime.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(session.run(None, {"image": x.numpy()})[0], eager.numpy(), atol=1e-4)


def test_kmeans_finds_separated_clusters():
    generator = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]])
    points = (centres.repeat_interleave(25, dim=0) + 0.3 * torch.randn(100, 2, generator=generator))[
        torch.randperm(100, generator=generator)
    ]
    found = kmeans(points, 4, iterations=10, generator=generator)
    distances = torch.cdist(found, centres)
    assert sorted(distances.argmin(dim=1).tolist()) == [0, 1, 2, 3]
    assert distances.min(dim=1).values.max() < 0.3
    with pytest.raises(ValueError, match="at least 4 points"):
        kmeans(points[:3], 4, iterations=1, generator=generator)


def test_gate_routed_to_nearest_centroid():
    torch.manual_seed(0)
    gate = TopKGate(channels=8, num_experts=4, top_k=2)
    centroids = torch.randn(4, 8)
    gate.route_to_nearest(centroids, sharpness=1.0)
    pooled = torch.randn(32, 8)
    weights = gate(pooled[:, :, None, None])
    nearest_two = torch.cdist(pooled, centroids).topk(2, largest=False).indices
    assert torch.equal(weights.topk(2).indices.sort(dim=1).values, nearest_two.sort(dim=1).values)
    assert torch.equal(weights.argmax(dim=1), nearest_two[:, 0])


def test_kmeans_init_sets_the_gates_before_the_first_epoch_only(caplog):
    torch.manual_seed(0)
    network = LightweightHierarchicalUTANet(encoder="mobilenetv2", use_moe=True)
    before = [gate.logits.weight.clone() for gate in network.moe.gates]
    images = [torch.rand(4, 3, 64, 64) * (index % 4) for index in range(4)]  # four brightness groups
    batches = [{"image": image, "label": (image[:, :1] > 1).float()} for image in images]
    trainer = tiny_trainer(network, batches, [KMeansGateInit(batches=4, iterations=5)], lr=0.0)
    trainer.state.max_epochs = 2
    with caplog.at_level(logging.INFO, logger="bundle.training.handlers.kmeans_gates"):
        trainer.run()
    runs = [r.getMessage() for r in caplog.records if r.name == "bundle.training.handlers.kmeans_gates"]
    assert len(runs) == 1 and runs[0].startswith("KMeansGateInit: 16 images")
    for gate, old in zip(network.moe.gates, before):
        assert not torch.equal(gate.logits.weight, old)
        torch.testing.assert_close(gate.logits.weight, network.moe.gates[0].logits.weight)  # one clustering
    stage1 = LightweightHierarchicalUTANet(encoder="mobilenetv2")
    with pytest.raises(ValueError, match="needs a network with an MoE"):
        tiny_trainer(stage1, batches, [KMeansGateInit(batches=1)], lr=0.0).run()
