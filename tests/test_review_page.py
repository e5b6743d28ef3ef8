"""bundle.inference.review_page: thumbnails, the page's embedded data, and the page itself in headless Chromium (rows on the first
page, worst first, the needs-review filter, hostile names, zero successes, 10,000 rows).

``python -m tests.test_review_page screenshot [PATH]`` redraws docs/figures/review_page.png from synthetic images;
``python -m tests.test_review_page benchmark`` times a 10,000-row page in headless Chromium.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from bundle.atomic_files import atomic_write_csv
from bundle.inference.report import REPORT_FIELDS, PredictionReport
from bundle.inference.review_page import (
    COLUMNS,
    THUMBNAIL_DIR,
    review_page_from_report,
    review_thumbnail,
    thumbnail_path,
    write_review_page,
)
from PIL import Image

CHROMIUM = shutil.which("chromium")
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None,
    reason="no `chromium` on PATH: install Debian's chromium (apt-get install chromium) to test review.html",
)
HOSTILE = 'sub/<b id="injected">x</script <i id="injected">&amp;"q\'#%?.png'  # the folder `<b id="injected">x<`
REPO_ROOT = Path(__file__).resolve().parents[1]

# ---------------------------------------------------------------- helpers


def report_row(path: str, qc: float, needs_review: bool = False, **extra: object) -> dict[str, object]:
    """A ``predictions.csv`` row of a segmented 30x40 image."""
    row = {"path": path, "status": "ok", "height": 30, "width": 40, "foreground_fraction": "0.250000"}
    row |= {"components": 1, "mean_foreground_probability": "0.900000", "qc_score": f"{qc:.6f}"}
    return row | {"needs_review": int(needs_review), "mask": path.rsplit(".", 1)[0] + "_mask.png", **extra}


def synthetic_run(out: Path, count: int, thumbnails_below: float = 1.0, seed: int = 0) -> list[dict[str, object]]:
    """``count`` rows of images (HOSTILE the worst, 1 in 5 flagged), thumbnails of those with ``qc_score`` below
    ``thumbnails_below`` (one drawn, the rest its copies), 3 error rows and a video row (``v.mp4``, :func:`video_frames`).
    """
    rng = np.random.default_rng(seed)
    image, mask = rng.integers(0, 255, (30, 40, 3), dtype=np.uint8), np.zeros((30, 40), bool)
    mask[5:20, 10:30] = True
    paths = [HOSTILE] + [f"d{index % 50:02d}/img{index:05d}.png" for index in range(1, count)]
    scores = rng.random(count)
    scores[0] = 0.0001  # the hostile name comes first after the errors
    thumbnail = review_thumbnail(image, mask, thumbnail_path(out, paths[0]))
    for path in (path for path, qc in zip(paths[1:], scores[1:]) if qc < thumbnails_below):
        thumbnail_path(out, path).parent.mkdir(parents=True, exist_ok=True)
        thumbnail_path(out, path).write_bytes(thumbnail.read_bytes())
    rows = [report_row(path, qc, qc < 0.2) for path, qc in zip(paths, scores)]
    rows += [{"path": f"broken{index}.png", "status": f"error: cannot decode <{index}> & stop"} for index in range(3)]
    rows.append({"path": "v.mp4", "status": "ok", "frames": 120, "fps": "30.00", "frames_with_polyp": 40})
    rows[-1] |= {"dropped_frames": 2, "foreground_fraction": "0.05", "mask": "v.frames.csv"}
    return rows


def video_frames(count: int = 120) -> list[dict[str, object]]:
    """Rows of a ``NAME.frames.csv``: a polyp in frames 40-79, ``qc_score`` dipping in the middle, 2 dropped."""
    frames = []
    for index in range(count):
        qc = 0.55 + 0.4 * np.cos(index / count * 2 * np.pi)
        frames.append({"frame": index, "time_s": f"{index / 30:.6f}", "dropped": 0, "polyp": int(40 <= index < 80)})
        frames[-1] |= {"area_fraction": "0.01", "qc_score": f"{qc:.6f}", "latency_ms": "5.0"}
    for index in (100, 101):
        frames[index] = {"frame": index, "time_s": f"{index / 30:.6f}", "dropped": 1}
    return frames


def embedded_data(page: Path) -> dict:
    text = page.read_text(encoding="utf-8")
    block = re.search(r'<script type="application/json" id="data">(.*?)</script>', text, re.S)
    return json.loads(block.group(1))


class Dom(HTMLParser):
    """Elements of a dumped DOM: ``elements`` as (tag, attributes, first text) in document order."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.elements: list[list] = []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.elements.append([tag, dict(attrs), ""])

    def handle_data(self, data):
        if self.elements and not self.elements[-1][2]:
            self.elements[-1][2] = data

    def find(self, tag: str, cls: str = "") -> list[list]:
        return [e for e in self.elements if e[0] == tag and cls in (e[1].get("class") or "").split() + [""]]

    def cards(self) -> list[dict]:
        return [e[1] for e in self.find("div", "card")]


