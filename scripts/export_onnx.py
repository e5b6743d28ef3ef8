"""Export an LH-UTANet checkpoint to ONNX: the network for ``configs/inference.json --backend onnx``, or with
``--end-to-end`` the whole path of one image (uint8 H×W×3 in, uint8 H×W mask 0/255 out, any size:
:mod:`bundle.inference.end_to_end`), which needs only onnxruntime, numpy and an image reader.

``configs/inference.json`` builds the network the checkpoint needs (its ``network_settings``: encoder, use_moe,
channels, top_k and the ``image_size``, read from the checkpoint; the network alone keeps batch, height and width
dynamic). ``--verify_dir`` then segments the images of a folder with the export and with the bundle's own folder
inference (``--tta flips`` with ``--flips``, else ``none``) and prints their Dice; exit code 1 when the mean is
below ``--min_dice``.

Usage (from the repository root):
    python scripts/export_onnx.py --ckpt_file models/model.pt --filepath models/model.onnx [--config_file configs/inference.json]
    python scripts/export_onnx.py --end-to-end --filepath models/model.e2e.onnx [--flips] [--verify_dir IMAGES]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from bundle.backends.predictors import export_onnx, network_for_checkpoint, write_onnx
from bundle.errors import run_script
from bundle.inference.end_to_end import EndToEndSegmenter
from monai.bundle import ConfigParser
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[1]


def export_end_to_end(segmenter: EndToEndSegmenter, path: str | Path) -> None:
    """Write ``segmenter`` as ONNX (input ``image`` uint8 (H, W, 3), output ``mask`` uint8 (H, W); H, W dynamic)."""
    example = torch.zeros(300, 400, 3, dtype=torch.uint8)
    write_onnx(segmenter, example, path, {"image": {0: "height", 1: "width"}, "mask": {0: "height", 1: "width"}})


def read_rgb(path: Path) -> np.ndarray:
    """(H, W, 3) uint8 pixels of an image file, EXIF orientation applied (as the bundle's reader does)."""
    from PIL import ImageOps

    return np.asarray(ImageOps.exif_transpose(Image.open(path)).convert("RGB"))


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a > 0, b > 0
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else float(2 * (a & b).sum() / total)


def verify(onnx_path: Path, ckpt_file: str, config_file: str, images: Path, flips: bool) -> list[float]:
    """Dice of the end-to-end export's mask and the bundle's folder-inference mask, per image of ``images``."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    with tempfile.TemporaryDirectory(prefix="e2e-verify-") as output:
        parser = ConfigParser()
        parser.read_config(config_file)
        parser.update(
            {
                "dataset_dir": str(images),
                "output_dir": output,
                "ckpt_path": str(Path(ckpt_file).absolute()),
                "tta": "flips" if flips else "none",
                "device": "$torch.device('cpu')",
            }
        )
        parser.get_parsed_content("evaluator").run()
        scores = []
        for row in parser.get_parsed_content("evaluator").state.report:
            if row.get("status") == "ok":
                exported = session.run(None, {"image": read_rgb(images / row["path"])})[0]
                scores.append(dice(exported, np.asarray(Image.open(Path(output) / row["mask"]))))
    return scores


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt_file", default="models/model.pt", help="LH-UTANet checkpoint")
    parser.add_argument("--filepath", help="ONNX file to write (default models/model.onnx, or model.e2e.onnx)")
    parser.add_argument("--config_file", default=str(REPO_ROOT / "configs" / "inference.json"))
    parser.add_argument("--end-to-end", action="store_true", help="uint8 image in, uint8 mask out, any size")
    parser.add_argument("--flips", action="store_true", help="--end-to-end: average the four flips (--tta flips)")
    parser.add_argument("--threshold", type=float, default=0.5, help="--end-to-end: foreground probability")
    parser.add_argument("--verify_dir", type=Path, help="--end-to-end: compare with the bundle on these images")
    parser.add_argument("--min_dice", type=float, default=0.999, help="--verify_dir: least mean Dice accepted")
    args = parser.parse_args(argv)
    filepath = Path(args.filepath or ("models/model.e2e.onnx" if args.end_to_end else "models/model.onnx"))
    config = ConfigParser()
    config.read_config(args.config_file)
    network, settings = network_for_checkpoint(config, args.ckpt_file)
    if not args.end_to_end:
        export_onnx(network, filepath, settings["image_size"], settings["in_channels"])
        print(f"exported {args.ckpt_file} to {filepath.resolve()}")
        return 0
    if settings["in_channels"] != 3 or settings["out_channels"] != 1:
        print("error: --end-to-end needs a 3-channel, 1-output network.", file=sys.stderr)
        return 2
    export_end_to_end(EndToEndSegmenter(network, settings["image_size"], args.flips, args.threshold), filepath)
    size_mb = filepath.stat().st_size / 1e6
    print(
        f"exported {args.ckpt_file} end to end ({'flips' if args.flips else 'no TTA'}) to {filepath} ({size_mb:.1f} MB)"
    )
    if args.verify_dir is None:
        return 0
    scores = verify(filepath, args.ckpt_file, args.config_file, args.verify_dir, args.flips)
    mean = statistics.fmean(scores)
    print(f"Dice with the bundle's masks on {len(scores)} images: mean {mean:.5f}, min {min(scores):.5f}")
    return 0 if mean >= args.min_dice else 1


if __name__ == "__main__":
    sys.exit(run_script(main))
