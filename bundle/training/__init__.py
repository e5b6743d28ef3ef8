"""Training: checkpoints and the network settings they carry, stage-2 fine-tuning, losses beyond MONAI's, and the
Ignite handlers of the training loop (:mod:`.handlers`)."""

from . import handlers  # noqa: F401  (train.json names bundle.training.handlers.* after `import bundle`)
from .checkpoints import NetworkSettings, load_checkpoint, read_network_settings, read_state_dict
from .finetune import freeze_except, prepare_moe_finetuning
from .losses import BoundaryDiceCELoss, DeepSupervisionLoss, StructureLoss, with_deep_supervision