def browse(page: Path, fragment: str = "", budget_ms: int | None = 3000) -> tuple[Dom, float]:
    """``page`` loaded from file:// in headless Chromium: its DOM after ``budget_ms`` of virtual time (None: at its
    load event), and the seconds Chromium took."""
    with tempfile.TemporaryDirectory() as profile:
        budget = [] if budget_ms is None else [f"--virtual-time-budget={budget_ms}"]
        start = time.perf_counter()
        args = chromium(profile, *budget, "--dump-dom", page.resolve().as_uri() + fragment)
        result = subprocess.run(args, capture_output=True, text=True, timeout=120, check=True)
    return Dom(result.stdout), time.perf_counter() - start


def chromium(profile: str, *args: str) -> list[str]:
    """Headless Chromium's command line, with the profile folder ``profile``."""
    flags = ["--headless", "--disable-gpu", "--no-sandbox", "--hide-scrollbars", f"--user-data-dir={profile}"]
    return [CHROMIUM, *flags, *args]


# ---------------------------------------------------------------- thumbnails


def test_thumbnail_outline_fill_size_and_written_once(tmp_path):
    image = np.full((60, 80, 3), 100, np.uint8)
    mask = np.zeros((60, 80), bool)
    mask[10:50, 20:60] = True
    path = review_thumbnail(image, mask, tmp_path / "t.jpg", size=40)
    thumb = np.asarray(Image.open(path)).astype(int)
    assert thumb.shape == (30, 40, 3)
    assert abs(thumb[2, 2] - 100).max() < 8  # outside: the image
    green = (thumb[..., 1] > 200) & (thumb[..., 0] < 90)
    assert green[5, 10:30].mean() > 0.8 and green[24, 10:30].mean() > 0.8  # the outline's top and bottom rows
    assert green[15, 10] and not green[15, 20]  # left edge outlined, the inside only tinted
    assert 130 < thumb[15, 20, 1] < 200 and thumb[15, 20, 0] < 95  # 25% green fill over grey 100
    before = path.read_bytes()
    assert review_thumbnail(image, ~mask, path, size=40) == path and path.read_bytes() == before  # written once
    review_thumbnail(image, ~mask, path, size=40, overwrite=True)
    assert path.read_bytes() != before


def test_thumbnail_names_do_not_collide_and_mirror_the_input(tmp_path):
    image, mask = np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8), bool)
    a_png, a_jpg = thumbnail_path(tmp_path, "sub/a.png"), thumbnail_path(tmp_path, "sub/a.jpg")
    assert a_png == tmp_path / THUMBNAIL_DIR / "sub" / "a.png.jpg" and a_png != a_jpg
    review_thumbnail(image, mask, a_png)
    review_thumbnail(np.full((8, 8), 255, np.uint8), mask, a_jpg)  # grey (H, W) input
    assert np.asarray(Image.open(a_png)).max() < 10 and np.asarray(Image.open(a_jpg)).min() > 245
    assert not list(tmp_path.rglob("*.tmp"))  # atomic: no temporary left


def test_thumbnail_keeps_a_mask_smaller_than_one_of_its_pixels(tmp_path):
    mask = np.zeros((400, 400), bool)
    mask[200, 200] = True
    thumb = np.asarray(Image.open(review_thumbnail(np.zeros((400, 400, 3), np.uint8), mask, tmp_path / "t.jpg", 20)))
    assert thumb.shape[:2] == (20, 20) and thumb[..., 1].max() > 150


