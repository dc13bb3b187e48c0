"""Model artefacts without pickle: weights as safetensors, schema and config as JSON.

A run directory holds ``model.safetensors``, ``schema.json`` and ``config.json``; loading one rebuilds
the model through the registry, and its objective from the config, and reads only tensors, so a model
file from elsewhere cannot run code. With ``train.select: per_task`` the weights file holds one copy of
the weights per task (``<task>.<name>``), each from that task's best epoch.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from mtrec.features.schema import DatasetSchema, SchemaError
from mtrec.io import atomic_write
from mtrec.models import create_model
from mtrec.objectives import ObjectiveConfigError, create_objective
from mtrec.objectives.scorer import Scorer
from mtrec.training.config import ConfigError, RunConfig, resolved_objective
from mtrec.training.nonfinite import nonfinite_parameters

WEIGHTS = "model.safetensors"
SCHEMA = "schema.json"
CONFIG = "config.json"


class ArtifactError(ValueError):
    """A run directory whose model artefact is missing or not valid."""


def save_weights(path: Path, state: dict[str, torch.Tensor]) -> None:
    """Write a state dict as safetensors, atomically (a tensor stored under two names, as with per-task
    selection when two tasks chose the same epoch, is written twice)."""
    tensors: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for key, value in state.items():
        tensor = value.detach().to("cpu").contiguous()
        pointer = tensor.untyped_storage().data_ptr()
        tensors[key] = tensor.clone() if pointer in seen else tensor
        seen.add(pointer)
    atomic_write(Path(path), lambda tmp: save_file(tensors, str(tmp)))


def build_scorer(config: RunConfig, schema: DatasetSchema) -> Scorer:
    """The untrained scorer of a run config: its model (one copy per task with ``select: per_task``) read
    through its objective."""
    model = create_model(config.model, schema, **config.model_options)
    name, options = resolved_objective(config.train, model.default_objective)
    objective = create_objective(name, schema, **options)
    if config.train.select == "per_task":
        models = {t: create_model(config.model, schema, **config.model_options) for t in schema.task_names}
        return Scorer(objective, models, config.model)
    return Scorer(objective, model, config.model)


def load_model(run_dir: str | Path) -> tuple[Scorer, RunConfig]:
    """Rebuild a trained model, read through its objective, from a run directory (CPU, eval mode)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ArtifactError(f"run directory not found: {run_dir}")
    try:
        schema = DatasetSchema.load(run_dir / SCHEMA)
        config = RunConfig.load(run_dir / CONFIG)
    except (SchemaError, ConfigError, FileNotFoundError, ValueError) as exc:
        raise ArtifactError(f"{run_dir}: not a valid mtrec run ({exc})") from exc
    try:
        scorer = build_scorer(config, schema)
    except ObjectiveConfigError as exc:
        raise ArtifactError(f"{run_dir}: not a valid mtrec run ({exc})") from exc
    try:
        state = load_file(str(run_dir / WEIGHTS))
    except (SafetensorError, FileNotFoundError, OSError) as exc:
        raise ArtifactError(f"{run_dir / WEIGHTS}: not a valid safetensors model file ({exc})") from exc
    try:
        scorer.load_model_state(state)
    except RuntimeError as exc:
        raise ArtifactError(f"{run_dir / WEIGHTS}: weights do not fit model {config.model!r}: {exc}") from exc
    bad = nonfinite_parameters(scorer)
    if bad:
        raise ArtifactError(f"{run_dir / WEIGHTS}: {len(bad)} weight tensor(s) hold NaN or infinite values "
                            f"(first: {bad[0]}); the model cannot score")
    return scorer.eval(), config
