"""Check the bundle inside a real MONAI Label 0.8.5 server, offline, in one command: the bundle's app
(``scripts/monailabel_app``: the ``monaibundle`` sample app plus the scoring method ``qc_score`` and the strategy
``worst_qc_first``) with inference, training and the active-learning loop.

1. A side virtual environment (``--venv``, built once, reused while its specification is unchanged): torch 2.13.0
   first, this bundle's requirements.txt, ``monailabel==0.8.5 --no-deps``, then its declared dependencies
   except torchvision and sam2, with pydicom 2.4.4, dicomweb-client 0.59.1, pynetdicom<3,
   and the bundle's pins as constraints (pydicom-seg and numpymaxflow, which declare numpy<2, go in without
   dependencies; this check never calls them). Code: ``scripts/monailabel_checks/server.py``.
2. A torchvision stand-in, in this check only (``scripts/torchvision_stand_in.py`` as ``torchvision.utils`` on the
   server's PYTHONPATH): the registry's torchvision is a CUDA build that fails under the CPU torch, and MONAI Label
   imports ``make_grid`` and ``save_image`` at start-up for code this bundle never calls; they raise if called.
3. The bundle zip of ``scripts/package_bundle.py --include-weights`` unpacked into ``app/model/lh_utanet``, and the
   app's files (``main.py``, ``lib/``) copied from the zip's ``scripts/monailabel_app`` into ``app/``.
4. A studies folder of non-square images (JPG, PNG, TIFF) with labels in ``labels/final``, and a pool of unlabeled
   ones: synthetic polyps (the pool's made harder), or the first images of ``--images DIR`` (``images/`` +
   ``masks/``, e.g. Kvasir-SEG).
5. ``configs/inference.json`` run directly on all of them (the reference masks, and ``qc_score`` of its
   predictions.csv).
6. ``monailabel start_server`` on 127.0.0.1; ``GET /info/`` (the model, trainer, scoring method and strategy);
   ``POST /infer/lh_utanet`` per image format: a 2D uint8 mask at the image's H×W, Dice against the label within
   ``--dice_tolerance`` of the direct run's, and a ``qc_score`` in the JSON result.
7. Active learning (``scripts/monailabel_checks/active_learning.py``): ``POST /scoring/qc_score`` stores each pool
   image's ``qc_score``, within ``--qc_tolerance`` of the direct run's; ``POST /activelearning/worst_qc_first`` once,
   the label of the image it names saved (``PUT /datastore/label``), then once per remaining image: the images in
   ascending ``qc_score`` (the stored and the direct run's order), the labelled one never again.
8. ``POST /train/lh_utanet``, 1 epoch from the shipped weights: a new checkpoint under ``models/monailabel/``, the
   shipped weights (sha256) unchanged in the app and here. Then that checkpoint served (the app's copy of
   ``models/model.pt``): ``/scoring/qc_score`` re-scores every unlabeled image and ``worst_qc_first`` follows the
   new scores. The server is stopped by its process group id (its task processes with it), whatever happens.
9. With ``--write-docs FILE``, once every check passed: the measured figures as Markdown (date, machine, command).

Usage (from the repository root; about 4 minutes to build the environment the first time; exit code 0 when every
check passes, 1 otherwise; each check prints one line):
    python scripts/check_monailabel.py [--images ../shared/data/kvasir-seg] [--venv .venv-monailabel] [--keep]
    python scripts/check_monailabel.py --write-docs docs/monailabel_check.md
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shutil
import sys
import tempfile
import time
import urllib.parse
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
from scripts.doc_command import relative_command, relative_path
from scripts.monailabel_checks.active_learning import (
    SCORING,
    STRATEGY,
    check_next_samples,
    check_rescore,
    check_scoring,
    make_pool,
)
from scripts.monailabel_checks.server import (
    BUNDLE_NAME,
    REPO_ROOT,
    CheckError,
    Server,
    build_venv,
    repo_env,
    run,
    torchvision_stand_in,
)
from scripts.write_large_files import SHIPPED

STUDY_FORMATS = (".jpg", ".png", ".tif", ".jpg", ".png")  # /infer is checked on the first of each format
APP = REPO_ROOT / "scripts" / "monailabel_app"  # the app: main.py and lib/, beside the bundle in model/lh_utanet


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


def direct_run(images: dict[str, Path], work: Path) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """``configs/inference.json`` on a copy of ``images``, as a user runs it: {id: (H, W) mask}, and {id: qc_score}
    from its predictions.csv."""
    folder, out = work / "direct_in", work / "direct_out"
    folder.mkdir()
    for path in images.values():
        shutil.copy(path, folder / path.name)
    command = [
        sys.executable, "-m", "monai.bundle", "run", "--config_file", str(REPO_ROOT / "configs" / "inference.json"),
        "--bundle_root", str(REPO_ROOT), "--dataset_dir", str(folder), "--output_dir", str(out),
    ]  # fmt: skip
    run(command, cwd=REPO_ROOT, env=repo_env())
    with open(out / "predictions.csv", newline="", encoding="utf-8") as report:
        scores = {Path(row["path"]).stem: float(row["qc_score"]) for row in csv.DictReader(report)}
    return {image: read_mask(out / f"{image}_mask.png") for image in images}, scores


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


def check_train(
    server: Server, bundle: Path, repo_hashes: dict[str, str], app_hashes: dict[str, str]
) -> tuple[str, Path]:
    """/train for 1 epoch from the shipped weights: a new checkpoint under models/monailabel/, shipped files as they
    were. Returns a sentence with the training time and the checkpoint written, and that checkpoint."""
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
    ), trained[-1]


def active_learning_lines(args: argparse.Namespace, figures: dict) -> tuple[list[str], str]:
    """The scoring and next-sample figures (``--write-docs``): a sentence and a table of the pool, and the sentence
    on the re-scoring after the training."""
    scoring, sequence, direct, rescore = figures["scoring"], figures["sequence"], figures["direct"], figures["rescore"]
    pool = (
        f"the next images of `{args.images}`"
        if args.images
        else "synthetic polyps: as is, blurred, noisy, faded, dark, glared"
    )
    rows = [
        [image, f"{scoring['scores'][image]:.6f}", f"{direct[image]:.6f}", str(rank)]
        + [f"{rescore['scores'][image]:.6f}" if image in rescore["scores"] else "labelled"]
        for rank, image in enumerate(sequence, 1)
    ]
    head = ["unlabeled image", "stored `qc_score`", "`qc_score` of the direct run", "handed out", "after the training"]
    summary = scoring["summary"]
    first = rescore["first"]
    return [
        f"Active learning, on {len(sequence)} unlabeled images ({pool}): MONAI Label's automatic scoring at start-up "
        f"stored `{SCORING}` for {scoring['at_start']}; then `POST /scoring/{SCORING}` (`run_sync`) scored "
        f"{summary['scored']} and skipped {summary['skipped']} (already scored with the served weights) in "
        f"{scoring['seconds']:.1f} s. The stored scores differ from the direct run's (`predictions.csv`) by at most "
        f"{scoring['largest']:.2g} (allowed: {args.qc_tolerance:g}). `POST /activelearning/{STRATEGY}` handed the "
        "images out in this order, the first one's label saved before the next call:",
        markdown_table(head, rows),
    ], (
        f"After the training, its checkpoint served as `models/model.pt` (the app's copy): `POST /scoring/{SCORING}` "
        f"re-scored the {rescore['summary']['scored']} unlabeled images in {rescore['summary']['latency']:.1f} s "
        f"(new weights, so none skipped; last column above), and `{STRATEGY}` named `{first}`, the lowest new score."
    )


def write_docs(args: argparse.Namespace, command: str, infer_rows: list[list[str]], train: str, figures: dict) -> None:
    """The measured figures as a generated Markdown page (``--write-docs``): date, machine and command first."""
    inference = json.loads((REPO_ROOT / "configs" / "inference.json").read_text(encoding="utf-8"))
    version = json.loads((REPO_ROOT / "configs" / "metadata.json").read_text(encoding="utf-8"))["version"]
    active_learning = active_learning_lines(args, figures)
    studies = (
        f"the first images of `{relative_path(args.images)}`"
        if args.images
        else "synthetic polyps cropped to 256×192 (W×H)"
    )
    head = "image|H×W|mask returned|Dice vs label, MONAI Label|direct bundle run|agreement of the masks".split("|")
    lines = [
        "# MONAI Label 0.8.5 check: measured figures",
        f"Generated on {time.strftime('%Y-%m-%d')} on {cpu_model()} ({os.cpu_count()} cores, "
        f"{platform.machine()}) by `{command}`; do not edit, run the command again.",
        f"Bundle {version}, served by its app `scripts/monailabel_app` (the `monaibundle` sample app plus the scoring "
        f"method and strategy); studies: {studies}. Each mask is MONAI Label's `POST /infer/{BUNDLE_NAME}` answer "
        f"(default writer); the direct run is `configs/inference.json` as configured (backend `{inference['backend']}`, "
        f"tta `{inference['tta']}`). Dice is against the label; the two runs' Dice may differ by at most "
        f"{args.dice_tolerance:g}.",
        markdown_table(head, infer_rows),
        *active_learning[0],
        train,
        active_learning[1],
        "All checks passed.",
    ]
    atomic_write_text(args.write_docs, "\n\n".join(lines) + "\n")
    print(f"figures written to {args.write_docs}")


def install_app(app: Path, work: Path) -> Path:
    """The bundle zip with weights (scripts/package_bundle.py) unpacked into ``app/model``, and the app's files
    (``main.py``, ``lib/``) taken from the unpacked bundle, as docs/monailabel.md sets it up. Returns the bundle."""
    archive = work / "bundle.zip"
    run([sys.executable, str(REPO_ROOT / "scripts" / "package_bundle.py"), "--include-weights", "--output", str(archive)],
        env=repo_env())  # fmt: skip
    with zipfile.ZipFile(archive) as zipped:
        zipped.extractall(app / "model")
    bundle = app / "model" / BUNDLE_NAME
    shutil.copytree(bundle / APP.relative_to(REPO_ROOT), app, dirs_exist_ok=True)
    return bundle


def check_info(info: dict) -> None:
    model_info = info.get("models", {}).get(BUNDLE_NAME)
    models, trainers = sorted(info.get("models", {})), sorted(info.get("trainers", {}))
    scoring, strategies = sorted(info.get("scoring", {})), sorted(info.get("strategies", {}))
    print(f"info: models {models}, trainers {trainers}, scoring {scoring}, strategies {strategies}; {model_info}")
    if not model_info or BUNDLE_NAME not in trainers:
        raise CheckError(f"/info/ lists no {BUNDLE_NAME} model and trainer")
    if SCORING not in scoring or STRATEGY not in strategies:
        raise CheckError(f"/info/ lists no scoring method {SCORING} and strategy {STRATEGY}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--venv", default=str(REPO_ROOT / ".venv-monailabel"), help="side environment (built once)")
    parser.add_argument("--images", help="images/ + masks/ folder to take the studies from (default: synthetic)")
    parser.add_argument("--work_dir", help="folder for the app, studies and outputs (default: a temporary one)")
    parser.add_argument("--dice_tolerance", type=float, default=0.001)
    parser.add_argument(
        "--qc_tolerance", type=float, default=0.001, help="allowed qc_score difference to the direct run"
    )
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
        app = work / "apps" / "lh_utanet_app"
        bundle = install_app(app, work)
        studies_dir = work / "studies"
        studies = make_studies(studies_dir, args.images, work)
        pool = make_pool(studies_dir, args.images, len(studies), work)
        direct, direct_scores = direct_run({**studies, **pool}, work)
        repo_hashes, app_hashes = shipped_hashes(REPO_ROOT), shipped_hashes(bundle)
        server = Server(python, app, studies_dir, torchvision_stand_in(work / "stubs"), work / "server.log")
        check_info(server.wait_until_up())
        infer_rows = check_infer(server, studies, studies_dir / "labels" / "final", direct, args.dice_tolerance, work)
        scoring = check_scoring(server, pool, direct_scores, args.qc_tolerance)
        masks = {image: direct[image].astype(np.uint8) for image in pool}
        sequence = check_next_samples(server, scoring["scores"], direct_scores, args.qc_tolerance, masks)
        train, trained = check_train(server, bundle, repo_hashes, app_hashes)
        rescore = check_rescore(server, bundle, trained, sequence[1:])
        if shipped_hashes(REPO_ROOT) != repo_hashes:
            raise CheckError("the shipped weights in the repository changed")
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
        command = relative_command(["python", "scripts/check_monailabel.py"], sys.argv[1:] if argv is None else argv)
        figures = {"scoring": scoring, "sequence": sequence, "direct": direct_scores, "rescore": rescore}
        write_docs(args, command, infer_rows, train, figures)
    return 0


if __name__ == "__main__":
    sys.exit(run_script(main))
