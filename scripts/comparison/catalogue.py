"""The rows a comparison can run: LH-UTANet stage 1 and stage 1 + 2, the MONAI peers, the stage-2 ablations, the
MobileNetV2 stage-1 variants and the stage-2 recipe study."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from scripts.bench.peers import LH_ENCODERS, MONAI_PEERS

PEER_LEARNING_RATE = 1e-3  # MONAI peers: train.json's learning rate before the encoder registry set LH-UTANet's


@dataclass(frozen=True)
class CompareRow:
    """One network of the comparison: how to train and evaluate it with the bundle configs.

    ``settings`` are bundle ids passed as command-line overrides to training and evaluation; a stage-2 row
    trains ``epoch_factor`` x ``--stage2_epochs`` epochs; ``overlay`` holds config entries written into an overlay file
    that comes last (MONAI peers: ``network_def``; recipes: ``train#lr_scheduler``); a stage-2 row
    fine-tunes ``stage1_row``'s checkpoint.
    """

    name: str
    settings: dict[str, Any] = field(default_factory=dict)
    overlay: dict[str, Any] = field(default_factory=dict)
    stage1_row: str | None = None
    epoch_factor: int = 1
    study: bool = False


def warmup_cosine_scheduler(warmup_epochs: int) -> dict[str, Any]:
    """``train#lr_scheduler``: linear warm-up from 0.1x over ``warmup_epochs``, then cosine to 0 (epoch level)."""
    return {
        "_target_": "torch.optim.lr_scheduler.SequentialLR",
        "optimizer": "@optimizer",
        "schedulers": [
            {
                "_target_": "torch.optim.lr_scheduler.LinearLR",
                "optimizer": "@optimizer",
                "start_factor": 0.1,
                "total_iters": warmup_epochs,
            },
            {
                "_target_": "torch.optim.lr_scheduler.CosineAnnealingLR",
                "optimizer": "@optimizer",
                "T_max": f"$@train#trainer#max_epochs - {warmup_epochs}",
            },
        ],
        "milestones": [warmup_epochs],
    }


STAGE2_RECIPES: dict[str, tuple[str, dict[str, Any], dict[str, Any], int]] = {
    # key: (label, bundle-id settings, overlay, epoch factor)
    "a": ("(a) reference recipe: MoE only, lr 1e-4", {}, {}, 1),
    "b": (
        "(b) MoE only, lr 1e-3, 2 warm-up epochs, 2x epochs",
        {"learning_rate": 1e-3},
        {"train#lr_scheduler": warmup_cosine_scheduler(2)},
        2,
    ),
    "c": (
        "(c) MoE only, lr 1e-4, gates initialised by k-means of the gate inputs",
        {},
        {"+train#handlers": [{"_target_": "bundle.training.handlers.KMeansGateInit", "seed": "@seed"}]},
        1,
    ),
    "d": ("(d) MoE only, lr 1e-4, plus a shared always-on expert", {}, {"network_def#moe_shared_expert": True}, 1),
    "e": ("(e) MoE + decoder + head trainable, lr 1e-4", {"trainable_patterns": ["moe", "decoder", "head"]}, {}, 1),
}

# inference.json's network_def reads these network settings from the checkpoint once it passes them; until then this
# overlay makes evaluation build the network the checkpoint needs (in train.json it restates the same ids)
ARCHITECTURE_OVERLAY: dict[str, Any] = {
    f"network_def#{key}": f"$@network_settings['{key}']" for key in ("full_resolution_skip", "norm", "deep_supervision")
}

STAGE1_VARIANTS: dict[str, tuple[str, dict[str, Any], dict[str, Any]]] = {
    # key: (label, bundle-id settings, overlay): one suspect of the MobileNetV2 small-data gap each (``--variants``)
    "lr1e-3": ("lr 1e-3 (the default before 0.5.0)", {"learning_rate": 1e-3}, {}),
    "lr3e-3": ("lr 3e-3 (the registry's MobileNetV2 default since 0.5.0)", {"learning_rate": 3e-3}, {}),
    "dec32": (
        "32-channel full-resolution decoder block (default 16)",
        {},
        {"network_def#decoder_channels": [96, 32, 24, 16, 32]},
    ),
    "decwide": (
        "decoder widths 96/64/48/32/32 (default 96/32/24/16/16)",
        {},
        {"network_def#decoder_channels": [96, 64, 48, 32, 32]},
    ),
    # the suspects of the small-data gap on fine structures (issue 28), one at a time
    "fr16": (
        "16-channel full-resolution skip before the stem's stride",
        {"full_resolution_skip": 16},
        ARCHITECTURE_OVERLAY,
    ),
    "fr32": (
        "32-channel full-resolution skip before the stem's stride",
        {"full_resolution_skip": 32},
        ARCHITECTURE_OVERLAY,
    ),
    "gn": ("GroupNorm (8 groups) instead of BatchNorm", {"norm": "group"}, ARCHITECTURE_OVERLAY),
    "in": ("InstanceNorm instead of BatchNorm", {"norm": "instance"}, ARCHITECTURE_OVERLAY),
    "ds": ("deep supervision (H/4, H/2 heads)", {"deep_supervision": True}, ARCHITECTURE_OVERLAY),
    "boundary": ("boundary-weighted DiceCE loss", {"loss_name": "dicece_boundary"}, ARCHITECTURE_OVERLAY),
    "fr16-gn": (
        "16-channel full-resolution skip + GroupNorm (the two winners)",
        {"full_resolution_skip": 16, "norm": "group"},
        ARCHITECTURE_OVERLAY,
    ),
}


def build_rows(
    ablation_encoders: Sequence[str],
    study_encoders: Sequence[str] = (),
    study_seeds: Sequence[int] = (),
    variants: bool = False,
) -> dict[str, CompareRow]:
    """All rows, in table order: LH-UTANet stage 1 / stage 1+2 per encoder, the MONAI peers, ablations, the
    MobileNetV2 stage-1 variants (STAGE1_VARIANTS, with ``variants``), then the stage-2 study (every recipe of
    STAGE2_RECIPES with every seed)."""
    rows: dict[str, CompareRow] = {}
    for encoder in LH_ENCODERS:
        rows[f"lh-{encoder}"] = CompareRow(f"LH-UTANet {encoder} (stage 1)", {"encoder": encoder})
        rows[f"lh-{encoder}-moe"] = CompareRow(
            f"LH-UTANet {encoder} (stage 1 + 2, top_k 2, λ 0.01)", {"encoder": encoder}, stage1_row=f"lh-{encoder}"
        )
    for key, peer in MONAI_PEERS.items():
        rows[key] = CompareRow(peer.name, {"learning_rate": PEER_LEARNING_RATE}, {"network_def": peer.network_def()})
    for encoder in ablation_encoders:
        ablations = [("top_k", k, f"top{k}") for k in (1, 3, 4)] + [
            ("moe_loss_weight", w, f"lambda{w:g}") for w in (0.0, 0.1)
        ]
        for setting, value, suffix in ablations:
            label = f"top_k {value}" if setting == "top_k" else f"λ {value:g}"
            rows[f"ablation-{encoder}-{suffix}"] = CompareRow(
                f"LH-UTANet {encoder} stage 1 + 2, {label}",
                {"encoder": encoder, setting: value},
                stage1_row=f"lh-{encoder}",
            )
    for key, (label, settings, overlay) in STAGE1_VARIANTS.items() if variants else ():
        rows[f"variant-mobilenetv2-{key}"] = CompareRow(
            f"LH-UTANet mobilenetv2 (stage 1), {label}", {"encoder": "mobilenetv2", **settings}, overlay
        )
    for encoder in study_encoders:
        rows[f"study-{encoder}-stage1"] = CompareRow(
            f"LH-UTANet {encoder} stage 1 (--stage1_ckpt, not trained here)", {"encoder": encoder}, study=True
        )
        for recipe, (label, settings, overlay, epoch_factor) in STAGE2_RECIPES.items():
            for seed in study_seeds:
                rows[f"study-{encoder}-{recipe}-s{seed}"] = CompareRow(
                    f"LH-UTANet {encoder} stage 2 {label}, seed {seed}",
                    {"encoder": encoder, **settings, "seed": seed},
                    overlay,
                    stage1_row=f"lh-{encoder}",
                    epoch_factor=epoch_factor,
                    study=True,
                )
    return rows
