"""``scripts/export_onnx.py --end-to-end``: the in-graph resize is the bundle's, and the exported model (uint8 image
of any size in, uint8 mask out) agrees with the bundle's folder inference, with and without the flip TTA."""

import numpy as np
import onnxruntime
import pytest
import torch
from bundle.data.transforms import antialiased_resize_matrix
from bundle.inference.end_to_end import resize_matrix
from PIL import Image
from scripts.export_onnx import main

from tests.helpers import save_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")
SIZES = ((50, 70), (300, 410), (256, 180), (224, 224))  # up, down, mixed, equal


@pytest.mark.parametrize("length,size", [(530, 224), (1080, 224), (225, 224), (224, 224), (70, 224)])
def test_in_graph_resize_matrix_is_the_bundles(length, size):
    matrix = resize_matrix(torch.tensor(length), size)
    if size < length:  # AntialiasedResized's operator
        expected = antialiased_resize_matrix(length, size)
    else:  # Resized without smoothing: bilinear interpolation
        expected = torch.nn.functional.interpolate(torch.eye(length)[None], size=size, mode="linear")[0].T
    assert torch.allclose(matrix, expected, atol=1e-4)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """Smooth random RGB images of several sizes and a checkpoint whose masks are about half foreground."""
    root = tmp_path_factory.mktemp("e2e")
    (root / "images").mkdir()
    rng = np.random.default_rng(0)
    for index, (height, width) in enumerate(SIZES):
        coarse = rng.integers(0, 256, (height // 10 + 2, width // 10 + 2, 3), dtype=np.uint8)
        image = Image.fromarray(coarse).resize((width, height), Image.BICUBIC)
        image.save(root / "images" / f"image_{index}.png")
    return root, save_checkpoint(root / "model.pt", all_foreground=False)


@pytest.mark.parametrize("flips", [False, True])
def test_end_to_end_export_agrees_with_the_bundle(synthetic, flips, capsys):
    root, checkpoint = synthetic
    path = root / f"e2e_{flips}.onnx"
    options = ["--flips"] if flips else []
    args = ["--end-to-end", "--ckpt_file", str(checkpoint), "--filepath", str(path), *options]
    assert main([*args, "--verify_dir", str(root / "images")]) == 0, capsys.readouterr().out
    assert "Dice with the bundle's masks on 4 images" in capsys.readouterr().out
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for index, (height, width) in enumerate(SIZES):
        pixels = np.asarray(Image.open(root / "images" / f"image_{index}.png").convert("RGB"))
        mask = session.run(None, {"image": pixels})[0]
        assert mask.dtype == np.uint8 and mask.shape == (height, width)
        assert set(np.unique(mask)) == {0, 255}  # a mixed mask: the comparison above means something


def test_a_different_threshold_fails_the_check(synthetic):
    root, checkpoint = synthetic
    args = ["--end-to-end", "--ckpt_file", str(checkpoint), "--filepath", str(root / "t.onnx"), "--threshold", "0.9"]
    assert main([*args, "--verify_dir", str(root / "images")]) == 1
