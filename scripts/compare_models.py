"""Compare LH-UTANet with MONAI networks, and its MoE settings, trained and evaluated through the SAME bundle configs.

Every network is trained with ``configs/train.json`` (LH-UTANet stage 2: plus ``configs/finetune_moe.json``)
and evaluated with ``configs/evaluate.json`` on the dataset's test split at its original resolution; only
``network_def`` (MONAI peers: a one-key overlay written into the run folder) or the LH-UTANet ids
``encoder`` / ``use_moe`` / ``top_k`` / ``moe_loss_weight`` differ. All runs share one budget: ``image_size``,
``seed``, stage-1 ``epochs`` and stage-2 ``stage2_epochs``.

Rows (``--rows``, default all):
    lh-resnet34, lh-mobilenetv2                 LH-UTANet stage 1 only
    lh-resnet34-moe, lh-mobilenetv2-moe         stage 1 + stage 2 (top_k 2, lambda 0.01), from the stage-1 run
    basicunet, unet, attentionunet, flexibleunet-resnet34, swinunetr   MONAI peers (scripts/benchmark.py)
    ablation-<enc>-top{1,3,4}, ablation-<enc>-lambda{0,0.1}    stage-2 ablations (with ``--ablations <enc>``)
    study-<enc>-<recipe>-s<seed>                stage-2 recipes (STAGE2_RECIPES) x ``--study_seeds`` (with ``--study <enc>``)

``--stage1_ckpt PATH`` makes every stage-2 row fine-tune that checkpoint (e.g. the shipped, converged
``models/stage1/model.pt``) instead of the one its stage-1 row trains.

Each row's run folder under ``--work_dir`` keeps its checkpoints, logs and ``result.json``; a re-run reuses
finished rows, so an interrupted comparison continues where it stopped. The summary is written to
``--output``: ``results.csv``, ``results.md`` (tables, budget, commands), ``dice_vs_latency.png`` and
``validation_curves.png`` (validation Dice against training minutes).

Usage (from the repository root):
    python scripts/compare_models.py --dataset_dir ../shared/data/kvasir-seg --work_dir runs/compare/kvasir \\
        --output docs/results/kvasir --image_size 128 --epochs 10 --stage2_epochs 5 --ablations mobilenetv2
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from bundle.io import atomic_write, atomic_write_csv, atomic_write_json, atomic_write_text
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from monai.bundle import ConfigParser
from scripts.bench.measure import cpu_model, markdown_table, measure_cost, measure_latency
from scripts.bench.peers import LH_ENCODERS, MONAI_PEERS, peer_settings

REPO_ROOT = Path(__file__).resolve().parents[1]


CONFIGS = REPO_ROOT / "configs"
METRICS = ("dice", "iou", "precision", "recall", "hd95")
LATENCY_ITERS = 20
PEER_LEARNING_RATE = 1e-3  # MONAI peers: train.json's learning rate before the encoder registry set LH-UTANet's
TIME_BUDGET_EPOCHS = 10_000  # --minutes: the epoch limit no budgeted run reaches (bundle.handlers.TimeBudget ends it)
COLUMNS = (
    "row",
    "network",
    "params_m",
    "gmacs",
    "cpu_latency_ms",
    "train_minutes",
    "best_val_loss",
    "best_val_dice",
    *(f"test_{metric}_{stat}" for metric in METRICS for stat in ("mean", "median")),
    "test_images",
    "expert_usage",
)


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
        {"+train#handlers": [{"_target_": "bundle.handlers.KMeansGateInit", "seed": "@seed"}]},
        1,
    ),
    "d": ("(d) MoE only, lr 1e-4, plus a shared always-on expert", {}, {"network_def#moe_shared_expert": True}, 1),
    "e": ("(e) MoE + decoder + head trainable, lr 1e-4", {"trainable_patterns": ["moe", "decoder", "head"]}, {}, 1),
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
        variants = [("top_k", k, f"top{k}") for k in (1, 3, 4)] + [
            ("moe_loss_weight", w, f"lambda{w:g}") for w in (0.0, 0.1)
        ]
        for setting, value, suffix in variants:
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


def bundle_command(configs: Sequence[Path], overrides: dict[str, Any]) -> list[str]:
    """``python -m monai.bundle run`` over ``configs`` with ``--id value`` overrides (values as JSON)."""
    command = [sys.executable, "-m", "monai.bundle", "run", "--config_file", repr([str(c) for c in configs])]
    for key, value in overrides.items():
        command += [f"--{key}", value if isinstance(value, str) else json.dumps(value)]
    return command


def run_logged(command: list[str], log_path: Path, threads: int) -> float:
    """Run ``command`` from the repository root with ``threads`` CPU threads and its output in ``log_path``.

    Returns the wall seconds. The thread count is fixed because CPU results depend on it (docs/reliability.md).
    """
    print("$", shlex.join(command), flush=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    start = time.perf_counter()
    with open(log_path, "w", encoding="utf-8") as log:
        result = subprocess.run(command, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, check=False)
    if result.returncode != 0:
        tail = "".join(log_path.read_text(encoding="utf-8", errors="replace").splitlines(True)[-30:])
        raise RuntimeError(f"command failed (exit {result.returncode}), log {log_path}:\n{tail}")
    return time.perf_counter() - start


def scalar_events(log_dir: Path, tag: str) -> list[tuple[float, float]]:
    """``(minutes since the run's first TensorBoard event, value)`` of the scalar ``tag`` written under
    ``log_dir``, in step order."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events: list[tuple[int, float, float]] = []
    start = math.inf
    for event_file in sorted(log_dir.glob("events.out.tfevents.*")):
        accumulator = EventAccumulator(str(event_file), size_guidance={"scalars": 0})
        accumulator.Reload()
        start = min(start, accumulator.FirstEventTimestamp())
        if tag in accumulator.Tags()["scalars"]:
            events += [(event.step, event.wall_time, event.value) for event in accumulator.Scalars(tag)]
    return [((wall_time - start) / 60, value) for _, wall_time, value in sorted(events)]


def scalar_history(log_dir: Path, tag: str) -> list[float]:
    """Values of the TensorBoard scalar ``tag`` written under ``log_dir``, in step order."""
    return [value for _, value in scalar_events(log_dir, tag)]


def expert_usage_summary(usage_path: Path) -> str:
    """Last epoch's per-gate expert shares from ``moe_usage.json``, e.g. ``gate0 0.25/0.25/0.25/0.25; gate1 ...``."""
    if not usage_path.is_file():
        return "no MoE"
    last = json.loads(usage_path.read_text(encoding="utf-8"))["epochs"][-1]["usage"]
    return "; ".join(
        f"{gate} " + "/".join(f"{share:.2f}" for share in shares.values()) for gate, shares in last.items()
    )


class Comparison:
    """Trains, evaluates and measures the rows of one comparison; each row's result is cached in its run folder."""

    def __init__(self, args: argparse.Namespace, rows: dict[str, CompareRow]) -> None:
        self.args, self.rows = args, rows
        self.work_dir = Path(args.work_dir).resolve()
        self.budget = {
            "dataset_dir": str(Path(args.dataset_dir).resolve()),
            "image_size": [args.image_size, args.image_size],
            "seed": args.seed,
            "batch_size": args.batch_size,
            "num_workers": args.num_workers,
        }
        full_datalist = datalist = "bundle.data.load_datalist(@dataset_dir, @val_fraction, @split_seed)"
        if args.validation_as_test:
            datalist = f"bundle.data.validation_as_test({datalist}, @val_fraction, @split_seed)"
        if args.train_images:
            datalist = f"bundle.data.training_subset({datalist}, {args.train_images}, @val_fraction, @split_seed)"
        if datalist != full_datalist:
            self.budget["datalist"] = "$" + datalist

    def run_dir(self, key: str) -> Path:
        return self.work_dir / key

    def result(self, key: str) -> dict[str, Any]:
        """The row's training and test results, computed once (training its stage-1 row first when needed) and cached."""
        result_path = self.run_dir(key) / "result.json"
        if result_path.is_file():
            cached = json.loads(result_path.read_text(encoding="utf-8"))
            if cached.get("budget") == self.budget_of(key):
                return cached
            raise RuntimeError(
                f"{result_path} was made with another budget ({cached.get('budget')}); "
                "choose another --work_dir or move the old one away (nothing is overwritten)."
            )
        row = self.rows[key]
        if row.stage1_row is not None and not self.args.stage1_ckpt:
            self.result(row.stage1_row)
        result = {"row": key, "network": row.name, "budget": self.budget_of(key), "settings": row.settings}
        if self.is_given_stage1(key):
            result.update(
                train_minutes=0.0, best_val_loss=float("nan"), best_val_dice=float("nan"), expert_usage="no MoE"
            )
        else:
            result.update(self.train(key))
        result.update(self.evaluate(key))
        if row.study:  # recipes are chosen on validation data: score it like the test split, at original resolution
            result.update(self.evaluate(key, "validation"))
        atomic_write_json(result_path, result)
        return result

    def is_given_stage1(self, key: str) -> bool:
        """The study's stage-1 row: it evaluates ``--stage1_ckpt`` and trains nothing."""
        return self.rows[key].study and self.rows[key].stage1_row is None

    def budget_of(self, key: str) -> dict[str, Any]:
        row = self.rows[key]
        if self.is_given_stage1(key):
            if not self.args.stage1_ckpt:
                raise SystemExit(f"row {key} evaluates --stage1_ckpt; pass it.")
            return {**self.budget, "stage1_ckpt": str(Path(self.args.stage1_ckpt).resolve())}
        if self.args.minutes:
            return {**self.budget, "minutes": self.minutes(key), "train_threads": self.args.train_threads}
        if row.stage1_row is None:
            return {
                **self.budget,
                "epochs": self.args.epochs,
                "stage2_epochs": 0,
                "train_threads": self.args.train_threads,
            }
        stage1 = {"stage1_ckpt": str(Path(self.args.stage1_ckpt).resolve())} if self.args.stage1_ckpt else {}
        epochs = {"epochs": self.args.epochs, "stage2_epochs": self.stage2_epochs(key)}
        return {**self.budget, **stage1, **epochs, "train_threads": self.args.train_threads}

    def minutes(self, key: str) -> float:
        """``--minutes``: the row's own training budget. A stage-2 row trains ``--stage2_minutes`` (default a quarter
        of the budget) on its stage-1 row, which trains the rest, so that LH-UTANet with its stage 2 gets the
        budget of a MONAI peer; LH-UTANet stage-1 rows therefore train ``minutes - stage2_minutes``."""
        stage2 = self.args.stage2_minutes or self.args.minutes / 4
        row = self.rows[key]
        if row.stage1_row is not None:
            return stage2
        return self.args.minutes - stage2 if "encoder" in row.settings else self.args.minutes

    def stage2_epochs(self, key: str) -> int:
        return self.args.stage2_epochs * self.rows[key].epoch_factor

    def configs(self, key: str, evaluate: bool = False) -> list[Path]:
        """Config files of the row's training (stage 2: plus finetune_moe.json) or evaluation, peers' overlay last."""
        row = self.rows[key]
        if evaluate:
            configs = [CONFIGS / "train.json", CONFIGS / "evaluate.json"]
        else:
            configs = [CONFIGS / "train.json"] + ([CONFIGS / "finetune_moe.json"] if row.stage1_row else [])
        if row.overlay:
            overlay = self.run_dir(key) / "overlay.json"
            atomic_write_json(overlay, row.overlay)
            configs.append(overlay)
        if self.args.minutes and not evaluate:
            budget = self.run_dir(key) / "time_budget.json"
            handler = {
                "_target_": "bundle.handlers.TimeBudget",
                "minutes": self.minutes(key),
                "optimizer": "@optimizer",
            }
            atomic_write_json(budget, {"+train#handlers": [handler]})
            configs.append(budget)
        return configs

    def checkpoint(self, key: str) -> Path:
        if self.is_given_stage1(key):
            return Path(self.args.stage1_ckpt).resolve()
        return self.run_dir(key) / "models" / "model.pt"

    def stage1_checkpoint(self, key: str) -> Path:
        """The checkpoint a stage-2 row fine-tunes: ``--stage1_ckpt``, else its stage-1 row's."""
        return (
            Path(self.args.stage1_ckpt).resolve()
            if self.args.stage1_ckpt
            else self.checkpoint(self.rows[key].stage1_row)
        )

    def train(self, key: str) -> dict[str, Any]:
        """Train the row; return train minutes (stage 2: of both stages), best validation loss/Dice and expert usage."""
        row, run_dir = self.rows[key], self.run_dir(key)
        run_dir.mkdir(parents=True, exist_ok=True)
        overrides = {
            **self.budget,
            "split_seed": self.args.seed,  # every row, whatever its own seed, splits the data alike
            **row.settings,
            "output_dir": str(run_dir / "train_logs"),
            "save_dir": str(run_dir / "models"),
            "val_interval": self.args.val_interval,
        }
        if row.stage1_row is not None:
            overrides.update(stage1_ckpt=str(self.stage1_checkpoint(key)), epochs=self.stage2_epochs(key))
        else:
            overrides["epochs"] = self.args.epochs
        if self.args.minutes:
            overrides["epochs"] = TIME_BUDGET_EPOCHS
        command = bundle_command(self.configs(key), overrides)
        minutes = run_logged(command, run_dir / "train.log", self.args.train_threads) / 60
        if row.stage1_row is not None and not self.args.stage1_ckpt:
            minutes += self.result(row.stage1_row)["train_minutes"]
        logs = run_dir / "train_logs"
        val_loss, val_dice = scalar_history(logs, "val_loss"), scalar_history(logs, "val_mean_dice")
        return {
            "train_minutes": minutes,
            "best_val_loss": min(val_loss, default=float("nan")),
            "best_val_dice": max(val_dice, default=float("nan")),
            "expert_usage": expert_usage_summary(logs / "moe_usage.json"),
        }

    def evaluate(self, key: str, split: str = "test") -> dict[str, Any]:
        """Evaluate the row's best checkpoint on ``split`` ("test" or "validation") at original resolution
        (configs/evaluate.json); return ``{split}_<metric>_<mean|median>`` and ``{split}_images``."""
        row, run_dir = self.rows[key], self.run_dir(key)
        run_dir.mkdir(parents=True, exist_ok=True)
        overrides = {
            **self.budget,
            "split_seed": self.args.seed,
            **row.settings,
            "ckpt_path": str(self.checkpoint(key)),
            "output_dir": str(run_dir / split),
        }
        if split != "test":
            overrides["eval_split"] = split
        if "network_def" in row.overlay:  # evaluate.json reads network_settings from LH-UTANet checkpoints only
            settings = peer_settings([self.args.image_size, self.args.image_size])
            overrides.update(in_channels=settings["in_channels"], out_channels=settings["out_channels"])
            overrides["network_settings"] = settings
        configs = self.configs(key, evaluate=True)
        run_logged(bundle_command(configs, overrides), run_dir / f"evaluate_{split}.log", self.args.train_threads)
        summary = json.loads((run_dir / split / "metrics_summary.json").read_text(encoding="utf-8"))
        out: dict[str, Any] = {f"{split}_images": summary["images"]}
        for metric in METRICS:
            for stat in ("mean", "median"):
                out[f"{split}_{metric}_{stat}"] = summary["metrics"][metric][stat]
        return out

    def validation_curve(self, key: str) -> list[tuple[float, float]]:
        """``(training minutes, validation Dice)`` per validation of the row; a stage-2 row continues its stage-1
        row's curve after that row's train minutes."""
        row, logs = self.rows[key], self.run_dir(key) / "train_logs"
        if row.stage1_row is None or self.args.stage1_ckpt:
            return scalar_events(logs, "val_mean_dice")
        offset = self.result(row.stage1_row)["train_minutes"]
        stage2 = [(offset + minutes, dice) for minutes, dice in scalar_events(logs, "val_mean_dice")]
        return self.validation_curve(row.stage1_row) + stage2

    def measure(self, key: str) -> dict[str, Any]:
        """Params, GMACs and median batch-1 CPU latency of the row's network at the budget's image size."""
        row = self.rows[key]
        parser = ConfigParser()
        parser.read_config([str(c) for c in self.configs(key)])
        parser.update({**row.settings, "use_moe": row.stage1_row is not None})
        torch.manual_seed(0)
        network = parser.get_parsed_content("network_def").eval()
        shape = (1, 3, self.args.image_size, self.args.image_size)
        torch.set_num_threads(self.args.threads)
        params, gmacs = measure_cost(network, shape)
        return {"params_m": params, "gmacs": gmacs, "cpu_latency_ms": measure_latency(network, shape, LATENCY_ITERS)}


def format_cell(value: Any) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.3f}"
    return str(value)


