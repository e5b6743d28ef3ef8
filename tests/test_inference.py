"""configs/inference.json: folder inference at original size, naming, report, bad input, skipping, backends."""

import csv

import nibabel as nib
import numpy as np
import pytest
import tifffile
import torch
from bundle.data.transforms import AntialiasedResized
from bundle.inference.postprocessing import postprocess_mask
from bundle.networks import LightweightHierarchicalUTANet
from monai.bundle import ConfigParser, ckpt_export
from monai.data import MetaTensor
from monai.transforms import Resized
from PIL import Image
from scripts.export_onnx import main as export_onnx_main

from tests.helpers import CONFIGS, messages, run_bundle, save_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")

FAST = {"image_size": [64, 64], "batch_size": 4, "num_workers": 0, "encoder": "mobilenetv2"}
AFFINE = np.array([[0.0, 0.8, 0, 5], [0.6, 0.0, 0, -3], [0, 0, 2.0, 1], [0, 0, 0, 1]])
GOOD = {  # input -> (mask, (H, W))
    "rgb.png": ("rgb_mask.png", (40, 64)),
    "photo.jpg": ("photo_mask.png", (48, 56)),
    "a.png": ("a_png_mask.png", (40, 40)),
    "a.jpg": ("a_jpg_mask.png", (42, 46)),
    "sub/grey16.png": ("sub/grey16_mask.png", (50, 44)),
    "sub/rgba.png": ("sub/rgba_mask.png", (45, 60)),
    "sub/deep/scan.tif": ("sub/deep/scan_mask.png", (52, 41)),
    "sub/slice.nii.gz": ("sub/slice_mask.nii.gz", (42, 58)),
    "sub/deep/vol.nii.gz": ("sub/deep/vol_mask.nii.gz", (44, 52)),
}
BAD = {"corrupt.png": "error: ", "empty.jpg": "error: empty file", "notes.txt": "error: unsupported format"}


def make_mixed_folder(root):
    """Every supported kind of input in nested folders, a stem clash, three bad files and a hidden one."""
    rng = np.random.default_rng(0)
    (root / "sub" / "deep").mkdir(parents=True)

    def pixels(name, channels=(), dtype=np.uint8, high=255):
        return rng.integers(0, high, (*GOOD[name][1], *channels), dtype=dtype)

    for name in ("rgb.png", "photo.jpg", "a.png", "a.jpg"):
        Image.fromarray(pixels(name, (3,))).save(root / name)
    Image.fromarray(pixels("sub/grey16.png", dtype=np.uint16, high=65535)).save(root / "sub" / "grey16.png")
    assert Image.open(root / "sub" / "grey16.png").mode.startswith("I")  # really 16-bit
    Image.fromarray(pixels("sub/rgba.png", (4,))).save(root / "sub" / "rgba.png")
    tifffile.imwrite(root / "sub" / "deep" / "scan.tif", pixels("sub/deep/scan.tif", dtype=np.uint16, high=4000))
    nib.save(nib.Nifti1Image(pixels("sub/slice.nii.gz").astype(np.float32), AFFINE), root / "sub" / "slice.nii.gz")
    volume = pixels("sub/deep/vol.nii.gz").astype(np.int16)[..., None]
    nib.save(nib.Nifti1Image(volume, AFFINE), root / "sub" / "deep" / "vol.nii.gz")
    (root / "corrupt.png").write_bytes(rng.integers(0, 256, 500, dtype=np.uint8).tobytes())
    (root / "empty.jpg").write_bytes(b"")
    (root / "notes.txt").write_text("not an image")
    (root / ".hidden.png").write_bytes(b"hidden files are skipped")
    return root


def read_report(folder):
    with open(folder / "predictions.csv", newline="") as f:
        return {row["path"]: row for row in csv.DictReader(f)}


