"""Model registry; importing this package registers every built-in model."""

from mtrec.models import dtrn, mmoe, shared_bottom
from mtrec.models._registry import (
    ModelConfigError,
    create_model,
    list_models,
    model_class,
    model_options,
    register_model,
)
from mtrec.models.base import MultiTaskModel

__all__ = [
    "ModelConfigError",
    "MultiTaskModel",
    "create_model",
    "dtrn",
    "list_models",
    "mmoe",
    "model_class",
    "model_options",
    "register_model",
    "shared_bottom",
]