def mean_std(values: list[float]) -> str:
    """``mean ± std`` (sample standard deviation) with 4 decimals, or the single value."""
    mean = sum(values) / len(values)
    if len(values) == 1:
        return f"{mean:.4f}"
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
    return f"{mean:.4f} ± {std:.4f}"


def study_table(results: list[dict[str, Any]], rows: dict[str, CompareRow]) -> str:
    """Markdown table of the stage-2 recipe study: per recipe, mean ± std over its seeds of validation and test Dice
    (original resolution), the gain over the stage-1 row, expert usage (first seed) and latency; "" without it."""
    study = [r for r in results if rows[r["row"]].study]
    stage1 = next((r for r in study if rows[r["row"]].stage1_row is None), None)
    if stage1 is None:
        return ""
    body = [["stage 1 (the given checkpoint)", "1", f"{stage1['validation_dice_mean']:.4f}", "—"]]
    body[0] += [f"{stage1['test_dice_mean']:.4f}", "—", "no MoE", format_cell(stage1["cpu_latency_ms"])]
    for recipe, (label, *_rest) in STAGE2_RECIPES.items():
        runs = [r for r in study if r["row"].split("-")[2:3] == [recipe]]
        if not runs:
            continue
        val, test = [r["validation_dice_mean"] for r in runs], [r["test_dice_mean"] for r in runs]
        gains = [v - stage1["validation_dice_mean"] for v in val]
        test_gains = [t - stage1["test_dice_mean"] for t in test]
        body.append(
            [label, str(len(runs)), mean_std(val), mean_std(gains), mean_std(test), mean_std(test_gains)]
            + [runs[0]["expert_usage"], format_cell(runs[0]["cpu_latency_ms"])]
        )
    head = ["recipe", "seeds", "val Dice", "val gain", "test Dice", "test gain", "expert usage (seed 0)", "CPU ms"]
    return "## Stage-2 recipes (from the same stage-1 checkpoint)\n\n" + markdown_table(head, body)


