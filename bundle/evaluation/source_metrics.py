"""Validation Dice per data source, for training runs on several centres at once (``dataset_dir`` a list)."""

from __future__ import annotations

from collections import defaultdict

import ignite.distributed as idist
import numpy as np
from ignite.engine import Engine, Events

from .metrics_report import binary_metrics


class PerSourceDice:
    """Adds ``val_mean_dice/<source>`` to the evaluator's metrics at the end of each validation, one per ``source``
    of its items (present when the datalist merges several folders), so that StatsHandler and
    TensorBoardStatsHandler, attached after it, log them beside the mean. Does nothing with a single source.

    Expects post-processed, decollated outputs with binary ``pred`` and ``label`` (1, H, W).
    """

    def __init__(self) -> None:
        self.dice: dict[str, list[float]] = defaultdict(list)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self.reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.collect)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.publish)

    def reset(self, engine: Engine) -> None:
        self.dice.clear()

    def collect(self, engine: Engine) -> None:
        for data, item in zip(engine.state.batch, engine.state.output):  # the source is in the input items
            if "source" in data:
                self.dice[str(data["source"])].append(binary_metrics(item["pred"], item["label"])["dice"])

    def publish(self, engine: Engine) -> None:
        gathered: dict[str, list[float]] = defaultdict(list)
        for rank_dice in idist.all_gather(dict(self.dice)):  # one dict per rank
            for source, values in rank_dice.items():
                gathered[source] += values
        if len(gathered) > 1:
            for source, values in sorted(gathered.items()):
                engine.state.metrics[f"val_mean_dice/{source}"] = float(np.nanmean(values))
