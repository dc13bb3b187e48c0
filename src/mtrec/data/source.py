"""Resolve a data spec to a PreparedDataset.

A spec is ``synthetic`` (the ``easy`` preset), ``synthetic:PRESET``, ``synthetic:PRESET:ROWS``, or the
path of a prepared dataset directory.
"""

from __future__ import annotations

from pathlib import Path

from mtrec.data.dataset import DatasetError, PreparedDataset

SYNTHETIC = "synthetic"


def is_synthetic(spec: str) -> bool:
    return spec == SYNTHETIC or spec.startswith(SYNTHETIC + ":")


def load_data(spec: str) -> PreparedDataset:
    """Build (synthetic) or open (directory) the dataset named by ``spec``."""
    if is_synthetic(spec):
        parts = spec.split(":")
        preset = parts[1] if len(parts) > 1 and parts[1] else "easy"
        rows: int | None = None
        if len(parts) > 2:
            try:
                rows = int(parts[2])
            except ValueError:
                raise DatasetError(f"data spec {spec!r}: ROWS must be an integer, got {parts[2]!r}") from None
        if len(parts) > 3:
            raise DatasetError(f"data spec {spec!r}: expected synthetic[:PRESET[:ROWS]]")
        from mtrec.data.synthetic import make_synthetic

        return make_synthetic(preset, rows=rows)
    path = Path(spec)
    if not path.exists():
        raise DatasetError(
            f"data {spec!r} is neither 'synthetic[:PRESET[:ROWS]]' nor an existing prepared dataset directory"
        )
    return PreparedDataset.load(path)