def ablation_table(results: list[dict[str, Any]], rows: dict[str, CompareRow]) -> str:
    """Markdown table of the stage-2 rows of each ablated encoder by top_k and lambda, or "" without ablations."""
    defaults = {  # each id where it is defined: top_k in train.json, moe_loss_weight in finetune_moe.json
        **json.loads((CONFIGS / "train.json").read_text(encoding="utf-8")),
        **json.loads((CONFIGS / "finetune_moe.json").read_text(encoding="utf-8")),
    }
    ablated = {rows[r["row"]].settings["encoder"] for r in results if r["row"].startswith("ablation-")}
    body = []
    for result in results:
        row = rows[result["row"]]
        if row.stage1_row is None or row.settings["encoder"] not in ablated:
            continue
        top_k = row.settings.get("top_k", defaults["top_k"])
        weight = row.settings.get("moe_loss_weight", defaults["moe_loss_weight"])
        cells = [result["test_dice_mean"], result["test_dice_median"], result["test_iou_mean"], result["best_val_dice"]]
        body.append(
            [row.settings["encoder"], str(top_k), f"{weight:g}", *map(format_cell, cells), result["expert_usage"]]
        )
    if not body:
        return ""
    head = ["encoder", "top_k", "λ", "test Dice", "median Dice", "IoU", "best val Dice", "expert usage (last epoch)"]
    return "## MoE ablations (stage 2 from the same stage-1 checkpoint)\n\n" + markdown_table(head, body)


