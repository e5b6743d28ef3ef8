"""Stage-2 recipe (c): initialise the MoE gates by k-means, so that each expert starts on a cluster of images.

After "Revisiting single-gated mixtures of experts" (Liu et al. 2022): cluster the base network's features and let
the gate route each image to the experts of its nearest clusters; the base network stays the common branch
(here: the skip itself, to which the MoE adds a residual).
"""

from __future__ import annotations

import logging

import torch
from ignite.engine import Engine, Events

from ...distributed import unwrap

logger = logging.getLogger(__name__)


def kmeans(points: torch.Tensor, clusters: int, iterations: int, generator: torch.Generator) -> torch.Tensor:
    """k-means++ seeding, then Lloyd iterations: (N, C) points -> (clusters, C) centroids. An emptied cluster keeps
    its previous centroid."""
    if points.shape[0] < clusters:
        raise ValueError(f"k-means needs at least {clusters} points, got {points.shape[0]}.")
    centroids = points[torch.randint(points.shape[0], (1,), generator=generator)]
    while centroids.shape[0] < clusters:
        distances = torch.cdist(points, centroids).min(dim=1).values.pow(2)
        chosen = torch.multinomial(distances / distances.sum(), 1, generator=generator)
        centroids = torch.cat([centroids, points[chosen]])
    for _ in range(iterations):
        assignment = torch.cdist(points, centroids).argmin(dim=1)
        for index in range(clusters):
            members = points[assignment == index]
            if members.shape[0]:
                centroids[index] = members.mean(dim=0)
    return centroids


class KMeansGateInit:
    """Before the first stage-2 epoch, k-means the gates' input (the MoE's pooled fused skips, (B, emb_size)) over
    ``batches`` training batches into one cluster per expert, and set every gate to route an image to the experts of
    its nearest centroids (``TopKGate.route_to_nearest``). ``sharpness`` is 2 / the mean squared distance of a point
    to its centroid, so a typical margin between clusters is a logit gap of order 1. Not run again on resume.

    Args:
        batches: training batches whose features are clustered.
        iterations: Lloyd iterations.
        seed: seed of the k-means++ seeding.
    """

    def __init__(self, batches: int = 16, iterations: int = 25, seed: int = 0) -> None:
        self.batches, self.iterations, self.seed = batches, iterations, seed

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED(once=1), self)

    @torch.no_grad()
    def gate_inputs(self, engine: Engine, network: torch.nn.Module) -> torch.Tensor:
        """(N, emb_size) pooled fused skips of ``network`` (the unwrapped LH-UTANet) on the first ``batches``
        training batches."""
        pooled = []
        for index, batch in enumerate(engine.data_loader):
            if index == self.batches:
                break
            images = engine.prepare_batch(batch, engine.state.device, engine.non_blocking)[0]
            skips = network.encoder(images)[:-1]
            pooled.append(network.moe.fuse_and_pool(list(skips))[1].flatten(1).float().cpu())
        return torch.cat(pooled)

    def __call__(self, engine: Engine) -> None:
        network = unwrap(engine.network)
        if getattr(network, "moe", None) is None:
            raise ValueError("KMeansGateInit needs a network with an MoE (use_moe true): stage 2.")
        points = self.gate_inputs(engine, network)
        generator = torch.Generator().manual_seed(self.seed)
        centroids = kmeans(points, len(network.moe.experts), self.iterations, generator)
        assignment = torch.cdist(points, centroids).argmin(dim=1)
        sharpness = 2.0 / float((points - centroids[assignment]).pow(2).sum(dim=1).mean().clamp_min(1e-8))
        for gate in network.moe.gates:
            gate.route_to_nearest(centroids.to(gate.logits.weight), sharpness)
        sizes = torch.bincount(assignment, minlength=centroids.shape[0]).tolist()
        logger.info(
            "KMeansGateInit: %d images clustered, cluster sizes %s, sharpness %.3g", len(points), sizes, sharpness
        )