def read_mask(path):
    return nib.load(path).get_fdata() if path.name.endswith(".nii.gz") else np.asarray(Image.open(path))


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    return make_mixed_folder(tmp_path_factory.mktemp("mixed") / "in")


def test_folder_masks_report_naming_and_skipping(tmp_path, mixed):
    ckpt = save_checkpoint(tmp_path / "fg.pt", all_foreground=True)
    out = tmp_path / "out"

    def infer(**overrides):
        settings = {**FAST, **overrides}
        run_bundle(
            ["inference.json"], "infer", dataset_dir=str(mixed), output_dir=str(out), ckpt_path=str(ckpt), **settings
        )
        return {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}

    infer(num_workers=1)
    report = read_report(out)
    assert set(report) == set(GOOD) | set(BAD)  # the hidden file is not an input
    for name, (mask_name, shape) in GOOD.items():
        mask = read_mask(out / mask_name)
        assert mask.shape[:2] == shape, name  # original (H, W), not (W, H), not the model size
        row = report[name]
        assert row["status"] == "ok" and (int(row["height"]), int(row["width"])) == shape
        assert float(row["foreground_fraction"]) == 1.0 and row["components"] == "1"
        assert float(row["mean_foreground_probability"]) > 0.99 and row["mask"] == mask_name
        if mask_name.endswith(".png"):
            assert mask.dtype == np.uint8 and set(np.unique(mask)) == {255}
    for name in ("sub/slice.nii.gz", "sub/deep/vol.nii.gz"):
        source, written = nib.load(mixed / name), nib.load(out / GOOD[name][0])
        assert written.shape == source.shape and np.allclose(written.affine, AFFINE)
    for name, status in BAD.items():
        assert report[name]["status"].startswith(status), report[name]
    outputs = sorted(p for p in out.rglob("*") if p.is_file() and p.name not in ("predictions.csv", "review.html"))
    thumbnails = [p.relative_to(out / ".review").as_posix() for p in outputs if ".review" in p.parts]
    assert sorted(thumbnails) == sorted(f"{name}.jpg" for name in GOOD)  # the review page's, one per mask
    assert len(outputs) == 2 * len(GOOD) and not list(out.rglob(".*.tmp"))
    assert all(name in (out / "review.html").read_text() for name in GOOD)

    mtimes = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    assert infer() == mtimes  # nothing new: not a single file written, the report included
    Image.fromarray(np.zeros((30, 40, 3), np.uint8)).save(mixed / "new.png")
    assert set(infer()) - set(mtimes) == {out / "new_mask.png", out / ".review" / "new.png.jpg"}
    assert "new.png" in (out / "review.html").read_text()  # a re-run that appends rows updates the page
    first_report, report = report, read_report(out)
    assert report["new.png"]["status"] == "ok"
    assert all(report[name] == first_report[name] for name in GOOD)  # the rows of the run that wrote their masks
    assert all(report[name]["status"].startswith(status) for name, status in BAD.items())
    (mixed / "new.png").unlink()

    infer(overwrite=True, save_probabilities=True, save_overlay=True)
    assert all(row["status"] == "ok" for name, row in read_report(out).items() if name in GOOD)
    probabilities = np.load(out / "rgb_prob.npy")
    assert probabilities.shape == (40, 64) and probabilities.dtype == np.float32 and probabilities.min() > 0.99
    overlay = np.asarray(Image.open(out / "sub" / "rgba_overlay.png"))
    assert overlay.shape == (45, 60, 3) and (overlay == (0, 255, 0)).all(axis=-1).any()


