"""Train LH-UTANet in both stages with one command: stage 1 (train.json), then stage 2 (finetune_moe.json).

Usage (from the bundle root):
    python scripts/train_two_stage.py [--overlay configs/demo.json] [--stage1-epochs N] [--stage2-epochs N]
                                      [--stages 1,2] [OVERRIDES ...]

Every other argument (``--dataset_dir DIR``, ``--encoder mobilenetv2``, ``--image_size "[128,128]"`` ...) is
passed to both ``python -m monai.bundle run`` calls, so both stages see the same data, network and paths;
stage 2 then loads ``ckpt_dir/stage1/model.pt`` written by stage 1. The final model is ``ckpt_dir/model.pt``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from bundle.data.datasets import dataset_location
from bundle.errors import run_script

BUNDLE_ROOT = Path(__file__).resolve().parents[1]


def stage_command(stage: int, overlays: Sequence[str], epochs: int | None, overrides: Sequence[str]) -> list[str]:
    """The ``monai.bundle run`` command line of one stage."""
    configs = ["configs/train.json", *overlays] + (["configs/finetune_moe.json"] if stage == 2 else [])
    command = [sys.executable, "-m", "monai.bundle", "run", "--config_file", repr(configs), *overrides]
    return command + (["--epochs", str(epochs)] if epochs is not None else [])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--overlay", action="append", default=[], help="extra config overlay after train.json, e.g. configs/demo.json"
    )
    parser.add_argument("--stage1-epochs", type=int, help="epochs of stage 1 (default: the config's)")
    parser.add_argument("--stage2-epochs", type=int, help="epochs of stage 2 (default: finetune_moe.json's 20)")
    parser.add_argument("--stages", default="1,2", choices=["1,2", "1", "2"], help="run both stages or only one")
    args, overrides = parser.parse_known_args(argv)
    if "--dataset_dir" in overrides[:-1]:  # one folder or datalist: fail here, not after the bundle's imports
        dataset_dir = overrides[overrides.index("--dataset_dir") + 1]
        if not dataset_dir.lstrip().startswith("["):
            dataset_location(dataset_dir)
    epochs = {1: args.stage1_epochs, 2: args.stage2_epochs}
    for stage in map(int, args.stages.split(",")):
        command = stage_command(stage, args.overlay, epochs[stage], overrides)
        print(f"== stage {stage}: {' '.join(command)}", flush=True)
        result = subprocess.run(command, cwd=BUNDLE_ROOT)
        if result.returncode != 0:
            print(f"stage {stage} failed with exit code {result.returncode}", file=sys.stderr)
            return result.returncode
    return 0


if __name__ == "__main__":
    sys.exit(run_script(main))
