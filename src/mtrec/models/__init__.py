"""Model registry; importing this package registers every built-in model (variants included)."""

from mtrec.models import adatt, aitm, dcrnn, dtrn, esmm, home, mmoe, pepnet, ple, shared_bottom, single_task, stem
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
    "adatt",
    "aitm",
    "create_model",
    "dcrnn",
    "dtrn",
    "esmm",
    "home",
    "list_models",
    "mmoe",
    "model_class",
    "model_options",
    "pepnet",
    "ple",
    "register_model",
    "register_variant",
    "shared_bottom",
    "single_task",
    "stem",
]
