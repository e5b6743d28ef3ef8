"""Values that reach the configs from the command line."""

from __future__ import annotations

from .errors import SettingError


def flag(value: bool | str, name: str) -> bool:
    """A boolean id: ``true`` / ``false`` from JSON, or any case of them from the command line.

    ``python -m monai.bundle run ... --resume true`` passes the string ``"true"`` (``--resume True`` a bool),
    and the string ``"false"`` would be truthy. Raises ValueError, naming the id, for anything else.
    """
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise SettingError(f"{name} must be true or false, got {value!r}")
