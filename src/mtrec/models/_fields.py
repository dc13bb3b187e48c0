"""Sparse fields named by a model option (PEPNet's persona and domain features, POSO's personal features,
APG's condition)."""

from __future__ import annotations

from collections.abc import Sequence

from mtrec.features.schema import DatasetSchema
from mtrec.models._registry import ModelConfigError


def sparse_field_indices(schema: DatasetSchema, names: Sequence[str], model: str, option: str) -> list[int]:
    """Positions of the sparse features ``names`` among the fields; an unknown name is an error naming
    the model's option."""
    index = {f.name: i for i, f in enumerate(schema.sparse)}
    unknown = [n for n in names if n not in index]
    if unknown:
        raise ModelConfigError(f"{model}: {option} {unknown} are not sparse features; sparse features: "
                               f"{sorted(index)}")
    return [index[n] for n in names]


def default_persona(schema: DatasetSchema) -> list[str]:
    """The user id and the item ids that histories target; every sparse field if there are none."""
    names = [schema.user_id] if schema.user_id else []
    names += [s.target for s in schema.sequences if s.target and s.target not in names]
    return names or [f.name for f in schema.sparse]