def budget_text(args: argparse.Namespace, test_images: int) -> str:
    """The summary's budget paragraph: training budget, data, threads, evaluation and latency measurement."""
    if args.minutes:
        stage2 = args.stage2_minutes or args.minutes / 4
        training = (
            f"Budget: every network {args.minutes:g} wall-clock minutes of training (`bundle.handlers.TimeBudget`: "
            "whole epochs, learning rate on a cosine over the time); LH-UTANet stage-2 rows spend "
            f"{stage2:g} of them in stage 2 on a stage-1 run of {args.minutes - stage2:g} minutes (the stage-1 rows); "
        )
    elif args.stage1_ckpt:
        training = (
            f"Budget: stage 1 is the given checkpoint `{args.stage1_ckpt}` (not trained here), which every stage-2 "
            f"row fine-tunes for {args.stage2_epochs} epochs"
            + (" (recipe (b): twice that)" if args.study else "")
            + "; "
        )
    else:
        training = (
            f"Budget: every network {args.epochs} stage-1 epochs; stage-2 rows add {args.stage2_epochs} epochs "
            + ("(recipe (b): twice that) " if args.study else "")
            + "fine-tuning the stage-1 checkpoint, with the row's seed; "
        )
    subset = (
        f"trained on {args.train_images} images (training + validation, validation split off them), "
        if args.train_images
        else ""
    )
    return (
        training
        + f"{args.image_size}×{args.image_size}, data split by seed {args.seed}, batch {args.batch_size}, {subset}"
        + f"{args.train_threads} CPU thread(s) per training process. "
        + f"Test metrics: `configs/evaluate.json` on the {test_images} test images at their original resolution "
        + "(mean over images; HD95 in pixels). CPU latency: batch 1 at the training size, "
        + f"{args.threads} thread(s), median of {LATENCY_ITERS} warm runs on {cpu_model()} ({platform.machine()}); "
        + "train minutes are wall-clock on the same machine, including data caching and validation."
    )


