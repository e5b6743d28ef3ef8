"""``OUT/review.html``: one static page to review a folder or video run's masks, worst ``qc_score`` first.

Self-contained (inline CSS and JS, no server, no network; thumbnails are relative links into ``OUT/.review/``): a
summary (counts, time taken); each video as a strip of its frames' ``qc_score`` and polyp presence over time (lowest
mean ``qc_score`` first); a grid of the inputs, errors first (their reason), then lowest ``qc_score`` first, with
thumbnail, status, warning and mask statistics, 200 a page, and a "needs review only" filter (flagged masks and errors;
``review.html#needs_review`` opens it filtered, ``#page=N`` on page N). Rows are embedded as JSON (``<`` escaped)
and drawn with ``textContent``: no name can inject markup.

- :func:`review_thumbnail`: (H, W, 3) or (H, W) uint8 image, (H, W) bool mask -> ``OUT/.review/<input path>.jpg``
  (:func:`thumbnail_path`; ``a.png`` -> ``a.png.jpg``, ``a.jpg`` -> ``a.jpg.jpg``), longest side ``size``, once.
- :func:`write_review_page`: ``rows`` of ``predictions.csv`` (a path's last row wins), ``videos`` (a video row's
  ``path`` -> the rows of its ``NAME.frames.csv``), ``summary`` (extra "label: value" facts, e.g. time taken).
- :func:`review_page_from_report`: the same from the files in ``OUT``; a re-run that appends rows updates the page.
"""

from __future__ import annotations

import csv
import html
import json
import logging
import math
import os
import re
from collections.abc import Mapping, Sequence
from io import StringIO
from pathlib import Path
from urllib.parse import quote

import numpy as np
from PIL import Image

from ..atomic_files import atomic_write, atomic_write_text
from .report import REPORT_NAME

logger = logging.getLogger(__name__)

PAGE_NAME, THUMBNAIL_DIR = "review.html", ".review"
COLUMNS = ("path", "status", "warning", "qc_score", "needs_review", "height", "width", "foreground_fraction")
COLUMNS += ("components", "mean_foreground_probability", "mask")  # of bundle.inference.report.REPORT_FIELDS
PAGE_ROWS, STRIP_BINS = 200, 400  # grid rows a page; at most this many bins of frames in a video's strip
OUTLINE, FILL = np.array((0, 255, 0), np.uint8), 0.25  # green as the overlays; opacity of the mask's fill
Row = Mapping[str, object]
Videos = Mapping[str, Sequence[Row]]


def thumbnail_path(output_dir: str | os.PathLike, relative: str) -> Path:
    """``OUT/.review/<relative>.jpg`` of the input at ``relative`` (its report ``path``)."""
    return Path(output_dir) / THUMBNAIL_DIR / f"{relative}.jpg"


