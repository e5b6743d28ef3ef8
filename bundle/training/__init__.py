"""Training: checkpoints and the network settings they carry, where the folds of a cross-validation save, stage-2
fine-tuning, losses beyond MONAI's, and the Ignite handlers of the training loop (:mod:`.handlers`)."""

from . import handlers
from .checkpoints import NetworkSettings, load_checkpoint, read_network_settings, read_state_dict
from .distillation import DistillationBatch
from .finetune import freeze_except, prepare_moe_finetuning
from .folds import ensemble_checkpoints, fold_checkpoints, fold_dir, model_checkpoint
from .losses import BoundaryDiceCELoss, DeepSupervisionLoss, StructureLoss, with_deep_supervision
