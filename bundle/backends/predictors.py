"""Inference backends: the trained network as a module (B, C, H, W) -> logits (B, out_channels, H, W), from a torch
checkpoint, TorchScript or ONNX Runtime, and the ONNX export."""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch
from monai.bundle import ConfigParser
from monai.data import MetaTensor
from monai.transforms import MeanEnsemble
from torch import nn

from ..atomic_files import atomic_write, sha256_of
from ..errors import CheckpointError, MissingFileError, SettingError
from ..formats import error_reason
from ..training.checkpoints import SHAPE_SETTINGS, read_network_settings, read_state_dict
from . import onnx_cache

logger = logging.getLogger(__name__)

BACKENDS: tuple[str, ...] = ("auto", "torch", "torchscript", "onnx", "onnx-int8")


EPS = 1e-6  # probabilities are clamped to [EPS, 1 - EPS] before their logits are taken


def probabilities(logits: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) logits -> probabilities: sigmoid for one channel, softmax over channels otherwise."""
    return torch.sigmoid(logits) if logits.shape[1] == 1 else torch.softmax(logits, dim=1)


def logits_of(probs: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`probabilities` (up to a constant per pixel for softmax), clamped away from 0 and 1."""
    probs = probs.clamp(EPS, 1 - EPS)
    return torch.logit(probs) if probs.shape[1] == 1 else torch.log(probs)


def load_network(network: nn.Module, ckpt_path: str | os.PathLike) -> nn.Module:
    """Load the weights at ``ckpt_path`` strictly into ``network``; return it in eval mode.

    On a mismatch the ValueError names the network settings the checkpoint needs.
    """
    state = read_state_dict(ckpt_path)
    try:
        network.load_state_dict(state, strict=True)
    except RuntimeError as error:
        settings = read_network_settings(ckpt_path)
        needed = " ".join(f"--{key} {settings[key]}" for key in SHAPE_SETTINGS)
        raise CheckpointError(f"{ckpt_path} does not fit network_def; it needs: {needed}.") from error
    return network.eval()


def network_for_checkpoint(config: ConfigParser, ckpt_path: str | os.PathLike) -> tuple[nn.Module, dict[str, object]]:
    """The network that ``config``'s ``network_def`` (inference.json's) builds for ``ckpt_path``, from the checkpoint's
    ``network_settings``, with the weights loaded (eval mode); and those settings."""
    config["ckpt_path"] = str(Path(ckpt_path).absolute())
    settings = config.get_parsed_content("network_settings")
    return load_network(config.get_parsed_content("network_def"), ckpt_path), settings


class Predictor(nn.Module):
    """A backend as the module MONAI's engines call: (B, C, H, W) image batch -> logits MetaTensor (B, K, H, W).

    The model sees a plain tensor (MetaTensor tracking costs time on every operation, and TorchScript and ONNX
    Runtime take none); the logits come back as a MetaTensor, so that ``Invertd`` can undo the preprocessing.
    """

    def __init__(self, model: nn.Module | None = None) -> None:
        super().__init__()
        self.model = model

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images)

    def forward(self, images: torch.Tensor) -> MetaTensor:
        plain = images.as_tensor() if isinstance(images, MetaTensor) else images
        return MetaTensor(self.predict(plain))