def write_summary(
    results: list[dict[str, Any]],
    rows: dict[str, CompareRow],
    args: argparse.Namespace,
    command: str,
    curves: dict[str, list[tuple[float, float]]],
) -> None:
    """Write results.csv, results.md, dice_vs_latency.png and validation_curves.png (``curves``: per row key,
    ``(training minutes, validation Dice)``) into ``args.output``."""
    output = Path(args.output)
    atomic_write_csv(output / "results.csv", COLUMNS, results)

    head = [
        "network",
        "params (M)",
        "GMACs",
        "CPU ms",
        "train min",
        "best val loss",
        "best val Dice",
        "test Dice",
        "IoU",
        "precision",
        "recall",
        "HD95 (px)",
    ]
    keys = ["network", "params_m", "gmacs", "cpu_latency_ms", "train_minutes", "best_val_loss", "best_val_dice"]
    keys += [f"test_{metric}_mean" for metric in METRICS]
    table = markdown_table(head, [[format_cell(result[key]) for key in keys] for result in results])
    medians = markdown_table(
        ["network", *(f"median {metric}" for metric in METRICS), "expert usage (last epoch, per gate)"],
        [
            [
                result["network"],
                *(format_cell(result[f"test_{metric}_median"]) for metric in METRICS),
                result["expert_usage"],
            ]
            for result in results
        ],
    )
    text = "\n\n".join(
        [
            f"# Model comparison on `{Path(args.dataset_dir).name}`",
            f"Command: `{command}`",
            budget_text(args, results[0]["test_images"]),
            table,
            medians,
            *filter(None, [ablation_table(results, rows), study_table(results, rows)]),
            "![test Dice against CPU latency](dice_vs_latency.png)",
            "![validation Dice against training minutes](validation_curves.png)",
        ]
    )
    atomic_write_text(output / "results.md", text + "\n")
    atomic_write(output / "dice_vs_latency.png", lambda tmp: plot(results, tmp, f"{args.image_size}×{args.image_size}"))
    atomic_write(output / "validation_curves.png", lambda tmp: plot_curves(curves, tmp))


