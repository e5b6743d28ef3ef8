"""Export an LH-UTANet checkpoint to ONNX for ``configs/inference.json --backend onnx``.

``configs/inference.json`` builds the network the checkpoint needs (its ``network_settings``: encoder, use_moe,
channels, top_k and the traced ``image_size``, read from the checkpoint; batch, height and width stay dynamic).

Usage (from the repository root):
    python scripts/export_onnx.py --ckpt_file models/model.pt --filepath models/model.onnx [--config_file configs/inference.json]
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from bundle.backends import export_onnx, network_for_checkpoint
from monai.bundle import ConfigParser

REPO_ROOT = Path(__file__).resolve().parents[1]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt_file", default="models/model.pt", help="LH-UTANet checkpoint")
    parser.add_argument("--filepath", default="models/model.onnx", help="ONNX file to write")
    parser.add_argument("--config_file", default=str(REPO_ROOT / "configs" / "inference.json"))
    args = parser.parse_args(argv)
    config = ConfigParser()
    config.read_config(args.config_file)
    network, settings = network_for_checkpoint(config, args.ckpt_file)
    export_onnx(network, args.filepath, settings["image_size"], settings["in_channels"])
    print(f"exported {args.ckpt_file} to {Path(args.filepath).resolve()}")


if __name__ == "__main__":
    main()
