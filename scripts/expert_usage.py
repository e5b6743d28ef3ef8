"""Per-gate expert usage of a stage-2 LH-UTANet checkpoint over a dataset split.

Writes ``expert_usage.csv`` (gate, expert, mass_share, selection_rate) and ``expert_usage.png`` (grouped
bar chart of mass_share) to the output folder. ``mass_share`` is the expert's share of the gate's total
gate weight over the images; ``selection_rate`` is the fraction of images for which the gate picked the
expert among its top k. Data, preprocessing and network come from configs/train.json, as in training.

Usage (from the repository root):
    python scripts/expert_usage.py --ckpt models/model.pt --dataset_dir data/demo [--split test] [--overwrite]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import torch
from bundle.atomic_files import atomic_write, atomic_write_csv
from bundle.backends.predictors import load_network
from bundle.data.datasets import SPLIT_KEYS
from bundle.errors import run_script
from bundle.training.checkpoints import read_network_settings
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from monai.bundle import ConfigParser
from monai.data import DataLoader, Dataset
from torch import nn

REPO_ROOT = Path(__file__).resolve().parents[1]


CONFIG = REPO_ROOT / "configs" / "train.json"
CSV_NAME, PNG_NAME = "expert_usage.csv", "expert_usage.png"


def compute_usage(model: nn.Module, loader: DataLoader) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Run ``model`` over ``loader``; return gate-weight mass (gates, experts), top-k selection counts
    (gates, experts) and the number of images."""
    device = next(model.parameters()).device
    mass = selected = None
    n_images = 0
    model.eval()
    with torch.inference_mode():
        for batch in loader:
            model(batch["image"].to(device))
            if not model.gate_weights:
                raise ValueError("the model produced no gate weights: it has no MoE (stage 1)")
            weights = torch.stack(model.gate_weights).double().cpu()  # (gates, B, experts)
            batch_mass, batch_selected = weights.sum(dim=1), (weights > 0).sum(dim=1)
            mass = batch_mass if mass is None else mass + batch_mass
            selected = batch_selected if selected is None else selected + batch_selected
            n_images += weights.shape[1]
    if mass is None:
        raise ValueError("the data loader yielded no images")
    return mass, selected, n_images


def usage_rows(
    mass: torch.Tensor, selected: torch.Tensor, n_images: int, expert_names: Sequence[str]
) -> list[dict[str, object]]:
    """One row per gate and expert: gate index, expert name, mass_share, selection_rate."""
    shares = mass / mass.sum(dim=1, keepdim=True)
    rates = selected.double() / n_images
    return [
        {"gate": gate, "expert": name, "mass_share": float(shares[gate, e]), "selection_rate": float(rates[gate, e])}
        for gate in range(mass.shape[0])
        for e, name in enumerate(expert_names)
    ]


def write_csv(path: Path, rows: list[dict[str, object]]) -> None:
    """Write the usage rows to ``path`` as CSV, atomically."""
    formatted = [
        {**row, "mass_share": f"{row['mass_share']:.6f}", "selection_rate": f"{row['selection_rate']:.6f}"}
        for row in rows
    ]
    atomic_write_csv(path, ["gate", "expert", "mass_share", "selection_rate"], formatted)


