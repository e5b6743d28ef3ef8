"""Check the bundle inside a real MONAI Label 0.8.5 server (the ``monaibundle`` sample app), offline, in one command.

1. A side virtual environment (``--venv``, built once, reused while its specification is unchanged): torch 2.13.0
   first, this bundle's requirements.txt, ``monailabel==0.8.5 --no-deps``, then its declared dependencies
   except torchvision and sam2, with pydicom 2.4.4, dicomweb-client 0.59.1, pynetdicom<3,
   and the bundle's pins as constraints (pydicom-seg and numpymaxflow, which declare numpy<2, go in without
   dependencies; this check never calls them).
2. A torchvision stand-in, in this check only (``scripts/torchvision_stand_in.py`` as ``torchvision.utils`` on the
   server's PYTHONPATH): the registry's torchvision is a CUDA build that fails under the CPU torch, and MONAI Label
   imports ``make_grid`` and ``save_image`` at start-up for code this bundle never calls; they raise if called.
3. ``monailabel apps --download --name monaibundle`` (offline: the app ships with the package), and the bundle
   zip of ``scripts/package_bundle.py --include-weights`` unpacked into ``app/model/lh_utanet``.
4. A studies folder of non-square images (JPG, PNG, TIFF) with labels in ``labels/final``: synthetic polyps, or
   the first images of ``--images DIR`` (``images/`` + ``masks/``, e.g. Kvasir-SEG).
5. ``configs/inference.json`` run directly on the studies (the reference masks).
6. ``monailabel start_server`` on 127.0.0.1; ``GET /info/``; ``POST /infer/lh_utanet`` per image format: a 2D
   uint8 mask at the image's H×W, Dice against the label within ``--dice_tolerance`` of the direct run's, and a
   ``qc_score`` in the JSON result; ``POST /train/lh_utanet``, 1 epoch from the shipped weights: a new checkpoint
   under ``models/monailabel/``, the shipped weights (sha256) unchanged in the app and here. The server is stopped
   by its process group id, whatever happens.
7. With ``--write-docs FILE``, once every check passed: the measured figures as Markdown (date, machine, command).

Usage (from the repository root; about 4 minutes to build the environment the first time, then about 2; exit code
0 when every check passes, 1 otherwise; each check prints one line):
    python scripts/check_monailabel.py [--images ../shared/data/kvasir-seg] [--venv .venv-monailabel] [--keep]
    python scripts/check_monailabel.py --write-docs docs/monailabel_check.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import tifffile
from bundle.atomic_files import atomic_write_text, sha256_of
from bundle.data.demo import make_demo_dataset
from bundle.errors import run_script
from PIL import Image
from scripts.bench.measure import cpu_model, markdown_table
from scripts.write_large_files import SHIPPED

REPO_ROOT = Path(__file__).resolve().parents[1]

MONAI_LABEL = "monailabel==0.8.5"
# monailabel 0.8.5's declared dependencies (its wheel's METADATA) minus torchvision and sam2, with the pins it needs
# here, plus pydicom-seg's SimpleITK; installed under requirements.txt as constraints, so that torch, monai and numpy
# stay the bundle's
MONAI_LABEL_DEPENDENCIES = """
monai[fire,gdown,ignite,itk,lmdb,mlflow,nibabel,openslide,pillow,psutil,skimage,tensorboard,tqdm]
uvicorn>=0.29.0 pydantic>=2.7.0 pydantic-settings>=2.2.1 python-dotenv>=1.0.1 fastapi>=0.110.2
python-multipart>=0.0.9 httpx>=0.27.0 schedule>=1.2.1 dicomweb-client[gcp]==0.59.1 timeloop>=1.0.2
expiringdict>=1.2.2 expiring_dict>=1.1.0 cachetools>=5.3.3 watchdog>=4.0.0 pydicom==2.4.4 pynetdicom>=2.0.2,<3
pynrrd>=1.0.0 girder-client>=3.2.3 ninja>=1.11.1.1 einops>=0.7.0 pyyaml>=6.0.1 filelock>=3.11.0 passlib>=1.7.4
pyjwt>=2.8.0 bcrypt>=4.1.2 shapely>=2.0.4 requests>=2.31.0 requests-toolbelt>=1.0.0 urllib3>=2.2.1
scikit-learn scipy google-auth>=2.29.0 SimpleITK
""".split()
NUMPY_LT2_DEPENDENCIES = ("pydicom-seg>=0.4.1", "numpymaxflow>=0.0.7")  # declare numpy<2: installed --no-deps
TORCHVISION_STAND_IN = REPO_ROOT / "scripts" / "torchvision_stand_in.py"  # becomes torchvision/utils.py
BUNDLE_NAME = "lh_utanet"
STUDY_FORMATS = (".jpg", ".png", ".tif", ".jpg", ".png")  # /infer is checked on the first of each format


class CheckError(Exception):
    """A check did not pass; the message says which and by how much."""


def run(command: Sequence[str], **kwargs) -> subprocess.CompletedProcess:
    """Run ``command``; CheckError with the end of its output when it fails."""
    result = subprocess.run(command, capture_output=True, text=True, check=False, **kwargs)
    if result.returncode != 0:
        raise CheckError(f"{' '.join(command[:6])} ... failed:\n{(result.stdout + result.stderr)[-3000:]}")
    return result


def venv_spec() -> str:
    requirements = (REPO_ROOT / "requirements.txt").read_text(encoding="utf-8")
    return json.dumps([MONAI_LABEL, MONAI_LABEL_DEPENDENCIES, NUMPY_LT2_DEPENDENCIES, requirements])


def build_venv(venv: Path) -> Path:
    """The side environment's python, built unless ``venv`` already holds one of the same specification."""
    python, marker = venv / "bin" / "python", venv / "lh_utanet_spec.json"
    if python.is_file() and marker.is_file() and marker.read_text(encoding="utf-8") == venv_spec():
        print(f"environment: reusing {venv}")
        return python
    print(f"environment: building {venv} (torch first, then the bundle's requirements, then MONAI Label)", flush=True)
    run([sys.executable, "-m", "venv", "--clear", str(venv)])
    pip = [str(python), "-m", "pip", "install", "--quiet"]
    run([*pip, "torch==2.13.0"])
    run([*pip, "-r", str(REPO_ROOT / "requirements.txt")])
    run([*pip, "--no-deps", MONAI_LABEL, *NUMPY_LT2_DEPENDENCIES])
    run([*pip, "-c", str(REPO_ROOT / "requirements.txt"), *MONAI_LABEL_DEPENDENCIES])
    marker.write_text(venv_spec(), encoding="utf-8")
    return python


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def make_studies(folder: Path, images_dir: str | None, work: Path) -> dict[str, Path]:
    """Write the studies (``case<i>.<ext>``) and their labels (``labels/final/case<i>.png``, 0/1).

    Returns {study id: study file}. Synthetic images are demo polyps cropped to 256×192 (W×H), so that a
    transposed mask cannot pass; ``images_dir`` images keep their own (non-square) sizes.
    """
    labels = folder / "labels" / "final"
    labels.mkdir(parents=True)
    if images_dir:
        sources = sorted((Path(images_dir) / "images").iterdir())[: len(STUDY_FORMATS)]
        pairs = [(s, next((Path(images_dir) / "masks").glob(s.stem + ".*"))) for s in sources]
    else:
        demo = Path(make_demo_dataset(work / "demo", num_images=len(STUDY_FORMATS), size=256, seed=3))
        pairs = [(p, demo / "masks" / p.name) for p in sorted((demo / "images").glob("*.png"))]
    studies = {}
    for index, ((image_path, mask_path), suffix) in enumerate(zip(pairs, STUDY_FORMATS)):
        image = np.asarray(Image.open(image_path).convert("RGB"))
        mask = (np.asarray(Image.open(mask_path).convert("L")) > 127).astype(np.uint8)
        if not images_dir:
            image, mask = image[32:224], mask[32:224]  # 192 rows, 256 columns
        study = folder / f"case{index}{suffix}"
        if suffix == ".tif":
            tifffile.imwrite(study, image)
        else:
            Image.fromarray(image).save(study, quality=95)
        Image.fromarray(mask).save(labels / f"case{index}.png")
        studies[study.stem] = study
    return studies