def new_axes() -> tuple[Figure, Any]:
    """A 7x4.5-inch figure on the Agg canvas and its one axes."""
    figure = Figure(figsize=(7, 4.5))
    FigureCanvasAgg(figure)
    return figure, figure.add_subplot()


def save_png(figure: Figure, axes: Any, path: Path) -> None:
    """Grid the axes and write the figure to ``path`` as a 120-dpi PNG."""
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, format="png", dpi=120)


def plot(results: list[dict[str, Any]], path: Path, size: str) -> None:
    """Scatter of test Dice against CPU latency, one labelled point per network (ablation and study rows have their
    tables)."""
    figure, axes = new_axes()
    for result in (r for r in results if not r["row"].startswith(("ablation-", "study-"))):
        lh = result["row"].startswith("lh-")
        axes.scatter(
            result["cpu_latency_ms"], result["test_dice_mean"], marker="o" if lh else "s", color="C0" if lh else "C1"
        )
        axes.annotate(
            result["row"],
            (result["cpu_latency_ms"], result["test_dice_mean"]),
            fontsize=7,
            xytext=(3, 3),
            textcoords="offset points",
        )
    axes.set_xlabel(f"CPU latency, batch 1, {size} (ms)")
    axes.set_ylabel("test Dice (mean, original resolution)")
    save_png(figure, axes, path)


