"""Model registry; importing this package registers every built-in model."""

from mtrec.models import aitm, cgc, dcrnn, dtrn, esmm, mmoe, omoe, ple, shared_bottom, single_task
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
    "aitm",
    "cgc",
    "create_model",
    "dcrnn",
    "dtrn",
    "esmm",
    "list_models",
    "mmoe",
    "model_class",
    "model_options",
    "omoe",
    "ple",
    "register_model",
    "shared_bottom",
    "single_task",
]
