"""Video inference: frames decoded in a worker thread, run in batches through the folder run's backend, temporal
smoothing, the overlay video and the per-frame report."""

from ..moved import package_getattr
from .io import FrameReader, OverlayVideo, open_video
from .runner import VideoRunner

__getattr__ = package_getattr(__name__)
