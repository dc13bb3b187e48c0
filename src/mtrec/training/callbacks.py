"""Early stopping on the validation metric, and the per-epoch log."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mtrec.io import json_text


@dataclass
class EarlyStopping:
    """Stops once more than ``patience`` consecutive epochs fail to beat the best (higher) validation score."""

    patience: int
    best: float = -math.inf
    best_epoch: int = -1
    bad_epochs: int = 0

    def update(self, score: float, epoch: int) -> bool:
        """Record an epoch's score; True if it is the best so far (the first epoch always is, even when
        its score is undefined, e.g. a validation split without positives)."""
        if score > self.best or self.best_epoch < 0:
            self.best, self.best_epoch, self.bad_epochs = score, epoch, 0
            return True
        self.bad_epochs += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.bad_epochs > self.patience


@dataclass
class EpochLog:
    """Appends one JSON line per epoch to ``history.jsonl`` and keeps the rows for plotting."""

    path: Path | None
    rows: list[dict[str, Any]] = field(default_factory=list)

    @staticmethod
    def line(row: dict[str, Any]) -> str:
        return json_text(row) + "\n"

    def append(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        if self.path is not None:
            with open(self.path, "a") as fh:
                fh.write(self.line(row))
