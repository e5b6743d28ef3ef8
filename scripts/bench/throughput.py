"""The throughput suite: images/s of the folder inference command (``configs/inference.json`` -> ``evaluator.run()``)
on the 100 Kvasir-SEG test JPGs, for LH-UTANet and MONAI peers through the same pipeline
(``docs/benchmark_throughput.md``)."""

from __future__ import annotations

import json
import resource
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from monai.bundle import ConfigParser

from .latency import ROWS as NETWORK_ROWS
from .measure import Budget, Results, Row, budget_table, build, markdown_table, rounds_cell, value_cell
from .peers import MONAI_PEERS, peer_settings

REPO_ROOT = Path(__file__).resolve().parents[2]
KVASIR = REPO_ROOT.parent / "shared" / "data" / "kvasir-seg"
INFERENCE_CONFIG = REPO_ROOT / "configs" / "inference.json"


def inference_parser(overrides: dict[str, Any]) -> ConfigParser:
    """inference.json from the repository root, on the CPU, with ``overrides``."""
    parser = ConfigParser()
    parser.read_config(str(INFERENCE_CONFIG))
    parser.update({"bundle_root": str(REPO_ROOT), "device": "$torch.device('cpu')", **overrides})
    return parser


def timed_evaluation(parser: ConfigParser) -> tuple[float, list[dict]]:
    """(seconds, report rows) of ``parser``'s evaluator, built (the one-off ONNX export) before the clock starts."""
    seconds, _, report = evaluation_times(parser)
    return seconds, report


def evaluation_times(parser: ConfigParser) -> tuple[float, float, list[dict]]:
    """(seconds, CPU seconds of the process's threads, report rows) of ``parser``'s evaluator, built before."""
    evaluator = parser.get_parsed_content("evaluator")
    seconds, cpu = timed_run(evaluator)
    return seconds, cpu, evaluator.state.report


