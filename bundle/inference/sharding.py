"""Sharded folder inference (``configs/multi_gpu_inference.json``): the inputs of each rank, each rank's partial
report, and rank 0's merge of the partial reports into ``predictions.csv``.

Rank ``r`` of ``N`` segments the blocks of inputs (``shard_block`` consecutive inputs in the sorted order: the batch
size, so that each batch holds the images a single process batches together, and the outputs are the same) whose
number is ``r`` modulo ``N``, and appends its rows to its hidden partial report ``.predictions.rank<r>.csv``
beside ``predictions.csv`` (flushed row by row, like the report itself). When every rank is done, rank 0 appends
all partial rows to ``predictions.csv`` in input order and removes the partial reports. A run killed before that
leaves them; the next run merges them first (rank 0, before any rank writes), so no finished row is lost and the
finished outputs are skipped.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from ..errors import SettingError
from .report import REPORT_NAME, PredictionReport

PARTIAL_PREFIX = ".predictions.rank"


def check_shard(rank: int | str, world_size: int | str) -> tuple[int, int]:
    """(rank, world_size) as integers; SettingError unless 0 <= rank < world_size."""
    rank, world_size = int(rank), int(world_size)
    if not 0 <= rank < world_size:
        raise SettingError(f"rank must be in 0..world_size - 1, got rank {rank} of world_size {world_size}.")
    return rank, world_size


def in_shard(index: int, rank: int, world_size: int, block: int = 1) -> bool:
    """Whether input ``index`` is rank ``rank``'s: blocks of ``block`` inputs go to the ranks in turn."""
    return index // max(1, int(block)) % world_size == rank


def report_path(output_dir: str | os.PathLike, rank: int, world_size: int) -> Path:
    """Where a rank appends its rows: ``predictions.csv`` itself for a single process, else its partial report."""
    name = REPORT_NAME if world_size == 1 else f"{PARTIAL_PREFIX}{rank}.csv"
    return Path(output_dir) / name


def merge_partial_reports(output_dir: str | os.PathLike, order: Mapping[str, int]) -> dict[str, dict[str, str]]:
    """Append the rows of every partial report in ``output_dir`` to ``predictions.csv``, sorted by ``order`` (input
    path -> index; unknown paths last), then remove the partial reports. A row equal to its path's current row is not
    appended again, so a merge cut short by a kill can simply run again. Returns the current row of each path."""
    output_dir = Path(output_dir)
    report = PredictionReport(output_dir / REPORT_NAME)
    partials = sorted(output_dir.glob(f"{PARTIAL_PREFIX}*.csv"))
    rows = [row for path in partials for row in PredictionReport(path).rows]
    rows.sort(key=lambda row: order.get(row["path"], len(order)))
    latest = report.latest()
    for row in rows:
        current = latest.get(row["path"], {})
        if any(current.get(name, "") != value for name, value in row.items()):
            report.append(row)
            latest[row["path"]] = row
    for path in partials:
        path.unlink()
    return latest
