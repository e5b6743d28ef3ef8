"""Evaluation: per-image metrics with their quality score (evaluate.json's report) and validation Dice per source."""

from .metrics_report import SegmentationMetricsWriter, binary_metrics
from .source_metrics import PerSourceDice