def review_thumbnail(
    image: np.ndarray, mask: np.ndarray, path: str | os.PathLike, size: int = 160, overwrite: bool = False
) -> Path | None:
    """Write ``path`` (JPEG): (H, W, 3) or (H, W) uint8 ``image`` with (H, W) ``mask``'s outline and a faint fill in
    green, longest side ``size`` (never enlarged); kept when it exists unless ``overwrite``, written atomically.

    Returns ``path``, or None when it could not be written (logged: a thumbnail never costs the mask).
    """
    path, image, mask = Path(path), np.asarray(image), np.asarray(mask).astype(bool)
    if path.exists() and not overwrite:
        return path
    image = image[..., 0] if image.ndim == 3 and image.shape[2] == 1 else image
    if image.dtype != np.uint8 or image.ndim not in (2, 3) or image.shape[:2] != mask.shape:
        raise ValueError(f"expected an (H, W, 3) uint8 image and an (H, W) mask, got {image.shape} and {mask.shape}")
    scale = min(1.0, size / max(mask.shape))
    shape = (max(1, round(mask.shape[1] * scale)), max(1, round(mask.shape[0] * scale)))  # PIL's (w, h)
    rgb = np.array(Image.fromarray(image).convert("RGB").resize(shape, Image.Resampling.BILINEAR, reducing_gap=2.0))
    small = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize(shape, Image.Resampling.BOX)) >= 128
    if mask.any() and not small.any():  # a mask smaller than a thumbnail pixel still shows
        rows, columns = np.nonzero(mask)
        small[(rows * scale).astype(int).clip(0, shape[1] - 1), (columns * scale).astype(int).clip(0, shape[0] - 1)] = 1
    rgb[small] = (rgb[small] * (1 - FILL) + OUTLINE * FILL).astype(np.uint8)
    inner = np.pad(small, 1)
    inner = inner[1:-1, 1:-1] & inner[:-2, 1:-1] & inner[2:, 1:-1] & inner[1:-1, :-2] & inner[1:-1, 2:]
    rgb[small & ~inner] = OUTLINE  # the outline: the mask minus its erosion, the image edge closing it
    try:
        atomic_write(path, lambda tmp: Image.fromarray(rgb).save(tmp, format="JPEG", quality=85, subsampling=0))
    except OSError as error:
        logger.warning("%s: could not write the review thumbnail: %s", path, error)
        return None
    return path


def _number(value: object) -> float | None:
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _is_error(row: Row) -> bool:
    return str(row.get("status", "")).startswith("error")


def _is_video(row: Row, videos: Mapping[str, object]) -> bool:
    return str(row.get("path", "")) in videos or str(row.get("mask", "")).endswith(".frames.csv")


def review_counts(rows: Sequence[Row], videos: Mapping[str, object]) -> dict[str, int]:
    """The summary's counts over the current rows (one per path)."""
    counts = dict.fromkeys(("inputs", "images ok", "videos ok", "skipped", "errors", "needs review"), 0)
    for row in rows:
        ok = "videos ok" if _is_video(row, videos) else "images ok"
        counts["errors" if _is_error(row) else ok if row.get("status") == "ok" else "skipped"] += 1
        counts["needs review"] += str(row.get("needs_review", "")) == "1"
    return counts | {"inputs": len(rows)}