class OnnxPredictor(Predictor):
    """ONNX Runtime on the CPU (all graph optimisations); logits come back on the input's device.

    Its threads do not spin while waiting for work (``allow_spinning`` 0): in folder inference the DataLoader's
    decoding processes share the cores with it, and spinning threads take their time. It runs as many intra-op
    threads as torch (``OMP_NUM_THREADS``), so that N torchrun ranks with ``OMP_NUM_THREADS=1`` use N cores.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        super().__init__()
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.intra_op_num_threads = torch.get_num_threads()
        self.session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        logits = self.session.run(None, {self.input_name: images.detach().cpu().numpy()})[0]
        return torch.from_numpy(logits).to(images.device)


def onnx_runtime_available() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def cached_onnx_export(
    network: nn.Module,
    ckpt_path: str | os.PathLike,
    cache_dir: str | os.PathLike,
    probe_size: Sequence[int],
    atol: float = 1e-3,
) -> Path:
    """The ONNX export of ``network`` (with ``ckpt_path`` loaded) in ``cache_dir``, made once per checkpoint.

    The file is named by the checkpoint's sha256 and the torch version, so a retrained checkpoint gets its own. A
    new export (traced at batch 1) is written to a temporary file, run by ONNX Runtime on a probe batch of 2 at
    ``probe_size`` (H, W), so that a graph with a fixed batch size fails here, and compared with torch; only an
    export whose logits agree within ``atol`` is renamed into place. ValueError when it fails or they do not agree
    (nothing is kept).
    """
    digest = sha256_of(ckpt_path)[:16]
    path = Path(cache_dir) / f"{Path(ckpt_path).stem}-{digest}-torch{torch.__version__.split('+')[0]}.onnx"
    with onnx_cache.locked(cache_dir):
        if onnx_cache.is_verified(path):
            return path
        fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".onnx")
        os.close(fd)
        unverified = Path(name)
        try:
            in_channels = next(network.parameters()).shape[1]
            export_onnx(network, unverified, probe_size, in_channels)
            difference = onnx_difference(network, unverified, ckpt_path, probe_size)
            if difference > atol:
                raise ValueError(f"the ONNX export of {ckpt_path} differs from torch by {difference:.2g} (> {atol})")
            os.replace(unverified, path)
            onnx_cache.record_sha256(path)
            logger.info("exported %s to ONNX for backend auto: %s (max |difference| %.1e)", ckpt_path, path, difference)
        finally:
            unverified.unlink(missing_ok=True)
    return path


def onnx_difference(network: nn.Module, onnx_path: Path, ckpt_path: str | os.PathLike, size: Sequence[int]) -> float:
    """Largest |logit difference| between ``network`` and its ONNX export on a probe batch of 2 at ``size`` (H, W);
    ValueError when ONNX Runtime cannot run the export (e.g. a batch size fixed at export)."""
    in_channels = next(network.parameters()).shape[1]
    probe = torch.rand(2, in_channels, *size, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        expected = network(probe.to(next(network.parameters()).device)).cpu()
    try:
        exported = OnnxPredictor(onnx_path).predict(probe)
    except Exception as error:  # onnxruntime raises its own error types
        raise ValueError(f"the ONNX export of {ckpt_path} does not run on a probe batch: {error}") from error
    return float((exported - expected).abs().max())


def load_predictor(
    backend: str,
    device: torch.device | str,
    network: nn.Module,
    ckpt_path: str | os.PathLike,
    ts_path: str | os.PathLike,
    onnx_path: str | os.PathLike,
    onnx_cache_dir: str | os.PathLike | None = None,
    probe_size: Sequence[int] = (128, 128),
    int8_path: str | os.PathLike | None = None,
) -> Predictor:
    """The model as a :class:`Predictor`.

    ``backend``: "auto" (ONNX Runtime on a CPU when onnxruntime is installed, from :func:`cached_onnx_export` of
    ``ckpt_path`` into ``onnx_cache_dir``; else, or when that export fails its check, "torch"), "torch"
    (``network`` with ``ckpt_path`` loaded strictly, for CUDA with AMP), "torchscript" (``ts_path``), "onnx"
    (``onnx_path``, ONNX Runtime on the CPU) or "onnx-int8" (``int8_path``, a ``scripts/quantize.py`` model).
    """
    if backend == "auto":
        if torch.device(device).type != "cpu" or not onnx_runtime_available():
            return load_predictor("torch", device, network, ckpt_path, ts_path, onnx_path)
        network = load_network(network, ckpt_path).to("cpu")
        try:
            return OnnxPredictor(
                cached_onnx_export(network, ckpt_path, onnx_cache_dir or onnx_cache.default_onnx_cache(), probe_size)
            )
        except Exception as error:  # an export that fails its check, an unusable cache folder: torch it is
            logger.warning("backend auto: %s; running torch instead.", " ".join(str(error).split()))
            return Predictor(network)
    if backend == "torch":
        return Predictor(load_network(network, ckpt_path).to(device))
    paths = {"torchscript": ts_path, "onnx": onnx_path, "onnx-int8": int8_path}
    if backend not in paths:
        raise SettingError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}.")
    if not paths[backend] or not Path(paths[backend]).is_file():
        raise MissingFileError(f"{backend} model not found: {paths[backend]}; export it or choose another --backend.")
    try:
        if backend == "torchscript":
            return Predictor(torch.jit.load(str(ts_path), map_location=device).eval())
        return OnnxPredictor(paths[backend])
    except Exception as error:  # torch and onnxruntime raise their own error types for broken files
        message = f"{backend} model {paths[backend]} is truncated or corrupt ({error_reason(error)}); export it again."
        raise CheckpointError(message) from error


class EnsemblePredictor(Predictor):
    """The mean probability of ``members`` (MONAI's ``MeanEnsemble``), as logits: (B, C, H, W) -> (B, K, H, W)."""

    def __init__(self, members: Sequence[Predictor]) -> None:
        super().__init__()
        self.members, self.mean = nn.ModuleList(members), MeanEnsemble()

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        return logits_of(self.mean([probabilities(member.predict(images)) for member in self.members]))


def load_ensemble(
    predictor: Predictor,
    ckpt_path: str | os.PathLike,
    ckpt_paths: Sequence[str | os.PathLike] | None,
    config_file: str | os.PathLike,
    backend: str,
    device: torch.device | str,
    onnx_cache_dir: str | os.PathLike | None = None,
) -> Predictor:
    """``predictor`` (of ``ckpt_path``) when ``ckpt_paths`` is empty; else an :class:`EnsemblePredictor` of the
    checkpoints in ``ckpt_paths`` (any registered encoders: each network is built from its checkpoint's settings by
    ``config_file``'s ``network_def``), each with ``backend`` "auto" or "torch"; ``predictor`` is reused for
    ``ckpt_path``. The input size stays ``ckpt_path``'s (``image_size``)."""
    if not ckpt_paths:
        return predictor
    if backend not in ("auto", "torch"):
        raise SettingError(f"ckpt_paths (an ensemble) runs with backend auto or torch, got {backend!r}.")
    members = []
    for path in ckpt_paths:
        if not Path(path).is_file():
            raise MissingFileError(f"checkpoint not found: {path}; check ckpt_paths.")
        if Path(path).resolve() == Path(ckpt_path).resolve():
            members.append(predictor)
            continue
        config = ConfigParser()
        config.read_config(str(config_file))
        network, settings = network_for_checkpoint(config, path)
        probe = settings["image_size"]
        members.append(load_predictor(backend, device, network, path, "", "", onnx_cache_dir, probe))
    return EnsemblePredictor(members)


def export_onnx(network: nn.Module, path: str | os.PathLike, image_size: Sequence[int], in_channels: int = 3) -> None:
    """Export ``network`` to ONNX (opset 17, TorchScript exporter) at ``path``, atomically.

    Input ``image`` (B, in_channels, H, W), output ``pred`` logits (B, 1, H, W); batch, height and
    width are dynamic axes (H and W multiples of 32). Traced at ``image_size`` (H, W).
    """
    network.eval()
    example = torch.zeros(1, in_channels, *image_size, device=next(network.parameters()).device)
    axes = {0: "batch", 2: "height", 3: "width"}
    write_onnx(network, example, path, {"image": axes, "pred": axes})


def write_onnx(
    module: nn.Module, example: torch.Tensor, path: str | os.PathLike, axes: dict[str, dict[int, str]]
) -> None:
    """Trace ``module`` on ``example`` into ONNX at ``path`` (opset 17, TorchScript exporter), atomically; the first
    and last names of ``axes`` (input name and output name -> their dynamic axes) name the input and the output."""
    names = list(axes)
    atomic_write(
        path,
        lambda tmp: torch.onnx.export(
            module,
            (example,),
            str(tmp),
            dynamo=False,
            opset_version=17,
            input_names=names[:1],
            output_names=names[-1:],
            dynamic_axes=axes,
        ),
    )
