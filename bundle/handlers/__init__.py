"""Ignite handlers of the bundle: per-image metric reports and the MoE balance-loss handler."""

from .metrics_report import SegmentationMetricsWriter
from .moe_loss import MoEBalanceLossHandler