def _video_entry(row: Row, frames: Sequence[Row]) -> dict:
    """A video's strip: per bin of frames the lowest ``qc_score`` and the share of frames with a polyp (None: none
    scored / all dropped), the mean and worst ``qc_score``, and its facts."""
    scored = [(_number(f.get("qc_score")), _number(f.get("time_s")) or 0.0) for f in frames]
    scored = [(qc, time) for qc, time in scored if qc is not None]
    bins, count, width = [], len(frames), min(STRIP_BINS, len(frames))
    for part in (frames[b * count // width : (b + 1) * count // width] for b in range(width)):
        qcs = [q for q in (_number(f.get("qc_score")) for f in part) if q is not None]
        kept = [_number(f.get("polyp")) for f in part if str(f.get("dropped", "0")) != "1"]
        polyp = [p for p in kept if p is not None]
        bins.append([round(min(qcs), 4) if qcs else None, round(sum(polyp) / len(polyp), 3) if polyp else None])
    fields = ("path", "status", "warning", "frames", "fps", "frames_with_polyp", "dropped_frames", "mask")
    entry = {key: str(row.get(key, "") or "") for key in fields}
    worst, mask = min(scored, default=(None, None)), entry.pop("mask")
    return entry | {
        "duration": round(max((_number(f.get("time_s")) or 0.0 for f in frames), default=0.0), 2),
        "mean_qc": round(sum(q for q, _ in scored) / len(scored), 4) if scored else None,
        "worst_qc": worst[0],
        "worst_time": worst[1],
        "bins": bins,
        "csv": quote(mask),
        "overlay": quote(mask[: -len(".frames.csv")] + ".overlay.mp4") if mask.endswith(".frames.csv") else "",
    }


def _grid_order(row: Row) -> tuple:
    qc = _number(row.get("qc_score"))
    return (0 if _is_error(row) else 1 if qc is not None else 2, qc or 0.0, str(row.get("path", "")))


def write_review_page(
    output_dir: str | os.PathLike, rows: Sequence[Row], videos: Videos | None = None, summary: Row | None = None
) -> Path:
    """Write ``OUT/review.html`` atomically from ``rows`` (dicts of ``predictions.csv``'s columns) and ``videos``
    (a video row's ``path`` -> its frames' rows, ``NAME.frames.csv``); ``summary``: extra facts shown on top."""
    output_dir, videos = Path(output_dir), videos or {}
    latest = list({str(row.get("path", "")): row for row in rows}.values())
    clips = [_video_entry(row, videos.get(str(row.get("path")), [])) for row in latest if _is_video(row, videos)]
    clips = [clip for clip in clips if not clip["status"].startswith("error")]
    clips.sort(key=lambda clip: (clip["mean_qc"] is None, clip["mean_qc"] or 0.0, clip["path"]))
    table = []
    for row in sorted((row for row in latest if _is_error(row) or not _is_video(row, videos)), key=_grid_order):
        values = [str(row.get(column, "") or "") for column in COLUMNS]
        has_thumbnail = not _is_error(row) and thumbnail_path(output_dir, values[0]).is_file()
        values[-1] = quote(values[-1])  # the mask's link
        table.append(values + [quote(f"{THUMBNAIL_DIR}/{values[0]}.jpg") if has_thumbnail else ""])
    data = {"columns": [*COLUMNS, "thumb"], "rows": table, "videos": clips, "pageRows": PAGE_ROWS}
    text = json.dumps(data, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    parts = {
        "TITLE": html.escape(f"Review: {output_dir.resolve().name}"),
        "SUMMARY": _summary_html(review_counts(latest, videos), summary or {}),
        "DATA": text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026"),
    }
    atomic_write_text(output_dir / PAGE_NAME, re.sub("@(TITLE|SUMMARY|DATA)@", lambda m: parts[m.group(1)], TEMPLATE))
    return output_dir / PAGE_NAME


def _summary_html(counts: dict[str, int], extra: Row) -> str:
    facts = [*counts.items(), *extra.items()]
    spans = "".join(
        f"<span><b>{html.escape(str(value))}</b> {html.escape(str(label))}</span>" for label, value in facts
    )
    failed = f": all {counts['inputs']} inputs failed; their reasons are listed below" if counts["inputs"] else ""
    alert = f'<p class="alert" id="nothing">No input was segmented successfully{failed}.</p>'
    alert = alert if counts["images ok"] + counts["videos ok"] + counts["skipped"] == 0 else ""
    return f'<h1>Review of {counts["inputs"]} inputs</h1>\n<p class="summary">{spans}</p>{alert}'


def _read_csv(path: Path) -> list[dict[str, str]]:
    """Rows of CSV ``path`` ([] when absent or unreadable, logged); a last line cut short by a kill is dropped."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        if not isinstance(error, FileNotFoundError):
            logger.warning("%s: could not read it for the review page: %s", path, error)
        return []
    return [dict(row) for row in csv.DictReader(StringIO(text[: text.rfind("\n") + 1]))]


def review_page_from_report(output_dir: str | os.PathLike, summary: Row | None = None) -> Path:
    """Rewrite ``OUT/review.html`` from ``OUT/predictions.csv`` and each video's ``NAME.frames.csv`` it names (no
    report: a page that says no input was segmented); ``summary`` as :func:`write_review_page`'s."""
    output_dir = Path(output_dir)
    rows = _read_csv(output_dir / REPORT_NAME)
    masks = {row.get("path", ""): str(row.get("mask") or "") for row in rows}  # a path's last row wins
    videos = {path: _read_csv(output_dir / mask) for path, mask in masks.items() if mask.endswith(".frames.csv")}
    return write_review_page(output_dir, rows, videos, summary)


TEMPLATE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width"><title>@TITLE@</title>
<style>
body{font:14px system-ui,sans-serif;margin:16px;color:#222;background:#fafafa}h1{font-size:20px;margin:0 0 8px}
h2{font-size:16px;margin:14px 0 6px}.summary span{display:inline-block;margin:0 16px 4px 0}.summary b{font-size:18px}
.alert{background:#fde2e1;border:1px solid #d99;padding:8px;font-weight:600}.controls button{margin:0 6px}
.controls{position:sticky;top:0;background:#fafafa;padding:6px 0;z-index:1}.name{font-weight:600}
#grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(190px,1fr));gap:8px}.warn{color:#8a4b00}
.card,.video{background:#fff;border:1px solid #ddd;border-radius:6px;padding:6px;font-size:12px;overflow-wrap:anywhere}
.card.review{border:2px solid #e69500}.card.error{border:2px solid #c62828;background:#fff6f6}.err{color:#c62828}
.card img,.nothumb{display:block;width:100%;height:150px;object-fit:contain;background:#222;color:#bbb}
.nothumb{display:flex;align-items:center;justify-content:center}.video{margin-bottom:8px}.legend{color:#666}
.video svg{display:block;width:100%;height:56px;background:#f1f1f1;margin:4px 0}.video a{margin-right:12px}
</style></head><body>
@SUMMARY@
<noscript><p class="alert">This page draws its rows with JavaScript: allow scripts for this file.</p></noscript>
<section id="videos"></section><h2>Inputs: errors first, then lowest qc_score first</h2>
<div class="controls"><label><input type="checkbox" id="only"> needs review only (flagged masks and errors)</label>
<button id="prev">&lsaquo; previous</button><span id="pages"></span><button id="next">next &rsaquo;</button></div>
<div id="grid"></div>
<script type="application/json" id="data">@DATA@</script>
<script>
"use strict";
const D = JSON.parse(document.getElementById("data").textContent), K = {}, $ = (id) => document.getElementById(id);
D.columns.forEach((column, i) => (K[column] = i));
function el(tag, cls, text, parent) {
  const e = Object.assign(document.createElement(tag), { className: cls }, text === undefined ? {} : { textContent: text });
  return parent ? parent.appendChild(e) : e;
}
const isError = (r) => r[K.status].startsWith("error"), flagged = (r) => r[K.needs_review] === "1" || isError(r);
const dash = (v) => (v === "" || v === null ? "\\u2013" : v), dot = " \\u00b7 ";
function card(r) {
  const c = el("div", "card" + (isError(r) ? " error" : flagged(r) ? " review" : ""));
  [c.dataset.path, c.dataset.qc] = [r[K.path], r[K.qc_score]];
  if (r[K.thumb]) {
    const a = el("a", "", undefined, c), img = el("img", "", undefined, a);
    [a.href, img.loading, img.alt] = [r[K.mask] || r[K.thumb], "lazy", "mask outline"];
    img.onerror = () => img.replaceWith(el("div", "nothumb", "thumbnail missing"));
    img.src = r[K.thumb];
  } else el("div", "nothumb", isError(r) ? "no mask" : "no thumbnail", c);
  el("div", "name", r[K.path], c);
  if (isError(r)) return el("div", "err", r[K.status], c).parentNode;
  const review = r[K.needs_review] === "1" ? ["needs review"] : [];
  el("div", "", [r[K.status], "qc_score " + dash(r[K.qc_score])].concat(review).join(dot), c);
  if (r[K.height]) {
    const share = r[K.foreground_fraction] ? (100 * r[K.foreground_fraction]).toFixed(1) + "%" : "\\u2013";
    el("div", "", `${r[K.width]}\\u00d7${r[K.height]} px${dot}mask ${share}${dot}${dash(r[K.components])} region(s)`, c);
    el("div", "", "mean foreground probability " + dash(r[K.mean_foreground_probability]), c);
  }
  if (r[K.warning]) el("div", "warn", r[K.warning], c);
  return c;
}
function render() {
  const only = $("only").checked, rows = only ? D.rows.filter(flagged) : D.rows;
  const pages = Math.max(1, Math.ceil(rows.length / D.pageRows));
  page = Math.min(Math.max(page, 0), pages - 1);
  const cards = rows.slice(page * D.pageRows, (page + 1) * D.pageRows).map(card);
  $("grid").replaceChildren(...(cards.length ? cards : [el("p", "", only ? "No input needs review." : "No input.")]));
  $("pages").textContent = `page ${page + 1} of ${pages}${dot}${rows.length} of ${D.rows.length} inputs`;
  [$("prev").disabled, $("next").disabled] = [page === 0, page >= pages - 1];
  $("only").toggleAttribute("checked", only);  // shown by the DOM too
  const hash = [only ? "needs_review" : "", page ? "page=" + (page + 1) : ""].filter(Boolean).join("&");
  try { history.replaceState(null, "", location.pathname + location.search + (hash ? "#" + hash : "")); } catch (e) {}
  [document.body.dataset.rendered, document.body.dataset.renderMs] = [cards.length, performance.now().toFixed(0)];
}
function svg(parent, tag, attributes) {
  const e = parent.appendChild(document.createElementNS("http://www.w3.org/2000/svg", tag));
  Object.entries(attributes).forEach(([key, value]) => e.setAttribute(key, value));
  return e;
}
function videoCard(v) {
  const c = el("div", "video"), worst = v.worst_qc === null ? "" : ` (worst ${v.worst_qc} at ${v.worst_time} s)`;
  c.dataset.path = v.path;
  el("div", "name", v.path, c);
  const facts = [v.status, `${dash(v.frames)} frames, ${v.duration} s`, `${dash(v.fps)} frames/s`];
  facts.push(`polyp in ${dash(v.frames_with_polyp)}`, `${dash(v.dropped_frames)} dropped`);
  el("div", "", facts.concat(`mean qc_score ${dash(v.mean_qc)}${worst}`).join(dot), c);
  if (v.warning) el("div", "warn", v.warning, c);
  if (!v.bins.length) el("div", "err", "no per-frame report (NAME.frames.csv) found", c);
  else {
    const s = svg(c, "svg", { viewBox: `0 0 ${v.bins.length} 50`, preserveAspectRatio: "none" }), d = ["", "", ""];
    v.bins.forEach(([q, p], i) => {
      if (p !== 0) d[p === null ? 2 : 1] += `M${i} 42h1v8h-1z`;
      if (q !== null) d[0] += (i && v.bins[i - 1][0] !== null ? "L" : "M") + `${i + 0.5} ${(2 + 36 * (1 - q)).toFixed(2)}`;
    });
    [svg(s, "path", { d: d[1], fill: "#2e7d32" }), svg(s, "path", { d: d[2], fill: "#999" })];
    svg(s, "path", { d: d[0], fill: "none", stroke: "#1565c0", "stroke-width": 1.5, "vector-effect": "non-scaling-stroke" });
    el("div", "legend", `0 to ${v.duration} s${dot}blue: qc_score (top 1, bottom 0)${dot}green: polyp${dot}grey: dropped`, c);
  }
  for (const [label, href] of [["overlay video", v.overlay], ["frames.csv", v.csv]]) if (href) el("a", "", label, c).href = href;
  return c;
}
if (D.videos.length) el("h2", "", `Videos: lowest mean qc_score first (${D.videos.length})`, $("videos"));
$("videos").append(...D.videos.map(videoCard));
const params = new URLSearchParams(location.hash.slice(1));
let page = (parseInt(params.get("page"), 10) || 1) - 1;
$("only").checked = params.has("needs_review");
[$("only").onchange, $("prev").onclick, $("next").onclick] = [() => render((page = 0)), () => render(page--), () => render(page++)];
render();
</script></body></html>
"""