def test_bad_folders_raise(tmp_path):
    ckpt = save_checkpoint(tmp_path / "fg.pt", all_foreground=True)
    bad = tmp_path / "bad"
    (bad / "x").mkdir(parents=True)
    (bad / "x" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    (bad / "readme.txt").write_text("no images")
    (tmp_path / "empty").mkdir()
    common = dict(ckpt_path=str(ckpt), output_dir=str(tmp_path / "out"), **FAST)
    with pytest.raises(Exception) as error:
        run_bundle(["inference.json"], "infer", dataset_dir=str(bad), **common)
    assert "could be segmented" in messages(error.value)
    report = read_report(tmp_path / "out")
    assert report["x/broken.png"]["status"].startswith("error: ") and report["readme.txt"]["status"].startswith("error")
    for folder, text in ((tmp_path / "missing", "does not exist"), (tmp_path / "empty", "holds no files")):
        with pytest.raises(Exception) as error:
            run_bundle(["inference.json"], "infer", dataset_dir=str(folder), **common)
        assert text in messages(error.value) and str(folder) in messages(error.value)


def test_postprocess_mask_options():
    probabilities = np.zeros((30, 40), np.float32)
    probabilities[2:20, 2:20] = 0.9  # a square with a 4x4 hole
    probabilities[8:12, 8:12] = 0.2
    probabilities[25:27, 30:32] = 0.7  # a 4-pixel blob
    mask = postprocess_mask(probabilities)
    assert mask.sum() == 18 * 18 - 16 + 4
    assert postprocess_mask(probabilities, threshold=0.8).sum() == 18 * 18 - 16
    assert postprocess_mask(probabilities, min_component_size=5).sum() == 18 * 18 - 16
    assert postprocess_mask(probabilities, min_component_size=4).sum() == 18 * 18 - 16 + 4
    assert postprocess_mask(probabilities, fill_holes=True).sum() == 18 * 18 + 4
    assert postprocess_mask(probabilities, keep_largest_component=True).sum() == 18 * 18 - 16
    assert postprocess_mask(probabilities, keep_largest_component=True, fill_holes=True).sum() == 18 * 18


POSTPROCESSING_IDS = ("threshold", "keep_largest_component", "fill_holes", "min_component_size")


def test_evaluation_post_processes_with_the_ids_and_defaults_of_inference():
    inference = ConfigParser.load_config_files([CONFIGS / "inference.json"])
    evaluation = ConfigParser()
    evaluation.read_config([CONFIGS / "train.json", CONFIGS / "evaluate.json"])
    evaluation_ids = {key: evaluation.get_parsed_content(key) for key in POSTPROCESSING_IDS}
    assert evaluation_ids == {key: inference[key] for key in POSTPROCESSING_IDS}
    evaluation.update({"keep_largest_component": True, "fill_holes": True, "threshold": 0.4})
    (binary,) = (
        t for t in evaluation.get_parsed_content("validate#postprocessing").transforms if hasattr(t, "options")
    )
    assert binary.options == {
        "threshold": 0.4,
        "keep_largest_component": True,
        "fill_holes": True,
        "min_component_size": 0,
    }


def test_torchscript_and_onnx_backends_match_torch(tmp_path, mixed):
    ckpt = save_checkpoint(tmp_path / "random.pt", all_foreground=False)
    ts_path, onnx_path = tmp_path / "model.ts", tmp_path / "model.onnx"
    ckpt_export(
        "network_def",
        filepath=str(ts_path),
        ckpt_file=str(ckpt),
        meta_file=str(CONFIGS / "metadata.json"),
        config_file=str(CONFIGS / "inference.json"),
        encoder="mobilenetv2",
    )
    export_onnx_main(["--ckpt_file", str(ckpt), "--filepath", str(onnx_path)])
    masks = {}
    for backend in ("torch", "torchscript", "onnx"):
        out = tmp_path / backend
        run_bundle(
            ["inference.json"],
            "infer",
            dataset_dir=str(mixed),
            output_dir=str(out),
            backend=backend,
            ckpt_path=str(ckpt),
            ts_path=str(ts_path),
            onnx_path=str(onnx_path),
            **FAST,
        )
        outputs = [read_mask(out / name) for name, _ in GOOD.values()]
        assert [mask.shape[:2] for mask in outputs] == [shape for _, shape in GOOD.values()], backend
        masks[backend] = np.concatenate([mask.ravel() > 0 for mask in outputs])
    assert 0.2 < masks["torch"].mean() < 0.8  # a mixed mask, so the comparison means something
    for backend in ("torchscript", "onnx"):
        dice = 2 * (masks[backend] & masks["torch"]).sum() / (masks[backend].sum() + masks["torch"].sum())
        assert dice >= 0.999, backend


@pytest.mark.parametrize("name", ["rgb.png", "photo.jpg", "sub/deep/scan.tif", "sub/slice.nii.gz"])
def test_components_for_monai_label(tmp_path, mixed, name):
    """preprocessing -> inferer(network) -> postprocessing on {"image": path}, as MONAI Label's BundleInferTask runs
    them: the pred is a uint8 mask in the image's own layout (spatial_shape), which MONAI Label's Restored leaves
    as it is and its writer turns into the image's H×W (it transposes 2D arrays)."""
    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "inference.json"))
    parser.update({**FAST, "ckpt_path": str(save_checkpoint(tmp_path / "fg.pt", all_foreground=True))})
    assert parser.get_parsed_content("device") is not None
    network = parser.get_parsed_content("network_def")
    network.load_state_dict(torch.load(tmp_path / "fg.pt"))
    data = parser.get_parsed_content("preprocessing")({"image": str(mixed / name)})
    with torch.inference_mode():
        data["pred"] = parser.get_parsed_content("inferer")(data["image"][None], network.eval())[0]
    result = parser.get_parsed_content("postprocessing")(data)
    pred, spatial_shape = result["pred"], [int(s) for s in result["image"].meta["spatial_shape"]]
    height, width = GOOD[name][1]
    assert pred.dtype == torch.uint8 and set(pred.unique().tolist()) == {1}
    assert list(pred.shape[1:]) == spatial_shape[-(pred.ndim - 1) :]  # Restored: no resize, no channel to drop
    if name.endswith(".nii.gz"):
        assert list(pred.shape) == spatial_shape == [height, width]
    else:
        assert tuple(pred.shape) == (width, height) and tuple(pred.numpy().T.shape) == (height, width)