def plot_curves(curves: dict[str, list[tuple[float, float]]], path: Path) -> None:
    """Validation Dice against wall-clock training minutes, one line per row (a stage-2 row's line starts with its
    stage 1)."""
    figure, axes = new_axes()
    for key, curve in curves.items():
        if curve:
            minutes, dice = zip(*curve)
            axes.plot(minutes, dice, marker=".", linestyle="-" if key.startswith("lh-") else "--", label=key)
    axes.set_xlabel("training minutes (wall clock, including validation)")
    axes.set_ylabel("validation Dice (training size)")
    axes.legend(fontsize=7)
    save_png(figure, axes, path)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--dataset_dir", required=True, help="dataset folder (bundle layout: images/, masks/, split file)"
    )
    parser.add_argument(
        "--work_dir", required=True, help="folder for the run folders (checkpoints, logs, cached results)"
    )
    parser.add_argument("--output", required=True, help="folder for results.csv, results.md and the two plots")
    parser.add_argument(
        "--validation_as_test",
        action="store_true",
        help="test on the dataset's validation split and select checkpoints on a split of training (ISIC 2017)",
    )
    parser.add_argument(
        "--train_images",
        type=int,
        help="train and select checkpoints on this many images of training + validation (small-data studies)",
    )
    parser.add_argument("--rows", help="comma-separated row keys (default: all)")
    parser.add_argument(
        "--variants", action="store_true", help="add the MobileNetV2 stage-1 variants (STAGE1_VARIANTS) as rows"
    )
    parser.add_argument(
        "--ablations", default="", help="comma-separated encoders to run the top_k / lambda ablations for"
    )
    parser.add_argument(
        "--study", default="", help="comma-separated encoders to run the stage-2 recipe study for (STAGE2_RECIPES)"
    )
    parser.add_argument("--study_seeds", default="0,1,2", help="comma-separated seeds of every study recipe")
    parser.add_argument(
        "--stage1_ckpt", help="stage-1 checkpoint that every stage-2 row fine-tunes (default: its stage-1 row's)"
    )
    parser.add_argument("--image_size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=10, help="stage-1 epochs of every network")
    parser.add_argument("--stage2_epochs", type=int, default=5, help="stage-2 epochs of the MoE rows")
    parser.add_argument(
        "--minutes",
        type=float,
        help="equal-time comparison: every network trains this many wall-clock minutes (LH-UTANet stage 1 + 2 "
        "together), learning rate annealed over the time, instead of --epochs / --stage2_epochs",
    )
    parser.add_argument("--stage2_minutes", type=float, help="with --minutes: stage 2's share (default a quarter)")
    parser.add_argument("--val_interval", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--num_workers", type=int, default=2)
    parser.add_argument(
        "--train_threads",
        type=int,
        default=1,
        help="CPU threads of each training and evaluation process (1 suits two comparisons side by side)",
    )
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for the latency measurement")
    parser.add_argument(
        "--train_only",
        action="store_true",
        help="train and evaluate the rows into --work_dir, measure and write nothing else: for parts of one "
        "comparison run side by side; the same command without it then writes the summary from the cached rows",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    ablations, study = ([e for e in value.split(",") if e] for value in (args.ablations, args.study))
    unknown = sorted(set(ablations + study) - set(LH_ENCODERS))
    if unknown:
        raise SystemExit(f"--ablations/--study: unknown encoder(s) {unknown}; choose from {list(LH_ENCODERS)}")
    rows = build_rows(ablations, study, [int(seed) for seed in args.study_seeds.split(",") if seed], args.variants)
    keys = args.rows.split(",") if args.rows else list(rows)
    unknown = sorted(set(keys) - set(rows))
    if unknown:
        raise SystemExit(f"--rows: unknown row(s) {unknown}; choose from {list(rows)}")
    comparison = Comparison(args, rows)
    results = [comparison.result(key) for key in keys]
    if args.train_only:
        return 0
    # costs are measured afresh, all rows together once training is over, so no training run disturbs the latencies
    results = [{**result, **comparison.measure(key)} for key, result in zip(keys, results)]
    command = shlex.join(["python", "scripts/compare_models.py", *(argv if argv is not None else sys.argv[1:])])
    continued = {rows[key].stage1_row for key in keys}  # a stage-2 row's curve already starts with its stage 1
    curves = {
        key: comparison.validation_curve(key)
        for key in keys
        if not key.startswith(("ablation-", "study-")) and key not in continued
    }
    write_summary(results, rows, args, command, curves)
    print((Path(args.output) / "results.md").read_text(encoding="utf-8"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
