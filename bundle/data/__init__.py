"""Data: dataset layouts and datalists, splits, image readers, transforms, augmentations, the integrity check,
the synthetic demo set, the cross-validation folds, the training planner and its configuration search."""

from ..moved import package_getattr
from .augmentations import RandJpegd, RandSaturationd
from .check import check_dataset, require_valid_data
from .datasets import find_image_mask_pairs, load_datalist
from .demo import make_demo_dataset
from .folds import assign_folds, fold_split
from .planning import fingerprint, plan_training
from .readers import image_readers
from .splits import split_pairs
from .transforms import AntialiasedResized, BinarizeMaskd, ToImageChannelsd, ToImageLayoutd, mask_threshold

__getattr__ = package_getattr(__name__)
