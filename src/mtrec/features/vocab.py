"""Vocabularies: raw categorical values -> ids, fitted on the training split only.

Id 0 is padding, id 1 is out-of-vocabulary (unseen at fit time, or rarer than ``min_count``); known
values get ids from 2 in order of decreasing frequency (ties broken by the value's text, so fitting is
deterministic).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from mtrec.features.schema import FIRST_ID


@dataclass
class Vocabulary:
    """A mapping from raw values (as strings) to ids."""

    index: dict[str, int] = field(default_factory=dict)

    @classmethod
    def fit(cls, counts: Counter[str], min_count: int = 1) -> Vocabulary:
        kept = sorted((v for v, c in counts.items() if c >= min_count), key=lambda v: (-counts[v], v))
        return cls({v: i + FIRST_ID for i, v in enumerate(kept)})

    @property
    def size(self) -> int:
        """Number of ids, padding and OOV included."""
        return len(self.index) + FIRST_ID

    def to_list(self) -> list[str]:
        """Known values in id order (id = position + 2); the JSON form."""
        return sorted(self.index, key=self.index.__getitem__)

    @classmethod
    def from_list(cls, values: list[str]) -> Vocabulary:
        return cls({v: i + FIRST_ID for i, v in enumerate(values)})