def read_array(path: Path) -> np.ndarray:
    """The pixels of an image file as stored, rows first, singleton axes dropped."""
    return np.squeeze(tifffile.imread(path) if path.suffix == ".tif" else np.asarray(Image.open(path)))


def read_mask(path: Path, foreground: int = 255) -> np.ndarray:
    """(H, W) bool mask of a mask file whose foreground value is ``foreground``: 255 for the bundle's masks, 1 for
    labels and MONAI Label's results (label ``foreground`` = 1); more than half of it is foreground (JPEG noise)."""
    return read_array(path) > foreground / 2


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else float(2 * (a & b).sum() / total)


def shipped_hashes(root: Path) -> dict[str, str]:
    return {name: sha256_of(root / name) for name in SHIPPED if (root / name).is_file()}


class Server:
    """``monailabel start_server`` in its own process group, stopped by that group's id."""

    def __init__(self, python: Path, app: Path, studies: Path, stubs: Path, log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(stubs), str(app.parent)]), "OMP_NUM_THREADS": "2"}
        command = [
            str(python), "-m", "monailabel.main", "start_server", "--app", str(app), "--studies", str(studies),
            "--conf", "models", BUNDLE_NAME, "--conf", "zoo_source", "local", "--conf", "sam2", "false",
            "--host", "127.0.0.1", "--port", str(self.port),
        ]  # fmt: skip
        self.log = log
        self.process = subprocess.Popen(
            command, stdout=open(log, "w"), stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        print(f"server: pid {self.process.pid} on {self.url}, log {log}", flush=True)

    def request(self, method: str, path: str, timeout: float = 60, **kwargs) -> bytes:
        request = urllib.request.Request(self.url + path, method=method, **kwargs)
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.read()

    def wait_until_up(self, timeout: float = 300) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise CheckError(f"the server exited with {self.process.returncode}; log:\n{self.tail()}")
            try:
                return json.loads(self.request("GET", "/info/", timeout=5))
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(2)
        raise CheckError(f"the server did not answer /info/ within {timeout:.0f} s; log:\n{self.tail()}")

    def tail(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")[-4000:]

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        print(f"server: stopped (pid {self.process.pid}, exit {self.process.returncode})")


def direct_masks(studies: dict[str, Path], work: Path) -> dict[str, np.ndarray]:
    """``configs/inference.json`` on a copy of the study images, as a user runs it: {study id: (H, W) mask}."""
    folder, out = work / "direct_in", work / "direct_out"
    folder.mkdir()
    for path in studies.values():
        shutil.copy(path, folder / path.name)
    command = [
        sys.executable, "-m", "monai.bundle", "run", "--config_file", str(REPO_ROOT / "configs" / "inference.json"),
        "--bundle_root", str(REPO_ROOT), "--dataset_dir", str(folder), "--output_dir", str(out),
    ]  # fmt: skip
    run(command, cwd=REPO_ROOT)
    return {study: read_mask(out / f"{study}_mask.png") for study in studies}


def infer(server: Server, study: str, result: Path | None, **params: object) -> Path | dict:
    """``POST /infer/lh_utanet`` of ``study`` with ``params``: the mask file written to ``result``, or with ``result``
    None the result JSON (where the quality score comes back)."""
    body = urllib.parse.urlencode({"params": json.dumps({"device": "cpu", **params})}).encode()
    query = urllib.parse.urlencode({"image": study, "output": "image" if result else "json"})
    answer = server.request("POST", f"/infer/{BUNDLE_NAME}?{query}", timeout=120, data=body)
    if result is None:
        return json.loads(answer)
    result.write_bytes(answer)
    return result


def check_infer(
    server: Server, studies: dict[str, Path], labels: Path, direct: dict[str, np.ndarray], tolerance: float, out: Path
) -> list[list[str]]:
    """/infer on the first study of each format: 2D uint8 mask at H×W, Dice within ``tolerance`` of the direct run's,
    a qc_score in [0, 1]; for JPG also with ``result_extension`` .png, which must equal the direct mask. Returns a
    table row per format."""
    checked, rows = set(), []
    for study, path in studies.items():
        if path.suffix in checked:
            continue
        checked.add(path.suffix)
        result = infer(server, study, out / f"{study}_monailabel{path.suffix}")
        stored, (height, width) = read_array(result), read_array(path).shape[:2]
        label, mask = read_mask(labels / f"{study}.png", foreground=1), read_mask(result, foreground=1)
        served, reference = dice(mask, label), dice(direct[study], label)
        line = (
            f"infer {path.name}: mask {stored.shape} {stored.dtype} for image {height}x{width}; Dice vs label "
            f"{served:.4f} (direct bundle run {reference:.4f}, difference {abs(served - reference):.4f}); "
            f"agreement with the direct mask {dice(mask, direct[study]):.4f}"
        )
        print(line, flush=True)
        if stored.ndim != 2 or stored.dtype != np.uint8 or stored.shape != (height, width):
            raise CheckError(f"{path.name}: expected a 2D uint8 mask of {height}x{width}")
        if abs(served - reference) > tolerance:
            raise CheckError(f"{path.name}: Dice differs from the direct run by more than {tolerance}")
        agreement = f"{dice(mask, direct[study]):.4f}"
        if path.suffix == ".jpg":
            lossless = infer(server, study, out / f"{study}_monailabel.png", result_extension=".png")
            png_agreement = dice(read_mask(lossless, foreground=1), direct[study])
            print(f"infer {path.name} with result_extension .png: agreement with the direct mask {png_agreement:.4f}")
            if png_agreement < 1.0:
                raise CheckError(f"{path.name}: the PNG result differs from the direct mask")
            agreement += f" (JPEG, lossy); {png_agreement:.4f} with `result_extension` `.png`"
        quality = infer(server, study, None)
        print(f"infer {path.name}: qc_score {quality.get('qc_score')}, needs_review {quality.get('needs_review')}")
        if not 0 <= float(quality.get("qc_score", -1)) <= 1 or quality.get("needs_review") not in (0, 1):
            raise CheckError(f"{path.name}: /infer's JSON result lacks qc_score or needs_review: {quality}")
        cells = [path.suffix[1:].upper(), f"{height}×{width}", f"{stored.shape} {stored.dtype}", f"{served:.4f}"]
        rows.append([*cells, f"{reference:.4f}", agreement])
    return rows


def check_train(server: Server, bundle: Path, repo_hashes: dict[str, str], app_hashes: dict[str, str]) -> str:
    """/train for 1 epoch from the shipped weights: a new checkpoint under models/monailabel/, shipped files as they
    were. Returns a sentence with the training time and the checkpoint written."""
    params = {"max_epochs": 1, "val_split": 0.4, "device": "cpu", "multi_gpu": False, "pretrained": True}
    start = time.monotonic()
    body, headers = json.dumps(params).encode(), {"Content-Type": "application/json"}
    answer = server.request("POST", f"/train/{BUNDLE_NAME}?run_sync=true", timeout=600, data=body, headers=headers)
    checkpoints = bundle / "models" / "monailabel"
    seconds, trained = time.monotonic() - start, sorted(checkpoints.glob("*/model.pt"))
    print(f"train: 1 epoch in {seconds:.0f} s; answer {answer[:200]!r}; checkpoints {trained}")
    if not trained:
        raise CheckError(f"training wrote no checkpoint under {checkpoints}; log:\n{server.tail()}")
    for root, before in ((REPO_ROOT, repo_hashes), (bundle, app_hashes)):
        after = shipped_hashes(root)
        state = "unchanged" if after == before else "CHANGED"
        print(f"shipped weights in {root}: {state} ({', '.join(sorted(after))})")
        if after != before:
            raise CheckError(f"the shipped weights in {root} changed")
    repo, app = (", ".join(f"`{name}`" for name in sorted(hashes)) for hashes in (repo_hashes, app_hashes))
    return (
        f"`/train`, 1 epoch from the shipped weights: {seconds:.0f} s; new checkpoint "
        f"`{trained[-1].relative_to(bundle)}`; the shipped weights kept their sha256 (repository: {repo}; app: {app})."
    )


def write_docs(args: argparse.Namespace, command: str, infer_rows: list[list[str]], train: str) -> None:
    """The measured figures as a generated Markdown page (``--write-docs``): date, machine and command first."""
    inference = json.loads((REPO_ROOT / "configs" / "inference.json").read_text(encoding="utf-8"))
    version = json.loads((REPO_ROOT / "configs" / "metadata.json").read_text(encoding="utf-8"))["version"]
    studies = f"the first images of `{args.images}`" if args.images else "synthetic polyps cropped to 256×192 (W×H)"
    head = "image|H×W|mask returned|Dice vs label, MONAI Label|direct bundle run|agreement of the masks".split("|")
    lines = [
        "# MONAI Label 0.8.5 check: measured figures",
        f"Generated on {time.strftime('%Y-%m-%d')} on {cpu_model()} ({os.cpu_count()} cores, "
        f"{platform.machine()}) by `{command}`; do not edit, run the command again.",
        f"Bundle {version}; studies: {studies}. Each mask is MONAI Label's `POST /infer/{BUNDLE_NAME}` answer (default "
        f"writer); the direct run is `configs/inference.json` as configured (backend `{inference['backend']}`, tta "
        f"`{inference['tta']}`). Dice is against the label; the two runs' Dice may differ by at most {args.dice_tolerance:g}.",
        markdown_table(head, infer_rows),
        train,
        "All checks passed.",
    ]
    atomic_write_text(args.write_docs, "\n\n".join(lines) + "\n")
    print(f"figures written to {args.write_docs}")


def install_bundle(app: Path, work: Path) -> Path:
    """The bundle zip with weights (scripts/package_bundle.py), unpacked into the app's model folder."""
    archive = work / "bundle.zip"
    run(
        [
            sys.executable,
            str(REPO_ROOT / "scripts" / "package_bundle.py"),
            "--include-weights",
            "--output",
            str(archive),
        ]
    )
    with zipfile.ZipFile(archive) as zipped:
        zipped.extractall(app / "model")
    return app / "model" / BUNDLE_NAME


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--venv", default=str(REPO_ROOT / ".venv-monailabel"), help="side environment (built once)")
    parser.add_argument("--images", help="images/ + masks/ folder to take the studies from (default: synthetic)")
    parser.add_argument("--work_dir", help="folder for the app, studies and outputs (default: a temporary one)")
    parser.add_argument("--dice_tolerance", type=float, default=0.001)
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    parser.add_argument("--write-docs", metavar="FILE", help="once all checks pass, write the figures as Markdown here")
    args = parser.parse_args(argv)
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="check_monailabel_")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    if any(work.iterdir()) and args.work_dir:
        print(f"error: {work} is not empty; choose an empty or new --work_dir", file=sys.stderr)
        return 1
    server = None
    try:
        python = build_venv(Path(args.venv).resolve())
        stubs = work / "stubs" / "torchvision"
        stubs.mkdir(parents=True)
        (stubs / "__init__.py").write_text("", encoding="utf-8")
        shutil.copy(TORCHVISION_STAND_IN, stubs / "utils.py")
        apps = work / "apps"
        run(
            [str(python), "-m", "monailabel.main", "apps", "--download", "--name", "monaibundle", "--output", str(apps)]
        )
        app = apps / "monaibundle"
        bundle = install_bundle(app, work)
        studies_dir = work / "studies"
        studies = make_studies(studies_dir, args.images, work)
        direct = direct_masks(studies, work)
        repo_hashes, app_hashes = shipped_hashes(REPO_ROOT), shipped_hashes(bundle)
        server = Server(python, app, studies_dir, work / "stubs", work / "server.log")
        info = server.wait_until_up()
        model_info = info.get("models", {}).get(BUNDLE_NAME)
        models, trainers = sorted(info.get("models", {})), sorted(info.get("trainers", {}))
        print(f"info: models {models}, trainers {trainers}; {BUNDLE_NAME}: {model_info}")
        if not model_info or BUNDLE_NAME not in trainers:
            raise CheckError(f"/info/ lists no {BUNDLE_NAME} model and trainer")
        infer_rows = check_infer(server, studies, studies_dir / "labels" / "final", direct, args.dice_tolerance, work)
        train = check_train(server, bundle, repo_hashes, app_hashes)
    except CheckError as failure:
        print(f"FAILED: {failure}", file=sys.stderr)
        return 1
    finally:
        if server is not None:
            server.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"work folder kept: {work}")
    print("MONAI Label check: all passed")
    if args.write_docs:
        command = shlex.join(["python", "scripts/check_monailabel.py", *(sys.argv[1:] if argv is None else argv)])
        write_docs(args, command, infer_rows, train)
    return 0


if __name__ == "__main__":
    sys.exit(run_script(main))
