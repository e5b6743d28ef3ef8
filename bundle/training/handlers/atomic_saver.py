"""MONAI's CheckpointSaver with atomic checkpoint files and a resumable best-model record."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import ignite.distributed as idist
import torch
from ignite.handlers import DiskSaver
from monai.handlers import CheckpointSaver

from ...atomic_files import atomic_write


class _AtomicDiskSaver(DiskSaver):
    """ignite's DiskSaver writing through :func:`bundle.atomic_files.atomic_write`; a fixed ``filename`` is replaced by the
    new file, never removed before it is written.
    """

    def __init__(self, dirname: str | os.PathLike, filename: str | None = None) -> None:
        super().__init__(dirname=dirname, require_empty=False)
        self.filename = filename

    def __call__(self, checkpoint: Mapping, filename: str, metadata: Mapping | None = None) -> None:
        if idist.get_rank() == self.save_on_rank:
            atomic_write(self.dirname / (self.filename or filename), lambda tmp: torch.save(checkpoint, tmp))

    def remove(self, filename: str) -> None:
        if self.filename is None:
            super().remove(filename)


class AtomicCheckpointSaver(CheckpointSaver):
    """MONAI's ``CheckpointSaver`` (same arguments) whose files appear whole or not at all.

    MONAI's saver writes in place (``atomic=False``) and, for a fixed file name (``key_metric_filename``,
    ``final_filename``), deletes the old file before writing the new one, so a kill in between leaves no
    checkpoint or a truncated one. Here every file is written to a temp file and renamed over the old one.
    ``state_dict`` / ``load_state_dict`` carry the key-metric record (the best score so far), so that a
    resumed run does not replace the best model with a worse one.
    """

    def __init__(
        self,
        save_dir: str,
        save_dict: dict,
        final_filename: str | None = None,
        key_metric_filename: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            save_dir, save_dict, final_filename=final_filename, key_metric_filename=key_metric_filename, **kwargs
        )
        for checkpoint, filename in (
            (self._final_checkpoint, final_filename),
            (self._key_metric_checkpoint, key_metric_filename),
            (self._interval_checkpoint, None),
        ):
            if checkpoint is not None:
                checkpoint.save_handler = _AtomicDiskSaver(save_dir, filename)

    def state_dict(self) -> dict[str, Any]:
        """The key-metric record (``{"_saved": [(score, filename), ...]}``); empty without ``save_key_metric``."""
        return dict(self._key_metric_checkpoint.state_dict()) if self._key_metric_checkpoint is not None else {}