def test_thumbnail_failure_is_logged_not_raised_and_bad_shapes_are_refused(tmp_path, caplog):
    (tmp_path / "file").write_text("x")
    image, mask = np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8), bool)
    assert review_thumbnail(image, mask, tmp_path / "file" / "t.jpg") is None  # its folder is a file
    assert "could not write the review thumbnail" in caplog.text
    with pytest.raises(ValueError, match="expected"):
        review_thumbnail(image, np.zeros((8, 9), bool), tmp_path / "t.jpg")
    with pytest.raises(ValueError, match="expected"):
        review_thumbnail(image.astype(np.float32), mask, tmp_path / "t.jpg")


# ---------------------------------------------------------------- the page's data (no browser)


def test_page_data_is_sorted_worst_first_and_hostile_names_cannot_close_the_script(tmp_path):
    rows = [report_row("b.png", 0.7), report_row("a.png", 0.2, True), report_row('x</SCRIPT <b id="y">.png', 0.5)]
    rows += [{"path": "bad.png", "status": "error: cannot decode"}, report_row("noscore.png", 0.0, qc_score="")]
    rows.append(report_row("b.png", 0.1, True))  # a later run re-segmented b.png: its last row wins
    page = write_review_page(tmp_path, rows, None, {"time taken": "<1 s>"})
    text = page.read_text(encoding="utf-8")
    data = embedded_data(page)
    paths = [row[data["columns"].index("path")] for row in data["rows"]]
    assert paths == ["bad.png", "b.png", "a.png", 'x</SCRIPT <b id="y">.png', "noscore.png"]
    assert text.lower().count("</script") == 2 and '<b id="y">' not in text and "&lt;1 s&gt;</b> time taken" in text
    assert "No input was segmented" not in text
    for count in ("5</b> inputs", "4</b> images ok", "1</b> errors", "2</b> needs review"):
        assert count in text
    assert data["rows"][1][data["columns"].index("thumb")] == ""  # no thumbnail file: no link


def test_page_from_report_reads_videos_and_is_rewritten_when_a_rerun_appends(tmp_path):
    report = PredictionReport(tmp_path / "predictions.csv")
    for row in (report_row("a.png", 0.6), {"path": "v.mp4", "status": "ok", "frames": 120, "mask": "v.frames.csv"}):
        report.append(row)
    atomic_write_csv(tmp_path / "v.frames.csv", list(video_frames()[0]), video_frames())
    data = embedded_data(review_page_from_report(tmp_path))
    assert [row[0] for row in data["rows"]] == ["a.png"] and len(data["videos"]) == 1
    video = data["videos"][0]
    assert len(video["bins"]) == 120 and video["bins"][100] == [None, None] and video["bins"][50][1] == 1
    assert video["worst_qc"] == pytest.approx(0.15, abs=1e-3) and video["worst_time"] == pytest.approx(2.0)
    assert video["overlay"] == "v.overlay.mp4" and video["duration"] == pytest.approx(119 / 30, abs=0.01)
    PredictionReport(tmp_path / "predictions.csv").append(report_row("b.png", 0.1, True))  # a re-run appends
    data = embedded_data(review_page_from_report(tmp_path))
    assert [row[0] for row in data["rows"]] == ["b.png", "a.png"]


def test_page_without_report_or_successes_says_so(tmp_path):
    text = review_page_from_report(tmp_path).read_text()
    assert "No input was segmented successfully." in text and "Review of 0 inputs" in text


def test_the_page_reads_the_columns_the_bundle_writes():
    from bundle.video import FRAME_FIELDS  # imported here: it costs seconds

    assert set(COLUMNS) <= set(REPORT_FIELDS)
    assert {"frames", "fps", "frames_with_polyp", "dropped_frames"} <= set(REPORT_FIELDS)
    assert {"time_s", "dropped", "polyp", "qc_score"} <= set(FRAME_FIELDS)


# ---------------------------------------------------------------- the page in a browser


