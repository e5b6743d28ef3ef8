"""The module names before 0.9.0 grouped ``bundle/`` into packages, still importable for one release: a user's
config overlay naming ``bundle.tta.TTAInferer`` gets the class and one log line naming ``bundle.inference.tta``."""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import logging
import sys
import types
from collections.abc import Callable

logger = logging.getLogger(__name__)

REMOVED_IN = "0.10.0"
MOVED: dict[str, tuple[str, ...]] = {  # old module -> the modules that hold its names now, searched in order
    "bundle.splits": ("bundle.data.splits",),
    "bundle.readers": ("bundle.data.readers",),
    "bundle.transforms": ("bundle.data.transforms",),
    "bundle.augmentations": ("bundle.data.augmentations",),
    "bundle.data_check": ("bundle.data.check",),
    "bundle.demo": ("bundle.data.demo",),
    "bundle.planning": ("bundle.data.planning",),
    "bundle.checkpoints": ("bundle.training.checkpoints",),
    "bundle.finetune": ("bundle.training.finetune",),
    "bundle.losses": ("bundle.training.losses",),
    "bundle.handlers": ("bundle.training.handlers", "bundle.evaluation"),
    "bundle.onnx_cache": ("bundle.backends.onnx_cache",),
    "bundle.writers": ("bundle.inference.writers",),
    "bundle.report": ("bundle.inference.report",),
    "bundle.postprocessing": ("bundle.inference.postprocessing",),
    "bundle.quality": ("bundle.inference.quality",),
    "bundle.tta": ("bundle.inference.tta",),
    "bundle.sharding": ("bundle.inference.sharding",),
    "bundle.end_to_end": ("bundle.inference.end_to_end",),
    "bundle.video_io": ("bundle.video.io", "bundle.video.display", "bundle.inference.outputs", "bundle.formats"),
}
OLD_MODULES_NOW_PACKAGES: dict[str, str] = {  # these names are packages now; their old modules' names live in
    "bundle.data": "bundle.data.datasets",
    "bundle.backends": "bundle.backends.predictors",
    "bundle.inference": "bundle.inference.folder",
    "bundle.video": "bundle.video.runner",
}


def moved_attribute(old: str, modules: tuple[str, ...], name: str) -> object:
    """``name`` of the old module ``old``, from the first of ``modules`` that has it, kept on ``old``'s module object
    so that the one log line naming the new dotted name is written once."""
    if not (name.startswith("__") and name.endswith("__")):
        for new in modules:
            module = importlib.import_module(new)
            if hasattr(module, name):
                logger.warning(
                    f"{old}.{name} is now {new}.{name}: use the new name (e.g. in your config's _target_); "
                    f"the old one goes in {REMOVED_IN}."
                )
                value = getattr(module, name)
                setattr(sys.modules[old], name, value)
                return value
    raise AttributeError(f"module {old!r} (now {', '.join(modules)}) has no attribute {name!r}")


def package_getattr(package: str) -> Callable[[str], object]:
    """A module ``__getattr__`` for ``package`` (once a module): the names of its old module, with the log line."""
    return lambda name: moved_attribute(package, (OLD_MODULES_NOW_PACKAGES[package],), name)


class MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports an old module name of :data:`MOVED` as a stand-in module whose names resolve to the new modules."""

    def find_spec(self, fullname: str, path: object = None, target: object = None):
        return importlib.util.spec_from_loader(fullname, self) if fullname in MOVED else None

    def create_module(self, spec) -> types.ModuleType:
        module = types.ModuleType(spec.name, f"Moved: see {', '.join(MOVED[spec.name])}.")
        module.__getattr__ = lambda name: moved_attribute(spec.name, MOVED[spec.name], name)
        return module

    def exec_module(self, module: types.ModuleType) -> None:
        """Nothing to run: the stand-in resolves names on access."""


def install() -> None:
    """Put :class:`MovedModules` on ``sys.meta_path`` once."""
    if not any(isinstance(finder, MovedModules) for finder in sys.meta_path):
        sys.meta_path.append(MovedModules())
