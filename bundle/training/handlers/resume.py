"""Resuming an interrupted training run from one checkpoint of its whole state, written at the end of every epoch."""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import ignite.distributed as idist
import numpy as np
import torch
from ignite.engine import Engine, Events
from ignite.handlers import Checkpoint
from monai.handlers import LrScheduleHandler, ValidationHandler
from monai.transforms import Randomizable, Transform

from ...atomic_files import atomic_write
from ...config import flag
from ...distributed import unwrap
from ..checkpoints import load_checkpoint

logger = logging.getLogger(__name__)

TRAINER_KEY, GRAD_SCALER_KEY = "trainer", "grad_scaler"
EPOCH_STATE_HANDLERS = (LrScheduleHandler, ValidationHandler)  # change state at EPOCH_COMPLETED


def handler_owner(handler: Any) -> Any:
    """The object behind an ignite event handler: the instance of a bound method or callable, unwrapped from
    ignite's filtered-event wrapper (``_parent``)."""
    parent = getattr(handler, "_parent", None)
    handler = parent() if parent is not None else handler
    return getattr(handler, "__self__", handler)


class Stateful(Protocol):
    """What ``ResumeCheckpoint`` saves and loads: a module, optimizer, scheduler or any object with these two."""

    def state_dict(self) -> Mapping[str, Any]:
        """The object's state."""

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore the object from ``state_dict``."""


def check_resume(path: str | os.PathLike, resume: bool | str) -> bool:
    """``resume`` as a bool, once the start is safe: with ``resume`` the checkpoint at ``path`` must exist; without,
    it must not, since it holds an interrupted run that the new run would overwrite. Raises naming the file.
    """
    resume, path = flag(resume, "resume"), Path(path)
    if resume and not path.is_file():
        raise FileNotFoundError(
            f"resume is true but there is no checkpoint to resume from: {path} does not exist (it is written at the "
            "end of every epoch and removed when a run completes)."
        )
    if not resume and path.exists():
        raise FileExistsError(
            f"{path} holds the state of an interrupted run, which a new run would overwrite. Continue it with "
            "--resume true (with the same settings), or delete the file to start again."
        )
    return resume


def _numpy_state(generator: Any) -> dict[str, Any]:
    """State of a RandomState (or of the ``np.random`` module's global one) with its (624,) uint32 key as an int64
    tensor, so that ``weights_only`` loading accepts it.
    """
    state = generator.get_state(legacy=False)
    return {
        **state,
        "state": {"key": torch.from_numpy(state["state"]["key"].astype(np.int64)), "pos": state["state"]["pos"]},
    }


def _set_numpy_state(generator: Any, state: Mapping[str, Any]) -> None:
    key = state["state"]["key"].numpy().astype(np.uint32)
    generator.set_state({**state, "state": {"key": key, "pos": state["state"]["pos"]}})


def randomizable_generators(transform: object) -> list[np.random.RandomState]:
    """The ``R`` of every ``Randomizable`` in ``transform``, nested ones included (``RandAffined`` holds three).

    Walks transforms' attributes, lists, tuples and dict values in a fixed order; each generator once.
    """
    found: dict[int, np.random.RandomState] = {}
    seen: set[int] = set()

    def walk(obj: object) -> None:
        if id(obj) in seen:
            return
        seen.add(id(obj))
        if isinstance(obj, (list, tuple)):
            items: Sequence[object] = obj
        elif isinstance(obj, dict):
            items = list(obj.values())
        elif isinstance(obj, (Transform, Randomizable)):
            if isinstance(obj, Randomizable):
                found.setdefault(id(obj.R), obj.R)
            items = list(vars(obj).values())
        else:
            return
        for item in items:
            walk(item)

    walk(transform)
    return list(found.values())


class RandomStates:
    """The random generators of a training run, as a ``state_dict``.

    Python's, NumPy's and torch's global generators (and CUDA's when present) and the NumPy generator
    (``R``) of every randomizable transform in ``transform``. DataLoader workers are seeded from torch's
    generator when their iterator starts, so restoring it at an epoch boundary covers them too.

    Args:
        transform: the training transforms (e.g. ``train#preprocessing``), walked at every save and load
            because MONAI's DataLoader replaces their generators (``set_random_state``).
    """

    def __init__(self, transform: object) -> None:
        self.transform = transform

    def state_dict(self) -> dict[str, Any]:
        return {
            "python": random.getstate(),
            "numpy": _numpy_state(np.random),
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "transforms": [_numpy_state(generator) for generator in randomizable_generators(self.transform)],
        }

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        generators = randomizable_generators(self.transform)
        if len(generators) != len(state_dict["transforms"]):
            raise ValueError(
                f"the checkpoint holds {len(state_dict['transforms'])} transform generators, the training "
                f"transforms have {len(generators)}: were they changed?"
            )
        random.setstate(state_dict["python"])
        _set_numpy_state(np.random, state_dict["numpy"])
        torch.set_rng_state(state_dict["torch"])
        if state_dict["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state_dict["cuda"])
        for generator, state in zip(generators, state_dict["transforms"]):
            _set_numpy_state(generator, state)


class EngineStateAttributes:
    """Named ``engine.state`` attributes as a ``state_dict``, e.g. an evaluator's ``best_metric`` and ``best_metric_epoch``.

    Args:
        engine: an ignite engine (a MONAI evaluator).
        names: attributes of ``engine.state``.
    """

    def __init__(self, engine: Engine, names: Sequence[str]) -> None:
        self.engine, self.names = engine, list(names)

    def state_dict(self) -> dict[str, Any]:
        return {name: getattr(self.engine.state, name) for name in self.names}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        for name in self.names:
            setattr(self.engine.state, name, state_dict[name])


class ResumeCheckpoint:
    """Saves the whole training state to ``path`` at the end of every epoch, atomically; with ``resume``, loads it
    when the trainer starts, so that the run goes on with the epoch after the saved one.

    The file holds ``{"trainer": trainer.state_dict(), "grad_scaler": ... (AMP only), name: obj.state_dict()}``
    for each object of ``state``; loading is strict and names the file when it is truncated, corrupt or
    does not fit. The file is removed when the run completes (the product of a finished run is the best
    model); an exception or a kill leaves it. Without ``resume`` an existing file refuses the start
    (:func:`check_resume`), so an interrupted run is never overwritten. In a distributed run every rank
    loads and rank 0 saves.

    It must come after the handlers that change state at the end of an epoch (``EPOCH_STATE_HANDLERS``: the LR
    schedule and validation) in ``train#handlers``; the trainer's start raises ValueError naming both otherwise.

    Args:
        path: the checkpoint file (id ``resume_ckpt``).
        state: objects with ``state_dict`` / ``load_state_dict`` besides the trainer: model, optimizer, ...
        resume: load ``path`` at start; a string ``"true"`` / ``"false"`` from the command line is accepted.
    """

    def __init__(self, path: str | os.PathLike, state: Mapping[str, Stateful], resume: bool | str = False) -> None:
        if TRAINER_KEY in state or GRAD_SCALER_KEY in state:
            raise ValueError(
                f"state must not use the names {TRAINER_KEY!r} and {GRAD_SCALER_KEY!r}: they are the trainer's."
            )
        self.path, self.state = Path(path), dict(state)
        self.resume = check_resume(self.path, resume)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self.check_order)
        if self.resume:
            engine.add_event_handler(Events.STARTED, self.load)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.save)
        engine.add_event_handler(Events.COMPLETED, self.remove)

    def check_order(self, engine: Engine) -> None:
        """Raise unless every ``EPOCH_STATE_HANDLERS`` handler runs before :meth:`save` at ``EPOCH_COMPLETED``."""
        owners = [handler_owner(handler) for handler, *_ in engine._event_handlers[Events.EPOCH_COMPLETED]]
        later = [owner for owner in owners[owners.index(self) + 1 :] if isinstance(owner, EPOCH_STATE_HANDLERS)]
        if later:
            raise ValueError(
                f"{type(later[0]).__name__} comes after ResumeCheckpoint in train#handlers, so the resume checkpoint "
                f"would miss what it changes at the end of an epoch: list {type(later[0]).__name__} before "
                "ResumeCheckpoint."
            )

    def _objects(self, engine: Engine) -> dict[str, Stateful]:
        scaler = getattr(engine, "scaler", None)
        return {TRAINER_KEY: engine, **({GRAD_SCALER_KEY: scaler} if scaler is not None else {}), **self.state}

    def load(self, engine: Engine) -> None:
        checkpoint = load_checkpoint(self.path)
        objects = self._objects(engine)
        if not isinstance(checkpoint, dict) or set(checkpoint) != set(objects):
            found = sorted(checkpoint) if isinstance(checkpoint, dict) else type(checkpoint).__name__
            raise ValueError(
                f"{self.path} is not a resume checkpoint of this configuration: it holds {found}, expected {sorted(objects)}."
            )
        max_epochs, saved_epochs = engine.state.max_epochs, checkpoint[TRAINER_KEY].get("max_epochs")
        if saved_epochs != max_epochs:
            raise ValueError(
                f"{self.path} is from a run of {saved_epochs} epochs, this one has {max_epochs}: "
                f"resume with --epochs {saved_epochs}."
            )
        try:
            Checkpoint.load_objects(to_load=objects, checkpoint=checkpoint, strict=True)
        except (KeyError, RuntimeError, ValueError) as error:
            raise ValueError(
                f"{self.path} does not fit this run (was it written with other settings?): {error}"
            ) from error
        logger.info("resumed from %s: epoch %d of %d done", self.path, engine.state.epoch, max_epochs)

    def save(self, engine: Engine) -> None:
        if idist.get_rank() != 0:
            return
        checkpoint = {name: unwrap(obj).state_dict() for name, obj in self._objects(engine).items()}
        atomic_write(self.path, lambda tmp: torch.save(checkpoint, tmp))

    def remove(self, engine: Engine) -> None:
        if idist.get_rank() == 0 and self.path.exists():
            self.path.unlink()
            logger.info("run completed: removed the resume checkpoint %s", self.path)
