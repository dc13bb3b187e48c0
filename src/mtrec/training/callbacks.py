"""Early stopping and model selection on the validation scores."""

from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass
class EarlyStopping:
    """Tracks the best (higher) validation score of each selection key and stops once more than
    ``patience`` consecutive epochs improved none of them.

    The keys are ``["mean"]`` (``train.select: mean``: one score, the mean over tasks) or the task names
    (``per_task``: each task selects its own epoch; training goes on while any task still improves).
    """

    patience: int
    best: dict[str, float] = field(default_factory=dict)
    best_epoch: dict[str, int] = field(default_factory=dict)
    bad_epochs: int = 0

    def update(self, scores: dict[str, float], epoch: int) -> list[str]:
        """Record an epoch's scores; the keys for which it is the best so far (an epoch is the best of a
        key it is the first epoch of, even when the score is undefined, e.g. a split without positives)."""
        improved = [k for k, score in scores.items()
                    if k not in self.best_epoch or score > self.best.get(k, -math.inf)]
        for key in improved:
            self.best[key], self.best_epoch[key] = scores[key], epoch
        self.bad_epochs = 0 if improved else self.bad_epochs + 1
        return improved

    @property
    def should_stop(self) -> bool:
        return self.bad_epochs > self.patience
