"""Ignite handlers of the bundle: metric reports, MoE balance loss, atomic checkpoints, resuming, loss guard,
time budget, k-means gate initialisation, per-source validation Dice."""

from .atomic_saver import AtomicCheckpointSaver
from .kmeans_gates import KMeansGateInit
from .loss_guard import StopOnNonFiniteLoss
from .metrics_report import SegmentationMetricsWriter
from .moe_loss import MoEBalanceLossHandler
from .resume import EngineStateAttributes, RandomStates, ResumeCheckpoint, check_resume
from .source_metrics import PerSourceDice
from .time_budget import TimeBudget