@pytest.fixture(scope="module")
def browsed(tmp_path_factory):
    """Three loads in headless Chromium, run side by side: a page of 10,000 images (3 errors, a video) whose 2nd
    worst image's thumbnail was then removed, as opened and as ``#needs_review&page=2``, and a page of errors only."""
    out, failed = tmp_path_factory.mktemp("review"), tmp_path_factory.mktemp("failed")
    rows = synthetic_run(out, 10_000, thumbnails_below=0.1)  # the thumbnails of the pages opened
    page = write_review_page(out, rows, {"v.mp4": video_frames()}, {"time taken": "1 h 2 min"})
    second = sorted((row for row in rows if row.get("qc_score")), key=lambda row: float(row["qc_score"]))[1]
    thumbnail_path(out, second["path"]).unlink()
    errors = [{"path": f"x{i}.png", "status": f"error: unreadable {i}"} for i in range(3)]
    loads = [(page, ""), (page, "#needs_review&page=2"), (write_review_page(failed, errors, {}, {}), "")]
    with ThreadPoolExecutor(len(loads)) as pool:
        doms = list(pool.map(lambda load: browse(*load), loads))
    return {"rows": rows, "removed": second["path"], "first": doms[0], "filtered": doms[1][0], "failed": doms[2][0]}


def by_id(dom: Dom, name: str) -> list:
    return [e for e in dom.elements if e[1].get("id") == name][0]


@needs_chromium
def test_browser_first_page_worst_first_hostile_name_inert(browsed):
    (dom, seconds), rows = browsed["first"], browsed["rows"]
    cards, body = dom.cards(), dom.find("body")[0][1]
    print(f"\n10,000 rows: first page in {body['data-render-ms']} ms, chromium {seconds:.2f} s (3 pages side by side)")
    assert len(cards) == 200 == int(body["data-rendered"])
    assert [card["data-path"] for card in cards[:4]] == ["broken0.png", "broken1.png", "broken2.png", HOSTILE]
    scores = [float(card["data-qc"]) for card in cards[3:]]
    assert scores == sorted(float(row["qc_score"]) for row in rows if row.get("qc_score"))[:197]
    assert not [e for e in dom.elements if e[1].get("id") == "injected"]  # the name stayed text, the script whole
    assert HOSTILE in [e[2] for e in dom.find("div", "name")]
    images = [e[1]["src"] for e in dom.find("img")]  # a thumbnail that fails to load is replaced by a note
    assert len(images) == 196 and images[0].startswith(".review/sub/%3Cb%20id")  # the hostile name's loaded
    assert [e[2] for e in dom.find("div", "nothumb")] == ["no mask"] * 3 + ["thumbnail missing"]
    assert cards[4]["data-path"] == browsed["removed"]
    assert [e[2] for e in dom.find("div", "err")] == [f"error: cannot decode <{i}> & stop" for i in range(3)]
    assert len(dom.find("div", "video")) == 1 and [e for e in dom.find("path") if e[1].get("d", "").startswith("M")]
    assert by_id(dom, "pages")[2].startswith("page 1 of 51") and "checked" not in by_id(dom, "only")[1]


@needs_chromium
def test_browser_needs_review_filter_hides_the_other_rows(browsed):
    dom, rows = browsed["filtered"], browsed["rows"]
    flagged = [row for row in rows if row.get("needs_review") == 1 or str(row["status"]).startswith("error")]
    cards = dom.cards()
    assert "checked" in by_id(dom, "only")[1]
    assert len(cards) == 200 and all({"review", "error"} & set(card["class"].split()) for card in cards)
    assert not any("broken" in card["data-path"] for card in cards)  # page 2: the errors were on page 1
    pages = by_id(dom, "pages")[2]
    assert f"page 2 of {-(-len(flagged) // 200)}" in pages and f"{len(flagged)} of 10003 inputs" in pages


@needs_chromium
def test_browser_page_of_a_run_without_successes(browsed):
    dom = browsed["failed"]
    assert "all 3 inputs failed" in by_id(dom, "nothing")[2]
    assert len(dom.cards()) == 3 and not dom.find("img") and len(dom.find("div", "err")) == 3


# ---------------------------------------------------------------- screenshot and benchmark (python -m tests.test_review_page)