def cpu_seconds() -> float:
    """User + system CPU seconds of this process (all its threads) and of its finished children."""
    return sum(
        usage.ru_utime + usage.ru_stime
        for usage in map(resource.getrusage, (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    )


def timed_run(evaluator) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of ``evaluator.run()``; the CPU time counts its DataLoader workers (joined at
    the end of the run) and every thread, so that it measures the work, whatever else the machine runs."""
    cpu, start = cpu_seconds(), time.perf_counter()
    evaluator.run()
    return time.perf_counter() - start, cpu_seconds() - cpu


def shipped_image_size() -> list[int]:
    """[H, W] that inference.json runs the shipped models/model.pt at (a plain state_dict: its
    ``plain_checkpoint_defaults``)."""
    return list(inference_parser({}).get_parsed_content("network_settings")["image_size"])


IMAGE_SIZE = shipped_image_size()


@dataclass(frozen=True)
class PipelineRow:
    """A network of the latency suite (its random checkpoint) run through inference.json with ``overrides``."""

    network: str  # latency-suite row key
    label: str
    overrides: dict[str, Any] = field(default_factory=dict)


def _peer(key: str) -> dict[str, Any]:
    """inference.json overrides that run MONAI peer ``key`` (inference.json reads channels from LH-UTANet checkpoints)."""
    settings = peer_settings(IMAGE_SIZE)
    return {
        "network_def": MONAI_PEERS[key].network_def(),
        "network_settings": settings,
        "in_channels": settings["in_channels"],
        "out_channels": settings["out_channels"],
    }


FULL_TTA = {"tta": "flips+scales"}  # random weights: adaptive TTA's choice would mean nothing (the tta suite times it)
PIPELINES: dict[str, PipelineRow] = {
    "lh-mobilenetv2-moe": PipelineRow("lh-mobilenetv2-moe", "auto (ORT), TTA flips+scales, batched", FULL_TTA),
    "lh-mobilenetv2-moe-unbatched": PipelineRow(
        "lh-mobilenetv2-moe",
        "auto (ORT), TTA flips+scales, one forward per member",
        {**FULL_TTA, "inferer#batched": False},
    ),
    "lh-mobilenetv2-moe-notta": PipelineRow("lh-mobilenetv2-moe", "auto (ORT), --tta none", {"tta": "none"}),
    "lh-mobilenetv2-moe-torch": PipelineRow(
        "lh-mobilenetv2-moe", "--backend torch --tta none (0.3.0's default)", {"backend": "torch", "tta": "none"}
    ),
    "lh-resnet34-moe": PipelineRow("lh-resnet34-moe", "auto (ORT), TTA flips+scales, batched", FULL_TTA),
    "lh-resnet34-moe-notta": PipelineRow("lh-resnet34-moe", "auto (ORT), --tta none", {"tta": "none"}),
    "unet-notta": PipelineRow("unet", "auto (ORT), --tta none", {**_peer("unet"), "tta": "none"}),
    "flexibleunet-resnet34-notta": PipelineRow(
        "flexibleunet-resnet34", "auto (ORT), --tta none", {**_peer("flexibleunet-resnet34"), "tta": "none"}
    ),
}

ROWS: dict[str, Row] = {key: NETWORK_ROWS[pipeline.network] for key, pipeline in PIPELINES.items()}

BUDGETS = (
    Budget(
        "mobilenetv2 + MoE, auto, --tta none: images/s", "lh-mobilenetv2-moe-notta", "images_per_s", 40.0, at_least=True
    ),
    Budget("resnet34 + MoE, auto, --tta none: images/s", "lh-resnet34-moe-notta", "images_per_s", 15.0, at_least=True),
)  # the default's (adaptive TTA, the shipped model): the tta suite's budgets


def kvasir_test_images() -> list[Path]:
    """The 100 Kvasir-SEG PraNet test JPGs (``pranet_test_names.txt``), sorted."""
    names = (KVASIR / "pranet_test_names.txt").read_text(encoding="utf-8").split()
    return sorted(KVASIR / "images" / (name if Path(name).suffix else f"{name}.jpg") for name in names)


def inference_settings() -> dict[str, Any]:
    """The inference.json settings the suite keeps."""
    config = json.loads(INFERENCE_CONFIG.read_text(encoding="utf-8"))
    return {key: config[key] for key in ("batch_size", "num_workers", "tta", "tta_scales")}


def measure_throughput(key: str) -> float:
    """Images/s of inference.json's ``evaluator`` on the Kvasir-SEG test JPGs, for pipeline row ``key``, with a
    random checkpoint of the row's network (:func:`folder_images_per_s`)."""
    pipeline = PIPELINES[key]
    with tempfile.TemporaryDirectory(prefix="throughput-") as tmp:
        ckpt = Path(tmp) / "model.pt"
        torch.save(build(ROWS[key]).state_dict(), ckpt)
        return folder_images_per_s({"ckpt_path": str(ckpt), **pipeline.overrides}, Path(tmp))[0]


def folder_images_per_s(overrides: dict[str, Any], work_dir: Path) -> tuple[float, float]:
    """(images/s, CPU ms per image) of inference.json's ``evaluator`` with ``overrides`` (``ckpt_path`` among them)
    on the Kvasir-SEG test JPGs, linked into ``work_dir``, which also takes the outputs and a fresh ONNX cache.

    Builds the evaluator (for ``backend auto``: the one-off ONNX export, not timed) and times its run (worker
    start, decode, resize, model, inversion, post-processing, writing; :func:`timed_run`).
    """
    images, output = work_dir / "images", work_dir / "predictions"
    images.mkdir()
    for source in kvasir_test_images():
        (images / source.name).symlink_to(source.resolve())
    settings = {"dataset_dir": str(images), "output_dir": str(output), "onnx_cache_dir": str(work_dir / "onnx")}
    evaluator = inference_parser({**settings, "image_size": IMAGE_SIZE, **overrides}).get_parsed_content("evaluator")
    seconds, cpu = timed_run(evaluator)
    report = evaluator.state.report
    failed = [row["path"] for row in report if row["status"] != "ok"]
    if failed:
        raise RuntimeError(f"{len(failed)} image(s) not segmented, e.g. {failed[0]}")
    return len(report) / seconds, 1e3 * cpu / len(report)


PROFILE_IMAGES = 20


def stage_profile(threads: int) -> dict[str, float]:
    """Milliseconds per image of each stage of inference.json, in one process with ``threads`` threads, on the
    first PROFILE_IMAGES Kvasir-SEG test JPGs, with the shipped model (ONNX Runtime, backend auto): decode,
    channels, resize, normalise, the model (one pass, batch 1), the default TTA inferer, inversion and
    post-processing, and the PNG write. Each stage is timed on the previous one's outputs."""
    from bundle.atomic_files import write_png
    from bundle.inference.tta import TTAInferer

    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory(prefix="profile-") as tmp:
        parser = inference_parser(
            {"ckpt_path": str(REPO_ROOT / "models" / "model.pt"), "onnx_cache_dir": str(Path(tmp) / "onnx")}
        )
        load, resize, normalize = (
            parser.get_parsed_content(f"{part}_transforms") for part in ("load", "resize", "normalize")
        )
        stages = {"decode": load[:2], "channels": load[2:], "resize": resize, "normalise": normalize}
        predictor, inferer = parser.get_parsed_content("predictor"), parser.get_parsed_content("inferer")
        postprocessing = parser.get_parsed_content("postprocessing")
        plain, unbatched = TTAInferer("none"), TTAInferer(inferer.mode, inferer.scales, batched=False)
        model_stages = ["model, one pass", "model with the default TTA (batched)", "the same, one forward per member"]
        totals = dict.fromkeys([*stages, *model_stages, "invert + post-process", "PNG write"], 0.0)

        def timed(name: str, work):
            start = time.perf_counter()
            result = work()
            totals[name] += time.perf_counter() - start
            return result

        for index, path in enumerate(kvasir_test_images()[:PROFILE_IMAGES]):
            item = {"image": str(path)}
            for name, transforms in stages.items():
                for transform in transforms:
                    item = timed(name, lambda t=transform, i=item: t(i))
            batch = item["image"][None]
            timed(model_stages[0], lambda: plain(batch, predictor))
            timed(model_stages[2], lambda: unbatched(batch, predictor))
            item["pred"] = timed(model_stages[1], lambda: inferer(batch, predictor))[0]
            item = timed("invert + post-process", lambda: postprocessing(item))
            mask = (torch.as_tensor(item["pred"])[0].numpy() > 0).astype("uint8") * 255
            timed("PNG write", lambda: write_png(Path(tmp) / f"{index}.png", mask))
    return {name: 1e3 * total / PROFILE_IMAGES for name, total in totals.items()}


def profile_section(threads: int) -> str:
    """The per-stage profile as a markdown section."""
    profile = stage_profile(threads)
    body = [[name, f"{ms:.1f}"] for name, ms in profile.items()]
    return (
        f"## Where the time goes (per image, {threads} thread(s), one process, shipped model)\n\n"
        + markdown_table(["stage", "ms / image"], body)
        + f"\n\nFrom `scripts/bench/throughput.py`'s `stage_profile` on the first {PROFILE_IMAGES} test JPGs; the "
        "folder command runs decode to normalise in `num_workers` DataLoader processes beside the model.\n"
    )


def results_section(results: Results, rounds: dict[tuple[str, str], list[float]], size: int) -> tuple[str, int]:
    """Results and Budgets sections; also return the number of failed budgets."""
    header = ["Model", "Pipeline", "Params (M)", "Images/s", "ms / image", "× UNet (--tta none)", "Per-round images/s"]
    body = []
    for key, result in results.items():
        ips, times = result["images_per_s"], rounds[key, "pipeline"]
        ref = results.get("unet-notta", {}).get("images_per_s")
        body.append(
            [ROWS[key].name, PIPELINES[key].label, f"{result['params_m']:.2f}", value_cell(ips, times)]
            + [f"{1e3 / ips:.0f}", f"{ips / ref:.2f}" if ref else "—", rounds_cell(times)]
        )
    budgets, failures = budget_table(BUDGETS, results)
    return f"## Results\n\n{markdown_table(header, body)}\n\n{budgets}\n{profile_section(2)}", failures
