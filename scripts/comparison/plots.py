"""The comparison's two PNG plots: test Dice against CPU latency, and validation Dice against training minutes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


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


def plot_dice_vs_latency(results: list[dict[str, Any]], path: Path, size: str) -> None:
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


def plot_validation_curves(curves: dict[str, list[tuple[float, float]]], path: Path) -> None:
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
