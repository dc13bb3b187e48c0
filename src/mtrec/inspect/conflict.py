"""Gradient conflict logged while training (``train.log_gradient_conflict``): the cosine between two
tasks' gradients on the shared parameters, read back from the run's ``history.jsonl``.

Each epoch's row holds ``gradient_cosine``: a list of measurements ``{"step": global step, "<a> vs <b>":
cosine, ...}``. A negative cosine means the two tasks pull the shared parameters in opposed directions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

GRADIENT_COSINE = "gradient_cosine"
PAIR = " vs "


def pair_name(a: str, b: str) -> str:
    return f"{a}{PAIR}{b}"


@dataclass
class Conflict:
    """Measurements over the run: the steps ``[S]`` and each task pair's cosines ``[S]``."""

    steps: np.ndarray
    cosines: dict[str, np.ndarray]

    def to_json(self) -> dict[str, Any]:
        return {pair: {"mean": float(np.mean(c)), "share_negative": float(np.mean(c < 0)),
                       "last": float(c[-1]), "measurements": len(c)} for pair, c in self.cosines.items()}


def read_conflict(history: list[dict[str, Any]]) -> Conflict | None:
    """The run's gradient-cosine measurements in step order, or None when it logged none."""
    rows = [m for epoch in history for m in epoch.get(GRADIENT_COSINE, [])]
    if not rows:
        return None
    pairs = [k for k in rows[0] if k != "step"]
    return Conflict(np.array([m["step"] for m in rows]),
                    {p: np.array([m[p] for m in rows], dtype=np.float64) for p in pairs})


def summary(conflict: Conflict) -> str:
    return "; ".join(f"{pair}: mean cosine {s['mean']:+.3f}, negative in {s['share_negative']:.0%} of "
                     f"{s['measurements']} measurements" for pair, s in conflict.to_json().items())
