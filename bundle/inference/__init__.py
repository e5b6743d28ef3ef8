"""Folder inference: which inputs to segment and where their outputs go, decoding, test-time augmentation,
post-processing, the quality score, mask writers, the append-only report, torchrun shards and the end-to-end ONNX
model."""

from ..moved import package_getattr
from .end_to_end import EndToEndSegmenter
from .folder import DecodedBatches, DecodingDataset, FolderPlan
from .postprocessing import BinaryMaskd, postprocess_mask
from .quality import QualityScored, qc_score
from .report import PredictionReport
from .tta import TTAInferer
from .writers import FolderWriter, SaveMaskd

__getattr__ = package_getattr(__name__)