def plot(path: Path, mass: torch.Tensor, expert_names: Sequence[str], title: str) -> None:
    """Grouped bar chart of mass_share (one group per gate, one bar per expert) saved as PNG, atomically."""
    shares = (mass / mass.sum(dim=1, keepdim=True)).numpy()
    n_gates, n_experts = shares.shape
    width = 0.8 / n_experts
    figure = Figure(figsize=(1.6 + 1.8 * n_gates, 4.2), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for e, name in enumerate(expert_names):
        axes.bar([g + (e - (n_experts - 1) / 2) * width for g in range(n_gates)], shares[:, e], width, label=name)
    axes.set_xticks(range(n_gates), [f"gate {g}\n(skip e{g + 1})" for g in range(n_gates)])
    axes.set_xlabel("gate (skip scale, finest first)")
    axes.set_ylabel("mass share (share of the gate's weight)")
    axes.set_ylim(0, 1.05)
    axes.set_title(title)
    axes.legend(title="expert", loc="upper left", bbox_to_anchor=(1.0, 1.0))
    atomic_write(path, lambda tmp: figure.savefig(tmp, format="png", dpi=120))


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", required=True, help="stage-2 checkpoint (state_dict), e.g. models/model.pt")
    parser.add_argument("--dataset_dir", required=True, help="dataset folder, as for training")
    parser.add_argument(
        "--split", choices=[*SPLIT_KEYS, "all"], help="split to run (default: test if non-empty, else validation)"
    )
    parser.add_argument("--output_dir", default="eval/expert_usage", help="folder for the CSV and PNG")
    parser.add_argument(
        "--image_size",
        type=int,
        nargs=2,
        metavar=("H", "W"),
        help="network input size (default: the checkpoint's training size, else the config's)",
    )
    parser.add_argument("--top_k", type=int, help="experts per gate (default: the checkpoint's, else the config's)")
    parser.add_argument("--batch_size", type=int, default=8, help="images per forward pass")
    parser.add_argument("--overwrite", action="store_true", help="replace existing output files")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the tool; returns the process exit code (0 on success, 1 on error)."""
    args = _parse_args(argv)
    output_dir = Path(args.output_dir)
    outputs = [output_dir / CSV_NAME, output_dir / PNG_NAME]
    existing = [str(path) for path in outputs if path.exists()]
    if existing and not args.overwrite:
        print(f"error: {', '.join(existing)} already exist(s); pass --overwrite to replace", file=sys.stderr)
        return 1
    try:
        settings = read_network_settings(args.ckpt)
        if not settings["use_moe"]:
            raise ValueError(f"{args.ckpt} is a stage-1 checkpoint and has no experts; train stage 2 first")
        if args.batch_size < 1:
            raise ValueError(f"--batch_size must be >= 1, got {args.batch_size}")
        config = ConfigParser()
        config.read_config(str(CONFIG))
        config["dataset_dir"] = str(Path(args.dataset_dir).absolute())
        for key, value in settings.items():
            config[key] = value
        if args.image_size:
            config["image_size"] = list(args.image_size)
        if args.top_k is not None:
            config["top_k"] = args.top_k
        datalist = config.get_parsed_content("datalist")
        split = args.split or ("test" if datalist["test"] else "validation")
        data = [pair for key in SPLIT_KEYS for pair in datalist[key]] if split == "all" else datalist[split]
        if not data:
            raise ValueError(f"split {split!r} of {args.dataset_dir} is empty")
        device = config.get_parsed_content("device")
        model = load_network(config.get_parsed_content("network_def"), args.ckpt).to(device)
        dataset = Dataset(data=data, transform=config.get_parsed_content("validate#preprocessing"))
        loader = DataLoader(dataset, batch_size=args.batch_size, shuffle=False, num_workers=0)
        mass, selected, n_images = compute_usage(model, loader)
    except (OSError, ValueError, RuntimeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    expert_names = model.moe.expert_names
    rows = usage_rows(mass, selected, n_images, expert_names)
    checkpoint = Path(args.ckpt)
    title = (
        f"Expert usage per gate: {checkpoint.parent.name}/{checkpoint.name} "
        f"({n_images} {split} images, top-{model.moe.gates[0].top_k})"
    )
    write_csv(outputs[0], rows)
    plot(outputs[1], mass, expert_names, title)
    print(f"{'gate':>4}  {'expert':<8}  {'mass_share':>10}  {'selection_rate':>14}")
    for row in rows:
        print(f"{row['gate']:>4}  {row['expert']:<8}  {row['mass_share']:>10.4f}  {row['selection_rate']:>14.4f}")
    print(f"wrote {outputs[0]} and {outputs[1]}")
    return 0


if __name__ == "__main__":
    sys.exit(run_script(main))
