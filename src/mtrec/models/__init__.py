"""The models and their registry. Importing this package is light: a built-in model's module (and torch)
is imported when the model is first asked for by name (:func:`create_model`, :func:`model_class`,
:func:`model_options`), or directly (``from mtrec.models import mmoe``)."""

from typing import TYPE_CHECKING, Any

from mtrec.models._registry import (
    BUILT_IN,
    ModelConfigError,
    create_model,
    list_models,
    model_class,
    model_description,
    model_options,
    register_model,
    register_variant,
    runs_on,
)

if TYPE_CHECKING:
    from mtrec.models.base import MultiTaskModel

__all__ = [
    "BUILT_IN",
    "ModelConfigError",
    "MultiTaskModel",
    "create_model",
    "list_models",
    "model_class",
    "model_description",
    "model_options",
    "register_model",
    "register_variant",
    "runs_on",
]


def __getattr__(name: str) -> Any:
    """``MultiTaskModel`` on first use, so that importing the registry does not import torch."""
    if name == "MultiTaskModel":
        from mtrec.models.base import MultiTaskModel

        return MultiTaskModel
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
