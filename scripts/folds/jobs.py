"""The trainings of a cross-validation, each through configs/train.json in a process of its own: fold K (``--fold K``)
into ``WORK_DIR/fold_K`` and, for a comparison, the single model of train.json's own split into ``WORK_DIR/single``.
Each is resumable, evaluated at the original resolution (configs/evaluate.json) and has its CPU time recorded."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bundle.atomic_files import atomic_write_json
from bundle.errors import BundleError, DatasetError
from bundle.training.folds import FOLD_PREFIX, RESUME_FILE, is_finished
from scripts.comparison.runner import CONFIGS, bundle_command, run_timed

logger = logging.getLogger(__name__)

SINGLE = "single"  # the run folder of the model trained on train.json's split (no folds)
TRAIN_TIME = "train_time.json"  # in a run folder: wall and CPU seconds of each training attempt
EVAL_TIME = "eval_time.json"  # in an evaluation folder, beside metrics_summary.json
SUMMARY = "metrics_summary.json"  # what configs/evaluate.json writes last, atomically


@dataclass
class CrossValidation:
    """``num_folds`` trainings of ``configs`` (train.json first, e.g. a plan overlay after it) with the ids
    ``overrides`` (``--id value`` strings, as on the command line), into ``work_dir``, ``threads`` CPU threads each."""

    work_dir: Path
    configs: Sequence[str | Path] = (CONFIGS / "train.json",)
    overrides: dict[str, Any] = field(default_factory=dict)
    num_folds: int = 5
    threads: int = 1

    def run_dir(self, fold: int | None) -> Path:
        """Fold ``fold``'s folder (checkpoints in ``stage1/``, logs, evaluations); the single model's when None."""
        return self.work_dir / (SINGLE if fold is None else f"{FOLD_PREFIX}{fold}")

    def checkpoint_ids(self, fold: int | None) -> dict[str, Any]:
        """The ids that put fold ``fold`` (None: the single model) in its run folder, for training and evaluation."""
        if fold is None:
            return {"ckpt_dir": str(self.run_dir(None))}
        return {"ckpt_dir": str(self.work_dir), "fold": fold, "num_folds": self.num_folds}

    def train(self, fold: int | None) -> None:
        """Train fold ``fold`` (None: the single model) unless it is finished; an interrupted one resumes
        (``--resume true``) from its resume checkpoint. Appends the attempt's wall and CPU seconds to its record."""
        run_dir = self.run_dir(fold)
        name = run_dir.name
        if is_finished(run_dir):
            logger.info("%s: finished, skipped (%s)", name, run_dir)
            return
        resume = (run_dir / "stage1" / RESUME_FILE).is_file()
        logger.info("%s: %s", name, "resuming from its resume checkpoint" if resume else "training")
        run_dir.mkdir(parents=True, exist_ok=True)
        overrides = {
            **self.overrides,
            **self.checkpoint_ids(fold),
            "output_dir": str(run_dir / "train_logs"),
            "resume": resume,
        }
        wall, cpu = run_timed(
            bundle_command(list(self.configs), overrides), run_dir / "train.log", self.threads, resume
        )
        record = self.train_time(fold)
        record["attempts"].append({"wall_seconds": round(wall, 1), "cpu_seconds": round(cpu, 1), "resumed": resume})
        atomic_write_json(run_dir / TRAIN_TIME, record)
        logger.info("%s: trained in %.1f wall / %.1f CPU minutes", name, wall / 60, cpu / 60)

    def train_time(self, fold: int | None) -> dict[str, Any]:
        """The training attempts recorded in fold ``fold``'s folder (``{"attempts": [...]}``)."""
        path = self.run_dir(fold) / TRAIN_TIME
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {"attempts": []}

    def evaluate(self, fold: int | None | str, split: str) -> dict[str, Any]:
        """Metrics summary (configs/evaluate.json's ``metrics_summary.json``, plus ``wall_seconds`` and ``cpu_seconds``)
        of fold ``fold``'s model (None: the single model; ``"ensemble"``: the ensemble of all folds) on ``split``,
        evaluated once at the original resolution and then read back."""
        if fold == "ensemble":
            ids, output = {"ckpt_dir": str(self.work_dir)}, self.work_dir / f"ensemble_{split}"
        else:
            ids, output = self.checkpoint_ids(fold), self.run_dir(fold) / split
        if not (output / SUMMARY).is_file():
            overrides = {**self.overrides, **ids, "eval_split": split, "output_dir": str(output), "overwrite": True}
            configs = [*self.configs, CONFIGS / "evaluate.json"]
            output.mkdir(parents=True, exist_ok=True)
            wall, cpu = run_timed(
                bundle_command(configs, overrides), output.parent / f"{output.name}.log", self.threads
            )
            atomic_write_json(output / EVAL_TIME, {"wall_seconds": round(wall, 1), "cpu_seconds": round(cpu, 1)})
            if not (output / SUMMARY).is_file():  # an empty split: the evaluator skips its run
                raise DatasetError(
                    f"the dataset has no {split} images to evaluate (log {output.parent / output.name}.log)."
                )
        summary = json.loads((output / SUMMARY).read_text(encoding="utf-8"))
        timing = output / EVAL_TIME
        return {**summary, **(json.loads(timing.read_text(encoding="utf-8")) if timing.is_file() else {})}

    def run_fold(self, fold: int | None) -> None:
        """Train fold ``fold`` and evaluate it on its validation fold (the single model: on train.json's validation)."""
        self.train(fold)
        self.evaluate(fold, "validation")


class JobsFailed(BundleError):
    """Trainings or evaluations of a cross-validation failed; their logs hold the details."""


def failure_reason(error: BaseException) -> tuple[str, bool]:
    """The line that says why a job failed: the ``error:`` line its command ended in (an error the user can fix,
    without the prefix: True), else the last line of its message (False)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()] or [type(error).__name__]
    user = [line for line in lines if line.startswith("error: ")]
    return (user[-1][len("error: ") :], True) if user else (lines[-1], False)


def run_jobs(jobs: Sequence[tuple[str, Callable[[], None]]], processes: int = 1) -> None:
    """Run the named ``jobs``, ``processes`` at a time (each starts its own training processes). A failed job does
    not stop the running ones; one that failed on an error the user can fix (e.g. a missing dataset, which every
    fold would meet) stops the start of new ones. Then :class:`JobsFailed`: one line when every job failed alike."""
    failures: list[tuple[str, str, str]] = []  # (job, reason, log)
    stop = threading.Event()

    def run(job: tuple[str, Callable[[], None]]) -> None:
        name, function = job
        if stop.is_set():
            return
        try:
            function()
        except Exception as error:  # noqa: BLE001  (reported with the others once the running jobs have ended)
            reason, by_user = failure_reason(error)
            logger.error("%s failed: %s", name, reason)
            failures.append((name, reason, str(getattr(error, "log_path", "no log"))))
            if by_user:
                stop.set()

    with ThreadPoolExecutor(max_workers=max(1, processes)) as pool:
        list(pool.map(run, jobs))
    if not failures:
        return
    names, logs = ", ".join(f[0] for f in failures), ", ".join(f[2] for f in failures)
    if len({f[1] for f in failures}) == 1:
        raise JobsFailed(f"{failures[0][1]} ({names} failed; log {logs})")
    listing = "".join(f"  - {name}: {reason} (log {log})\n" for name, reason, log in failures)
    raise JobsFailed(f"{listing}{len(failures)} job(s) failed: see the lines above")
