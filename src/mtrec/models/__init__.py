"""Model registry; importing this package registers every built-in model (variants included)."""

from mtrec.models import aitm, dcrnn, dtrn, esmm, mmoe, ple, shared_bottom, single_task
from mtrec.models._registry import (
    ModelConfigError,
    create_model,
    list_models,
    model_class,
    model_options,
    register_model,
    register_variant,
)
from mtrec.models.base import MultiTaskModel

__all__ = [
    "ModelConfigError",
    "MultiTaskModel",
    "aitm",
    "create_model",
    "dcrnn",
    "dtrn",
    "esmm",
    "list_models",
    "mmoe",
    "model_class",
    "model_options",
    "ple",
    "register_model",
    "register_variant",
    "shared_bottom",
    "single_task",
]
