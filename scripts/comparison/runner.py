"""Training, evaluating and measuring the rows of a comparison through the bundle configs, each row in its own run
folder whose ``result.json`` caches its result for later runs of the same budget."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from bundle.atomic_files import atomic_write_json
from monai.bundle import ConfigParser
from scripts.bench.measure import measure_cost, measure_latency
from scripts.bench.peers import peer_settings
from scripts.comparison.catalogue import CompareRow
from scripts.comparison.training_logs import expert_usage_summary, scalar_events, scalar_history

REPO_ROOT = Path(__file__).resolve().parents[2]
CONFIGS = REPO_ROOT / "configs"
METRICS = ("dice", "iou", "precision", "recall", "hd95")
LATENCY_ITERS = 20
TIME_BUDGET_EPOCHS = (
    10_000  # --minutes: the epoch limit no budgeted run reaches (bundle.training.handlers.TimeBudget ends it)
)


def bundle_command(configs: Sequence[Path], overrides: dict[str, Any]) -> list[str]:
    """``python -m monai.bundle run`` over ``configs`` with ``--id value`` overrides (values as JSON)."""
    command = [sys.executable, "-m", "monai.bundle", "run", "--config_file", repr([str(c) for c in configs])]
    for key, value in overrides.items():
        command += [f"--{key}", value if isinstance(value, str) else json.dumps(value)]
    return command


class CommandFailed(RuntimeError):
    """A command of :func:`run_timed` ended with a non-zero status; its output is in ``log_path``."""

    def __init__(self, message: str, log_path: Path) -> None:
        super().__init__(message, log_path)
        self.log_path = log_path

    def __str__(self) -> str:
        return str(self.args[0])


def run_timed(command: list[str], log_path: Path, threads: int, append: bool = False) -> tuple[float, float]:
    """Run ``command`` from the repository root with ``threads`` CPU threads and its output in ``log_path``
    (appended to with ``append``).

    Returns the wall seconds and the CPU seconds (user + system) of the process and the children it waited for
    (DataLoader workers). The thread count is fixed because CPU results depend on it (docs/reliability.md).
    Raises :class:`CommandFailed` with the log's tail when the command fails.
    """
    print("$", shlex.join(command), flush=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    start = time.perf_counter()
    with open(log_path, "a" if append else "w", encoding="utf-8") as log:
        process = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        tail = "".join(log_path.read_text(encoding="utf-8", errors="replace").splitlines(True)[-30:])
        raise CommandFailed(f"command failed (exit {process.returncode}), log {log_path}:\n{tail}", log_path)
    return time.perf_counter() - start, usage.ru_utime + usage.ru_stime


def run_logged(command: list[str], log_path: Path, threads: int) -> float:
    """:func:`run_timed`'s wall seconds."""
    return run_timed(command, log_path, threads)[0]


def study_datalist(validation_as_test: bool, train_images: int | None) -> str | None:
    """The ``datalist`` id of a study (a ``$`` expression), or None for train.json's: ISIC 2017's validation split as
    test (``validation_as_test``), and a seeded subset of ``train_images`` training + validation pairs."""
    full_datalist = datalist = "bundle.data.datasets.load_datalist(@dataset_dir, @val_fraction, @split_seed)"
    if validation_as_test:
        datalist = f"bundle.data.datasets.validation_as_test({datalist}, @val_fraction, @split_seed)"
    if train_images:
        datalist = f"bundle.data.datasets.training_subset({datalist}, {train_images}, @val_fraction, @split_seed)"
    return None if datalist == full_datalist else "$" + datalist


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
        datalist = study_datalist(args.validation_as_test, args.train_images)
        if datalist is not None:
            self.budget["datalist"] = datalist

    def run_dir(self, key: str) -> Path:
        """The row's run folder: checkpoints, logs and the cached ``result.json``."""
        return self.work_dir / key

    def result(self, key: str) -> dict[str, Any]:
        """The row's training and test results, computed once (training its stage-1 row first when needed) and cached."""
        result_path = self.run_dir(key) / "result.json"
        if result_path.is_file():
            cached = json.loads(result_path.read_text(encoding="utf-8"))
            if cached.get("budget") == self.budget_of(key) and cached.get("settings") == self.rows[key].settings:
                return cached
            raise RuntimeError(
                f"{result_path} was made with another budget or settings ({cached.get('budget')}, "
                f"{cached.get('settings')}); "
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
        """What the row's cached result was made with; a cached result of another budget is refused."""
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
        """The row's stage-2 epochs: ``--stage2_epochs`` times its recipe's epoch factor."""
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
                "_target_": "bundle.training.handlers.TimeBudget",
                "minutes": self.minutes(key),
                "optimizer": "@optimizer",
            }
            atomic_write_json(budget, {"+train#handlers": [handler]})
            configs.append(budget)
        return configs

    def checkpoint(self, key: str) -> Path:
        """The row's best checkpoint (the study's stage-1 row: ``--stage1_ckpt``)."""
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
        models, logs = run_dir / "models", run_dir / "train_logs"
        if (models / "model.pt").is_file() and not (models / "resume.pt").is_file():
            # trained by an earlier comparison that stopped before it cached the row: its TensorBoard log times it
            minutes = max((m for m, _ in scalar_events(logs, "val_mean_dice")), default=float("nan"))
        else:
            if (models / "resume.pt").is_file():  # killed in training: continue from its last completed epoch
                overrides["resume"] = True
            command = bundle_command(self.configs(key), overrides)
            minutes = run_logged(command, run_dir / "train.log", self.args.train_threads) / 60
        if row.stage1_row is not None and not self.args.stage1_ckpt:
            minutes += self.result(row.stage1_row)["train_minutes"]
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
        summary_path = run_dir / split / "metrics_summary.json"  # written last and atomically: the evaluation is done
        if not summary_path.is_file():
            configs = self.configs(key, evaluate=True)
            run_logged(bundle_command(configs, overrides), run_dir / f"evaluate_{split}.log", self.args.train_threads)
        summary = json.loads(summary_path.read_text(encoding="utf-8"))
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