def demo_run(out: Path, count: int = 48, seed: int = 1) -> Path:
    """A page of ``count`` synthetic endoscopy-like frames (a reddish polyp, a mask of varying quality) and a video."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:240, :320]
    rows = []
    for index in range(count):
        cy, cx, r = rng.uniform(70, 170), rng.uniform(90, 230), rng.uniform(25, 55)
        polyp = (yy - cy) ** 2 + ((xx - cx) / 1.2) ** 2 < r**2
        fall = ((yy - 120) / 130) ** 2 + ((xx - 160) / 170) ** 2  # the endoscope's light falls off to the rim
        folds = 12 * np.sin(xx / 19 + 3 * np.sin(yy / 31 + index)) * np.cos(yy / 27)
        image = np.stack([205 - 110 * fall + folds, 105 - 60 * fall + folds / 2, 95 - 55 * fall + folds / 2], -1)
        image[polyp] = image[polyp] * 0.55 + np.array([235, 120, 105]) * 0.45
        image[(yy - cy + r / 2) ** 2 + (xx - cx - r / 3) ** 2 < (r / 8) ** 2] = 245  # a highlight
        image[fall > 1.05] = 0
        image = (image + rng.normal(0, 3, image.shape)).clip(0, 255).astype(np.uint8)
        error = rng.uniform(0, 1)
        mask = (yy - cy - error * 40) ** 2 + ((xx - cx + error * 30) / 1.2) ** 2 < (r * (1 + error / 2)) ** 2
        path = f"centre_{'ab'[index % 2]}/frame_{index:03d}.jpg"
        review_thumbnail(image, mask, thumbnail_path(out, path))
        qc = float(np.clip(0.95 - 0.8 * error + rng.normal(0, 0.05), 0, 1))
        warning = "grey-scale input; the model was trained on colour images, check this mask" if index == 7 else ""
        rows.append(report_row(path, qc, qc < 0.5, height=240, width=320, warning=warning))
        rows[-1]["foreground_fraction"] = f"{mask.mean():.6f}"
    rows.append({"path": "notes.txt", "status": "error: not an image or video (unsupported extension .txt)"})
    rows.append({"path": "clip.mp4", "status": "ok", "frames": 120, "fps": "41.7", "frames_with_polyp": 40})
    rows[-1] |= {"dropped_frames": 2, "mask": "clip.frames.csv"}
    return write_review_page(out, rows, {"clip.mp4": video_frames()}, {"time taken": "38 s"})


def screenshot(path: Path) -> None:
    with tempfile.TemporaryDirectory() as work, tempfile.TemporaryDirectory() as profile:
        page = demo_run(Path(work))
        shot = Path(work) / "shot.png"
        args = ["--virtual-time-budget=3000", "--window-size=1280,900", f"--screenshot={shot}", page.as_uri()]
        subprocess.run(chromium(profile, *args), capture_output=True, check=True, timeout=120)
        Image.open(shot).convert("RGB").quantize(256, method=Image.Quantize.FASTOCTREE).save(path, optimize=True)
    print(f"{path}: {path.stat().st_size / 1024:.0f} KiB")


def benchmark(repeats: int = 3) -> None:
    with tempfile.TemporaryDirectory() as work:
        out = Path(work)
        rows, started = synthetic_run(out, 10_000), time.perf_counter()
        page = write_review_page(out, rows, {"v.mp4": video_frames()}, {})
        print(f"review.html written in {time.perf_counter() - started:.2f} s ({page.stat().st_size / 2**20:.1f} MiB)")
        blank = out / "blank.html"
        blank.write_text("<!DOCTYPE html><html><body><p>blank</p></body></html>")
        for _ in range(repeats):
            dom, seconds = browse(page, budget_ms=None)
            _, empty = browse(blank, budget_ms=None)
            body = dom.find("body")[0][1]
            print(
                f"10,000 rows: {body['data-render-ms']} ms from navigation to the first page rendered "
                f"({body['data-rendered']} cards); chromium {seconds:.2f} s, blank page {empty:.2f} s"
            )


if __name__ == "__main__":
    if CHROMIUM is None:
        sys.exit("no chromium on PATH")
    if sys.argv[1:2] == ["screenshot"]:
        screenshot(Path(sys.argv[2]) if len(sys.argv) > 2 else REPO_ROOT / "docs" / "figures" / "review_page.png")
    else:
        benchmark()
