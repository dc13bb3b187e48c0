"""What ``prepare.json`` says about a value (regression) task's labels, per split: the row count, the
count of nonzero values, the mean and quantiles, in the label's own units (before any transform).

The statistics are gathered chunk by chunk. Count, nonzero count and mean are exact; the quantiles are
those of a uniform sample of at most :data:`SAMPLE_SIZE` values (priority sampling: every value gets a
random key and the smallest keys are kept, so each value is equally likely to be kept whatever the chunk
sizes), exact on a split with no more values than that.
"""

from __future__ import annotations

from typing import Any

import numpy as np

SAMPLE_SIZE = 100_000
QUANTILES = (0.5, 0.9, 0.99, 0.999)


class ValueSummary:
    """Running statistics of one split's values of one task (see the module docstring)."""

    def __init__(self, seed: int = 0) -> None:
        self.count = 0
        self.nonzero = 0
        self.total = 0.0
        self.rng = np.random.default_rng(seed)
        self.keys = np.zeros(0)
        self.sample = np.zeros(0)

    def add(self, values: np.ndarray) -> None:
        """Count the values ``[n]`` (float64 view of them)."""
        values = np.asarray(values, dtype=np.float64)
        self.count += values.size
        self.nonzero += int(np.count_nonzero(values))
        self.total += float(values.sum())
        keys = np.concatenate([self.keys, self.rng.random(values.size)])
        sample = np.concatenate([self.sample, values])
        if keys.size > SAMPLE_SIZE:
            keep = np.argpartition(keys, SAMPLE_SIZE)[:SAMPLE_SIZE]
            keys, sample = keys[keep], sample[keep]
        self.keys, self.sample = keys, sample

    def to_dict(self) -> dict[str, Any]:
        """``{"count", "nonzero", "mean", "quantiles": {"p50": ..., ...}}`` (mean and quantiles null for no
        rows)."""
        quantiles = np.quantile(self.sample, QUANTILES) if self.sample.size else [None] * len(QUANTILES)
        return {
            "count": self.count,
            "nonzero": self.nonzero,
            "mean": self.total / self.count if self.count else None,
            "quantiles": {f"p{100 * q:g}": None if v is None else float(v)
                          for q, v in zip(QUANTILES, quantiles, strict=True)},
        }
