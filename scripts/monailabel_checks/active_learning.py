"""Checks of the app's scoring method ``qc_score`` and next-sample strategy ``worst_qc_first`` on a running server
(``scripts/check_monailabel.py``): the stored scores are the bundle's own (``predictions.csv`` of a direct
``configs/inference.json`` run on the same images), the strategy hands the images out in their order, a labelled
image drops out, and after a training the served weights' change makes the scoring re-score every unlabeled image."""

from __future__ import annotations

import io
import shutil
import time
import urllib.parse
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from bundle.data.demo import make_demo_dataset
from PIL import Image, ImageFilter

from .server import CheckError, Server, multipart

SCORING, STRATEGY = "qc_score", "worst_qc_first"
POOL_SIZE = 6


def degrade(image: np.ndarray, index: int) -> np.ndarray:
    """Synthetic image ``index`` of the pool made harder in its own way, so that the pool's scores spread: as is,
    blurred, noisy, low contrast, dark, or with a band of glare."""
    rng = np.random.default_rng(index)
    if index % 6 == 1:
        return np.asarray(Image.fromarray(image).filter(ImageFilter.GaussianBlur(4)))
    pixels = image.astype(np.float32)
    if index % 6 == 2:
        pixels += rng.normal(0, 40, pixels.shape)
    elif index % 6 == 3:
        pixels = pixels.mean() + 0.35 * (pixels - pixels.mean())
    elif index % 6 == 4:
        pixels *= 0.35
    elif index % 6 == 5:
        pixels[:, pixels.shape[1] // 3 : pixels.shape[1] // 2] = 250
    return np.clip(pixels, 0, 255).astype(np.uint8)


def make_pool(folder: Path, images_dir: str | None, skip: int, work: Path) -> dict[str, Path]:
    """Unlabeled studies ``pool<i>.png`` / ``.jpg`` in ``folder`` (no label): synthetic polyps made harder
    (:func:`degrade`) and cropped to 256×192 (W×H), or the ``images_dir`` images after the first ``skip``."""
    if images_dir:
        sources = sorted((Path(images_dir) / "images").iterdir())[skip : skip + POOL_SIZE]
        images = [np.asarray(Image.open(path).convert("RGB")) for path in sources]
    else:
        demo = Path(make_demo_dataset(work / "pool_demo", num_images=POOL_SIZE, size=256, seed=11))
        images = [np.asarray(Image.open(p).convert("RGB"))[32:224] for p in sorted((demo / "images").glob("*.png"))]
        images = [degrade(image, index) for index, image in enumerate(images)]
    pool = {}
    for index, image in enumerate(images):
        path = folder / f"pool{index}{'.jpg' if index % 2 else '.png'}"
        Image.fromarray(image).save(path, quality=95)
        pool[path.stem] = path
    return pool


def order_violations(sequence: Sequence[str], scores: Mapping[str, float], tolerance: float) -> list[str]:
    """The pairs that ``sequence`` (worst first) puts out of the ascending order of ``scores`` by more than
    ``tolerance`` (a pair closer than that may come either way)."""
    return [
        f"{a} ({scores[a]:.6f}) before {b} ({scores[b]:.6f})"
        for i, a in enumerate(sequence)
        for b in sequence[i + 1 :]
        if scores[a] > scores[b] + tolerance
    ]


def worst_order(scores: Mapping[str, float]) -> list[str]:
    """Ids by ascending score, ties by id: the order worst_qc_first hands out images none of which was handed out."""
    return sorted(scores, key=lambda image: (scores[image], image))


def stored_scores(server: Server, images: Sequence[str]) -> dict[str, dict]:
    """The datastore infos of ``images`` (``GET /datastore/image/info``)."""
    return {image: server.get_json("/datastore/image/info", image=image) for image in images}


def wait_for_scoring(server: Server, quiet_s: float = 3, timeout: float = 900) -> float:
    """Wait until no scoring task ran for ``quiet_s`` seconds in a row (MONAI Label starts one at start-up and queues
    one after each next-sample request and each training); returns the seconds waited."""
    start = quiet_since = time.monotonic()
    while time.monotonic() - quiet_since < quiet_s:
        if server.running("scoring"):
            quiet_since = time.monotonic()
        if time.monotonic() - start > timeout:
            raise CheckError(f"scoring tasks still ran after {timeout:.0f} s; log:\n{server.tail()}")
        time.sleep(0.5)
    return time.monotonic() - start


def next_sample(server: Server, **params: object) -> dict:
    answer = server.post_json(f"/activelearning/{STRATEGY}", params)
    if not answer.get("id"):
        raise CheckError(f"/activelearning/{STRATEGY} returned no image: {answer}")
    return answer


def save_label(server: Server, image: str, mask: np.ndarray) -> None:
    """``PUT /datastore/label`` of ``mask`` (0/1 PNG) as ``image``'s final label, as a viewer saves a correction."""
    buffer = io.BytesIO()
    Image.fromarray(mask.astype(np.uint8)).save(buffer, format="PNG")
    body, content_type = multipart({"params": "{}"}, "label", f"{image}.png", buffer.getvalue())
    query = urllib.parse.urlencode({"image": image, "tag": "final"})
    server.request("PUT", f"/datastore/label?{query}", data=body, headers={"Content-Type": content_type})


def check_scoring(server: Server, pool: Mapping[str, Path], direct: Mapping[str, float], tolerance: float) -> dict:
    """``POST /scoring/qc_score`` (synchronous) once MONAI Label's start-up scoring has ended: every pool image
    scored (then or now, with the served weights), each stored score within ``tolerance`` of the direct run's
    ``qc_score``. Returns the summary, the stored scores and the figures."""
    direct = {image: direct[image] for image in pool}
    wait_for_scoring(server)
    at_start = sum(SCORING in info for info in stored_scores(server, list(pool)).values())
    print(f"scoring at start-up (MONAI Label's automatic scoring): {at_start} of {len(pool)} pool images scored")
    start = time.monotonic()
    summary = server.post_json(f"/scoring/{SCORING}?run_sync=true", {"device": "cpu"})
    seconds = time.monotonic() - start
    infos = stored_scores(server, list(pool))
    scores = {image: info.get(SCORING) for image, info in infos.items()}
    differences = {image: abs(scores[image] - direct[image]) for image in pool if scores[image] is not None}
    largest = max(differences.values(), default=float("nan"))
    print(
        f"scoring: POST /scoring/{SCORING} in {seconds:.1f} s: {summary}; stored qc_score "
        f"{ {image: scores[image] for image in worst_order(direct)} }; direct run (predictions.csv) "
        f"{ {image: direct[image] for image in worst_order(direct)} }; largest difference {largest:.2g}",
        flush=True,
    )
    if summary.get("scored", 0) + summary.get("skipped", 0) != len(pool) or summary.get("failed"):
        raise CheckError(f"the scoring did not cover all {len(pool)} unlabeled images: {summary}")
    if any(info.get("qc_score_model_sha256") != summary.get("model_sha256") for info in infos.values()):
        raise CheckError(f"stored infos lack the weights' sha256 {summary.get('model_sha256')}: {infos}")
    if len(differences) != len(pool) or largest > tolerance:
        raise CheckError(f"stored qc_score differs from the direct run's by more than {tolerance}: {differences}")
    return {"summary": summary, "scores": scores, "seconds": seconds, "largest": largest, "at_start": at_start}


def check_next_samples(server: Server, scores: Mapping[str, float], direct: Mapping[str, float], tolerance: float,
                       masks: Mapping[str, np.ndarray]) -> list[str]:  # fmt: skip
    """``POST /activelearning/worst_qc_first`` once, a label saved for the image it names, then once per remaining
    image: the images in ascending stored ``qc_score`` (and the direct run's order within ``tolerance``), the
    labelled one never again; one more call, with all handed out, starts over at the worst. Returns the sequence."""
    expected = worst_order(scores)
    first = next_sample(server)["id"]
    save_label(server, first, masks[first])
    print(f"next sample: {first} (the lowest qc_score); its label saved as final (PUT /datastore/label)")
    sequence = [first] + [next_sample(server)["id"] for _ in range(len(scores) - 1)]
    again = next_sample(server)
    print(f"next samples: {sequence}; expected (stored qc_score, ascending) {expected}; then {again['id']}")
    violations = order_violations(sequence, direct, tolerance)
    if sequence != expected or violations:
        raise CheckError(f"{STRATEGY} order {sequence}, expected {expected}; against the direct run: {violations}")
    if again["id"] != expected[1]:
        raise CheckError(f"with every image handed out, {STRATEGY} gave {again['id']}, not {expected[1]}")
    return sequence


def check_rescore(server: Server, bundle: Path, trained: Path, unlabeled: Sequence[str]) -> dict:
    """The loop's last step: the training's checkpoint served as ``models/model.pt`` (in the app's copy of the
    bundle), ``POST /scoring/qc_score`` without ``force`` re-scores every unlabeled image (new sha256), and
    worst_qc_first (``reserve_s`` 0) names the lowest new score."""
    wait_for_scoring(server)
    shutil.copy(trained, bundle / "models" / "model.pt")
    summary = server.post_json(f"/scoring/{SCORING}?run_sync=true", {"device": "cpu"})
    scores = {image: info.get(SCORING) for image, info in stored_scores(server, unlabeled).items()}
    first = next_sample(server, reserve_s=0)["id"]
    print(f"re-score with {trained.relative_to(bundle)} served as models/model.pt: {summary}; stored {scores}; "
          f"next sample {first}")  # fmt: skip
    if summary.get("scored") != len(unlabeled) or summary.get("skipped") or summary.get("failed"):
        raise CheckError(f"new weights must re-score all {len(unlabeled)} unlabeled images: {summary}")
    if None in scores.values() or first != worst_order(scores)[0]:
        raise CheckError(f"after re-scoring, {STRATEGY} gave {first} for the scores {scores}")
    return {"summary": summary, "scores": scores, "first": first}