@pytest.mark.parametrize("shape", [(3, 531, 622), (1, 1072, 1920), (3, 100, 70)])
def test_antialiased_resized_matches_monai_resized(shape):
    """inference.json's AntialiasedResized is train.json's Resized (bilinear, anti-aliased), faster; same inverse."""
    image = MetaTensor(torch.rand(shape, generator=torch.Generator().manual_seed(0)))
    options = {"keys": "image", "spatial_size": [64, 80], "mode": "bilinear", "anti_aliasing": True}
    expected = Resized(**options)({"image": image})["image"]
    fast = AntialiasedResized(**options)
    result = fast({"image": image})
    assert isinstance(result["image"], MetaTensor) and result["image"].shape == expected.shape
    assert torch.allclose(result["image"], expected, atol=1e-5)
    assert fast.inverse(result)["image"].shape == shape


def test_backend_auto_runs_onnx_runtime_on_cpu_with_torchs_masks(tmp_path, mixed):
    """``backend auto`` (the default) on a CPU exports the checkpoint once into the cache, verified, and serves it
    with ONNX Runtime; its masks equal the torch backend's."""
    from bundle.backends.predictors import OnnxPredictor

    ckpt, cache = save_checkpoint(tmp_path / "random.pt", all_foreground=False), tmp_path / "cache"
    masks = {}
    for backend in ("torch", "auto", "auto"):
        out = tmp_path / f"{backend}-{len(masks)}"
        settings = {**FAST, "backend": backend, "ckpt_path": str(ckpt), "onnx_cache_dir": str(cache)}
        workflow = run_bundle(["inference.json"], "infer", dataset_dir=str(mixed), output_dir=str(out), **settings)
        predictor = workflow.parser.get_parsed_content("predictor")
        assert isinstance(predictor, OnnxPredictor) == (backend == "auto")
        masks[backend] = np.concatenate([read_mask(out / name).ravel() > 0 for name, _ in GOOD.values()])
        if backend == "auto":
            exported = sorted(cache.glob("*.onnx"))
            assert len(exported) == 1 and exported[0].name.startswith("random-")  # made once, then reused
            assert [p.name for p in cache.glob(".*")] == [".lock"]  # no unverified temporary file left
    assert 0.2 < masks["torch"].mean() < 0.8
    dice = 2 * (masks["auto"] & masks["torch"]).sum() / (masks["auto"].sum() + masks["torch"].sum())
    assert dice >= 0.999


