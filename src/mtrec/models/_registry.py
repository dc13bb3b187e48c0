"""The model registry: the only way to build a model (CLI, configs, benchmark and tests all use it)."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, TypeVar

from mtrec.features.schema import DatasetSchema
from mtrec.models.base import MultiTaskModel

_MODELS: dict[str, type[MultiTaskModel]] = {}

M = TypeVar("M", bound=type[MultiTaskModel])


class ModelConfigError(ValueError):
    """An unknown model name or an option the model does not take."""


def register_model(name: str) -> Callable[[M], M]:
    """Class decorator: make a MultiTaskModel buildable by ``name``."""

    def add(cls: M) -> M:
        if name in _MODELS:
            raise ModelConfigError(f"model name {name!r} is registered twice")
        _MODELS[name] = cls
        cls.registry_name = name
        return cls

    return add


def list_models() -> list[str]:
    """Registered model names, sorted."""
    return sorted(_MODELS)


def model_class(name: str) -> type[MultiTaskModel]:
    try:
        return _MODELS[name]
    except KeyError:
        raise ModelConfigError(f"unknown model {name!r}; registered models: {', '.join(list_models())}") from None


def model_options(name: str, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """The model's full option set: its constructor defaults updated by ``overrides`` (checked)."""
    signature = inspect.signature(model_class(name).__init__)
    defaults = {
        p.name: p.default
        for p in signature.parameters.values()
        if p.name not in ("self", "schema") and p.default is not inspect.Parameter.empty
    }
    unknown = sorted(set(overrides or {}) - set(defaults))
    if unknown:
        raise ModelConfigError(f"model {name!r} has no option(s) {unknown}; its options: {sorted(defaults)}")
    return {**defaults, **(overrides or {})}


def create_model(name: str, schema: DatasetSchema, **options: Any) -> MultiTaskModel:
    """Build the registered model ``name`` for ``schema`` with the given options."""
    return model_class(name)(schema, **model_options(name, options))
