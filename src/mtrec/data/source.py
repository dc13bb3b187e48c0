"""Resolve a data spec to a PreparedDataset.

A spec is ``synthetic`` (the ``easy`` preset), ``synthetic:PRESET``, ``synthetic:PRESET:ROWS``, or the
path of a prepared dataset directory.
"""

from __future__ import annotations

from pathlib import Path

from mtrec.data.dataset import DatasetError, PreparedDataset
from mtrec.resources import check_memory

SYNTHETIC = "synthetic"


def is_synthetic(spec: str) -> bool:
    return spec == SYNTHETIC or spec.startswith(SYNTHETIC + ":")


def _synthetic(spec: str) -> tuple[str, int | None]:
    """``(preset, rows)`` of a synthetic spec, checked (known preset, enough rows); DatasetError if not."""
    parts = spec.split(":")
    if len(parts) > 3:
        raise DatasetError(f"data spec {spec!r}: expected synthetic[:PRESET[:ROWS]]")
    preset = parts[1] if len(parts) > 1 and parts[1] else "easy"
    rows: int | None = None
    if len(parts) > 2:
        try:
            rows = int(parts[2])
        except ValueError:
            raise DatasetError(f"data spec {spec!r}: ROWS must be an integer, got {parts[2]!r}") from None
    from mtrec.data.synthetic import generation_bytes, resolve_config

    try:
        config = resolve_config(preset, rows)
    except ValueError as exc:
        raise DatasetError(f"data spec {spec!r}: {exc}") from None
    check_memory(generation_bytes(config), f"data spec {spec!r}: ROWS {config.rows:,}", DatasetError)
    return preset, rows


def check_spec(spec: str) -> None:
    """DatasetError if ``spec`` is a synthetic spec that names no preset or too few rows (a directory is
    checked when it is loaded: a saved run may name data that is not on this machine)."""
    if is_synthetic(spec):
        _synthetic(spec)
    elif not spec:
        raise DatasetError("the data spec is empty: give synthetic[:PRESET[:ROWS]] or a prepared dataset directory")


def load_data(spec: str) -> PreparedDataset:
    """Build (synthetic) or open (directory) the dataset named by ``spec``."""
    if is_synthetic(spec):
        preset, rows = _synthetic(spec)
        from mtrec.data.synthetic import make_synthetic

        return make_synthetic(preset, rows=rows)
    path = Path(spec)
    if not path.exists():
        raise DatasetError(
            f"data {spec!r} is neither 'synthetic[:PRESET[:ROWS]]' nor an existing prepared dataset directory"
        )
    return PreparedDataset.load(path)
