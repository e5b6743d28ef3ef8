"""What a training run left in its log folder: TensorBoard scalars and the MoE expert usage."""

from __future__ import annotations

import json
import math
from pathlib import Path


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
