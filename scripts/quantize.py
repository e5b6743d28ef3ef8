"""int8 model for ``configs/inference.json --backend onnx-int8``: ONNX Runtime static quantisation of a checkpoint.

The checkpoint is exported to ONNX (``bundle.backends.predictors.export_onnx``, at its training ``image_size``), then quantised
by ONNX Runtime's ``quantize_static``: QDQ format, per-channel int8 weights, uint8 activations, calibrated (MinMax)
on ``--num_images`` training images preprocessed exactly as ``configs/inference.json`` does. The int8 file is
written atomically and never overwrites an existing file.

Usage (from the repository root):
    python scripts/quantize.py --ckpt_file models/model.pt --dataset_dir ../shared/data/kvasir-seg \\
        --output models/model.int8.onnx [--num_images 64]
Then evaluate it beside fp32:
    python -m monai.bundle run --config_file "['configs/train.json','configs/evaluate.json']" \\
        --dataset_dir ../shared/data/kvasir-seg --ckpt_path models/model.pt --backend onnx-int8 \\
        --int8_path models/model.int8.onnx --output_dir eval/int8
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from bundle.atomic_files import atomic_write
from bundle.backends.predictors import export_onnx, network_for_checkpoint
from bundle.data.datasets import load_datalist
from bundle.errors import run_script
from monai.bundle import ConfigParser

REPO_ROOT = Path(__file__).resolve().parents[1]


def quantize_onnx(
    fp32_path: str | Path, int8_path: str | Path, calibration: Iterable[np.ndarray], reduce_range: bool = True
) -> Path:
    """Quantise the ONNX model at ``fp32_path`` into ``int8_path`` (QDQ, per-channel int8 weights, uint8
    activations), calibrated on the (1, C, H, W) float32 arrays of ``calibration``; return ``int8_path``.

    ``reduce_range``: 7-bit weights, which keep the uint8 x int8 products of CPUs without VNNI (AVX2) from
    saturating."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(calibration)

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self.batches, None)
            return None if batch is None else {"image": batch}

    with tempfile.TemporaryDirectory(prefix="quantize-") as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        # symbolic shape inference does not finish on the dynamic-size graph; ONNX shape inference suffices
        quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
        atomic_write(
            int8_path,
            lambda out: quantize_static(
                str(prepared),
                str(out),
                Reader(),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                reduce_range=reduce_range,
            ),
        )
    return Path(int8_path)


def calibration_batches(config: ConfigParser, dataset_dir: str, num_images: int, seed: int) -> list[np.ndarray]:
    """``num_images`` training images (a seeded choice) through inference.json's ``preprocessing``: (1, C, H, W)."""
    training = load_datalist(dataset_dir)["training"]
    if not training:
        raise SystemExit(f"error: {dataset_dir} has no training images to calibrate on")
    chosen = random.Random(seed).sample(training, min(num_images, len(training)))
    preprocessing = config.get_parsed_content("preprocessing")
    return [np.asarray(preprocessing({"image": pair["image"]})["image"], np.float32)[None] for pair in chosen]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt_file", default="models/model.pt", help="LH-UTANet checkpoint")
    parser.add_argument("--dataset_dir", required=True, help="dataset (folder or datalist) whose training calibrates")
    parser.add_argument("--output", default="models/model.int8.onnx", help="int8 ONNX file to write (not existing)")
    parser.add_argument("--num_images", type=int, default=64, help="calibration images")
    parser.add_argument("--seed", type=int, default=0, help="seed of the calibration choice")
    parser.add_argument("--config_file", default=str(REPO_ROOT / "configs" / "inference.json"))
    args = parser.parse_args(argv)
    if Path(args.output).exists():
        raise SystemExit(f"error: {args.output} exists; nothing is overwritten (choose another --output)")
    config = ConfigParser()
    config.read_config(args.config_file)
    network, settings = network_for_checkpoint(config, args.ckpt_file)
    calibration = calibration_batches(config, args.dataset_dir, args.num_images, args.seed)
    with tempfile.TemporaryDirectory(prefix="quantize-") as tmp:
        fp32 = Path(tmp) / "model.onnx"
        export_onnx(network, fp32, settings["image_size"], settings["in_channels"])
        quantize_onnx(fp32, args.output, calibration)
    print(f"quantised {args.ckpt_file} (calibrated on {len(calibration)} images) to {Path(args.output).resolve()}")


if __name__ == "__main__":
    sys.exit(run_script(main))
