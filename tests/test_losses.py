"""PraNet's structure loss: near 0 for a confident correct prediction, larger for a wrong one, edges weighted more."""

import torch
from bundle.training.losses import StructureLoss


def test_structure_loss_orders_predictions_and_weights_edges():
    label = torch.zeros(1, 1, 64, 64)
    label[..., 16:48, 16:48] = 1
    loss = StructureLoss()
    correct, wrong = loss(label * 20 - 10, label), loss(-(label * 20 - 10), label)
    assert correct < 1e-3 < 1.0 < wrong
    interior, edge = torch.zeros_like(label), torch.zeros_like(label)
    interior[..., 30:34, 30:34] = 1  # the same number of wrong pixels, deep inside or on the outline
    edge[..., 14:18, 30:34] = 1
    confident = label * 20 - 10
    assert loss(confident - 20 * interior * label, label) < loss(
        confident + 20 * edge * (1 - label) - 20 * edge * label, label
    )
    logits = torch.zeros_like(label, requires_grad=True)
    loss(logits, label).backward()
    assert logits.grad.abs().sum() > 0