def test_an_export_that_disagrees_with_torch_is_never_used(tmp_path, monkeypatch):
    from bundle.backends.predictors import OnnxPredictor, cached_onnx_export, load_network

    ckpt = save_checkpoint(tmp_path / "random.pt", all_foreground=False)
    network = load_network(LightweightHierarchicalUTANet(encoder="mobilenetv2", use_moe=True), ckpt)
    predict = OnnxPredictor.predict
    monkeypatch.setattr(OnnxPredictor, "predict", lambda self, images: predict(self, images) + 0.01)
    with pytest.raises(ValueError, match="differs from torch"):
        cached_onnx_export(network, ckpt, tmp_path / "cache", (64, 64))
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [".lock"]  # neither the export nor a temporary file


def test_backend_auto_falls_back_to_torch_when_the_export_cannot_run_a_batch(tmp_path, caplog):
    """MONAI's FlexibleUNet(resnet34) exports with its batch size fixed (type-A shortcuts concatenate zeros of the
    traced batch): the probe batch of 2 fails, nothing is cached, and auto serves torch."""
    from bundle.backends.predictors import OnnxPredictor, load_predictor
    from monai.networks.nets import FlexibleUNet

    torch.manual_seed(0)
    network = FlexibleUNet(in_channels=3, out_channels=1, backbone="resnet34", pretrained=False, spatial_dims=2)
    ckpt = tmp_path / "flexible.pt"
    torch.save(network.state_dict(), ckpt)
    with caplog.at_level("WARNING", logger="bundle.backends.predictors"):
        predictor = load_predictor("auto", "cpu", network, ckpt, "", "", tmp_path / "cache", (64, 64))
    assert not isinstance(predictor, OnnxPredictor)
    assert "does not run on a probe batch" in caplog.text and "running torch instead" in caplog.text
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [".lock"]
    x = torch.rand(3, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(predictor(x).as_tensor(), network.eval()(x))


def test_review_page_is_optional_and_written_when_nothing_could_be_segmented(tmp_path):
    ckpt = save_checkpoint(tmp_path / "fg.pt", all_foreground=True)
    images, bad = tmp_path / "images", tmp_path / "bad"
    images.mkdir()
    bad.mkdir()
    Image.fromarray(np.zeros((30, 40, 3), np.uint8)).save(images / "a.png")
    (bad / "broken.png").write_bytes(b"not a png")
    settings = {**FAST, "ckpt_path": str(ckpt)}
    run_bundle(
        ["inference.json"],
        "infer",
        dataset_dir=str(images),
        output_dir=str(tmp_path / "off"),
        review_page=False,
        **settings,
    )
    assert (tmp_path / "off" / "a_mask.png").is_file()
    assert not (tmp_path / "off" / "review.html").exists() and not (tmp_path / "off" / ".review").exists()
    with pytest.raises(Exception) as error:
        run_bundle(["inference.json"], "infer", dataset_dir=str(bad), output_dir=str(tmp_path / "none"), **settings)
    assert "could be segmented" in messages(error.value)
    page = (tmp_path / "none" / "review.html").read_text()
    assert "No input was segmented successfully" in page and "broken.png" in page
