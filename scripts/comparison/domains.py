"""One table over several comparisons' ``results.csv``: a row per network, a column per domain.

Usage (from the repository root; each argument is ``label=folder`` of a ``scripts/compare_models.py --output``):
    python -m scripts.comparison.domains Kvasir-SEG-85=docs/results/small-kvasir28 \\
        ISIC-2017-85=docs/results/small-isic28 MoNuSeg=docs/results/small-monuseg
"""

from __future__ import annotations

import argparse
import csv
from collections.abc import Sequence
from pathlib import Path

from bundle.errors import run_script
from scripts.bench.measure import markdown_table


def read_domain(folder: Path) -> dict[str, dict[str, str]]:
    """``{row key: results.csv row}`` of one comparison's output folder."""
    with open(folder / "results.csv", encoding="utf-8", newline="") as table:
        return {row["row"]: row for row in csv.DictReader(table)}


def domain_table(domains: dict[str, dict[str, dict[str, str]]]) -> str:
    """Markdown table: per network (in order of first appearance), ``validation / test Dice`` in each domain, "—"
    where the domain lacks the row."""
    networks: dict[str, str] = {}
    for rows in domains.values():
        for key, row in rows.items():
            networks.setdefault(key, row["network"])
    body = []
    for key, network in networks.items():
        cells = [f"{network} (`{key}`)"]
        for rows in domains.values():
            row = rows.get(key)
            cells.append(f"{float(row['best_val_dice']):.3f} / {float(row['test_dice_mean']):.3f}" if row else "—")
        body.append(cells)
    return markdown_table(["network (validation / test Dice)", *domains], body)


def main(argv: Sequence[str] | None = None) -> int:
    """Print the table of the ``label=folder`` arguments; exit code 0."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("domains", nargs="+", help="label=folder of a compare_models.py --output")
    args = parser.parse_args(argv)
    pairs = [item.split("=", 1) for item in args.domains]
    if any(len(pair) != 2 for pair in pairs):
        raise SystemExit("each argument is label=folder, e.g. MoNuSeg=docs/results/small-monuseg")
    print(domain_table({label: read_domain(Path(folder)) for label, folder in pairs}))
    return 0


if __name__ == "__main__":
    raise SystemExit(run_script(main))
