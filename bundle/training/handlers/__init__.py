"""Ignite handlers of training: MoE balance loss and expert usage, atomic checkpoints, resuming, the NaN guard,
the time budget and k-means gate initialisation."""

from .atomic_saver import AtomicCheckpointSaver
from .kmeans_gates import KMeansGateInit
from .loss_guard import StopOnNonFiniteLoss
from .moe_loss import MoEBalanceLossHandler
from .resume import EngineStateAttributes, RandomStates, ResumeCheckpoint, check_resume
from .time_budget import TimeBudget
