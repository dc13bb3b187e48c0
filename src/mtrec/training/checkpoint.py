"""Model artefacts without pickle: weights as safetensors, schema and config as JSON.

A run directory holds ``model.safetensors``, ``schema.json`` and ``config.json``; loading one rebuilds
the model through the registry and reads only tensors, so a model file from elsewhere cannot run code.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from mtrec.features.schema import DatasetSchema, SchemaError
from mtrec.io import atomic_write
from mtrec.models import MultiTaskModel, create_model
from mtrec.training.config import ConfigError, RunConfig
from mtrec.training.nonfinite import nonfinite_parameters

WEIGHTS = "model.safetensors"
SCHEMA = "schema.json"
CONFIG = "config.json"


class ArtifactError(ValueError):
    """A run directory whose model artefact is missing or not valid."""


def save_weights(path: Path, state: dict[str, torch.Tensor]) -> None:
    """Write a state dict as safetensors, atomically."""
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
    atomic_write(Path(path), lambda tmp: save_file(tensors, str(tmp)))


def save_model(run_dir: Path, model: MultiTaskModel, config: RunConfig) -> None:
    """Write weights, schema and resolved config into ``run_dir``."""
    run_dir.mkdir(parents=True, exist_ok=True)
    model.schema.save(run_dir / SCHEMA)
    config.save(run_dir / CONFIG)
    save_weights(run_dir / WEIGHTS, model.state_dict())


def load_model(run_dir: str | Path) -> tuple[MultiTaskModel, RunConfig]:
    """Rebuild a trained model from a run directory (CPU, eval mode)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ArtifactError(f"run directory not found: {run_dir}")
    try:
        schema = DatasetSchema.load(run_dir / SCHEMA)
        config = RunConfig.load(run_dir / CONFIG)
    except (SchemaError, ConfigError, FileNotFoundError, ValueError) as exc:
        raise ArtifactError(f"{run_dir}: not a valid mtrec run ({exc})") from exc
    model = create_model(config.model, schema, **config.model_options)
    try:
        state = load_file(str(run_dir / WEIGHTS))
    except (SafetensorError, FileNotFoundError, OSError) as exc:
        raise ArtifactError(f"{run_dir / WEIGHTS}: not a valid safetensors model file ({exc})") from exc
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise ArtifactError(f"{run_dir / WEIGHTS}: weights do not fit model {config.model!r}: {exc}") from exc
    bad = nonfinite_parameters(model)
    if bad:
        raise ArtifactError(f"{run_dir / WEIGHTS}: {len(bad)} weight tensor(s) hold NaN or infinite values "
                            f"(first: {bad[0]}); the model cannot score")
    return model.eval(), config
