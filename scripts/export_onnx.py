"""Export an LH-UTANet checkpoint to ONNX for ``configs/inference.json --backend onnx``.

The network settings (encoder, use_moe, channels) are read from the checkpoint; the rest of
``network_def`` and ``image_size`` (the traced size; batch, height and width stay dynamic) come from
the config.

Usage (from the repository root):
    python scripts/export_onnx.py --ckpt_file models/model.pt --filepath models/model.onnx [--config_file configs/inference.json]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from monai.bundle import ConfigParser

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from bundle.checkpoints import network_kwargs_from_checkpoint  # noqa: E402
from bundle.inference import export_onnx, load_network  # noqa: E402


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt_file", default="models/model.pt", help="LH-UTANet state_dict checkpoint")
    parser.add_argument("--filepath", default="models/model.onnx", help="ONNX file to write")
    parser.add_argument("--config_file", default=str(REPO_ROOT / "configs" / "inference.json"))
    args = parser.parse_args(argv)
    config = ConfigParser()
    config.read_config(args.config_file)
    config.update(network_kwargs_from_checkpoint(args.ckpt_file))
    network = load_network(config.get_parsed_content("network_def"), args.ckpt_file)
    export_onnx(
        network, args.filepath, config.get_parsed_content("image_size"), config.get_parsed_content("in_channels")
    )
    print(f"exported {args.ckpt_file} to {Path(args.filepath).resolve()}")


if __name__ == "__main__":
    main()
