"""The model registry: the only way to build a model (CLI, configs, benchmark and tests all use it).

A model is registered either as a class (``@register_model("mmoe")`` on a :class:`MultiTaskModel`) or as a
variant: a registered entrypoint function over a base class that only changes defaults
(``register_variant("omoe", MMoE, num_gates=1)``), so a variant never re-lists its base's signature.
"""

from __future__ import annotations

import fnmatch
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from mtrec.features.schema import DatasetSchema
from mtrec.models.base import MultiTaskModel
from mtrec.typed import checked_options

M = TypeVar("M", bound=type[MultiTaskModel])


class ModelConfigError(ValueError):
    """An unknown model name or an option the model does not take."""


@dataclass(frozen=True)
class Entry:
    """A registered model: the class that builds it and the defaults it sets over the class's own."""

    cls: type[MultiTaskModel]
    defaults: dict[str, Any] = field(default_factory=dict)


_MODELS: dict[str, Entry] = {}


def _add(name: str, entry: Entry) -> None:
    if name in _MODELS:
        raise ModelConfigError(f"model name {name!r} is registered twice")
    _MODELS[name] = entry


def register_model(name: str) -> Callable[[M], M]:
    """Class decorator: make a MultiTaskModel buildable by ``name``."""

    def add(cls: M) -> M:
        _add(name, Entry(cls))
        cls.registry_name = name
        return cls

    return add


def register_variant(name: str, base: type[MultiTaskModel], **defaults: Any) -> None:
    """Register ``name``: the registered model ``base`` with other defaults (checked against its options)."""
    own = _class_defaults(base)
    unknown = sorted(set(defaults) - set(own))
    if unknown:
        raise ModelConfigError(f"variant {name!r}: {base.__name__} has no option(s) {unknown}")
    _add(name, Entry(base, dict(defaults)))


def list_models(*patterns: str) -> list[str]:
    """Registered model names, sorted; with ``patterns`` (fnmatch, e.g. ``"dcrnn*"``) those matching any."""
    names = sorted(_MODELS)
    if not patterns:
        return names
    return [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in patterns)]


def _entry(name: str) -> Entry:
    try:
        return _MODELS[name]
    except KeyError:
        raise ModelConfigError(f"unknown model {name!r}; registered models: {', '.join(list_models())}") from None


def model_class(name: str) -> type[MultiTaskModel]:
    """The class that builds the registered model ``name`` (a variant's base class)."""
    return _entry(name).cls


def _class_defaults(cls: type[MultiTaskModel]) -> dict[str, Any]:
    signature = inspect.signature(cls.__init__)
    return {
        p.name: p.default
        for p in signature.parameters.values()
        if p.name not in ("self", "schema") and p.default is not inspect.Parameter.empty
    }


def model_options(name: str, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """The model's full option set: its class's defaults, then the variant's, updated by ``overrides``
    (checked against the type hints of the class's constructor: names, types and ranges)."""
    entry = _entry(name)
    defaults = {**_class_defaults(entry.cls), **entry.defaults}
    unknown = sorted(set(overrides or {}) - set(defaults))
    if unknown:
        raise ModelConfigError(f"model {name!r} has no option(s) {unknown}; its options: {sorted(defaults)}")
    checked = checked_options(entry.cls.__init__, overrides or {}, f"model_options of model {name!r}",
                              ModelConfigError, skip=("schema",))
    return {**defaults, **checked}


def create_model(name: str, schema: DatasetSchema, **options: Any) -> MultiTaskModel:
    """Build the registered model ``name`` for ``schema`` with the given options."""
    model = model_class(name)(schema, **model_options(name, options))
    model.registry_name = name  # an instance attribute: a variant's model names the variant
    return model
