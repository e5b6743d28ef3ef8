"""The order in which ``worst_qc_first`` hands out unlabeled images, from their datastore infos alone (no MONAI Label
import, so that it is tested without MONAI Label installed).

An image's info holds ``qc_score`` (written by the ``qc_score`` scoring method; higher is better) and, once MONAI Label
served it, ``strategy: {<strategy name>: {"ts": <unix seconds>}}`` (written by MONAI Label's ``/activelearning``
endpoint). The order:

1. images not handed out by this strategy within the last ``reserve_s`` seconds, lowest ``qc_score`` first; images
   without a score (not scored yet, or their scoring failed) after the scored ones; ties by image id;
2. then the images handed out within ``reserve_s``, the one handed out longest ago first.

So a second annotator (or one who skipped an image) gets the next-worst image, not the same one; an image handed out
and not labelled comes back after ``reserve_s``. With ``reserve_s`` 0 the order is the plain ``qc_score`` order.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

QC_KEY = "qc_score"
RESERVE_S = 3600.0  # an image handed out is passed over for an hour, while images not handed out remain


def qc_value(info: Mapping[str, object], key: str = QC_KEY) -> float | None:
    """The stored score of an image info as a float, or None when it has none (or a value that is not a number)."""
    value = info.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def served_at(info: Mapping[str, object], strategy: str) -> float | None:
    """When ``strategy`` last handed out the image (unix seconds, as MONAI Label's endpoint stores it), or None."""
    served = info.get("strategy")
    entry = served.get(strategy) if isinstance(served, Mapping) else None
    ts = entry.get("ts") if isinstance(entry, Mapping) else None
    return float(ts) if isinstance(ts, (int, float)) and not isinstance(ts, bool) else None


def worst_first(
    infos: Mapping[str, Mapping[str, object]],
    strategy: str,
    now: float,
    reserve_s: float = RESERVE_S,
    key: str = QC_KEY,
) -> list[str]:
    """The image ids of ``infos`` ({image id: datastore info}) in the order the strategy hands them out (module
    docstring); the first is the next sample."""

    def rank(image: str) -> tuple:
        info = infos[image]
        served = served_at(info, strategy)
        reserved = served is not None and now - served < reserve_s
        score = qc_value(info, key)
        return (reserved, served if reserved else 0.0, score is None, 0.0 if score is None else score, image)

    return sorted(infos, key=rank)
