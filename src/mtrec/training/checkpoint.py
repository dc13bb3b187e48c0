"""Model artefacts without pickle: weights as safetensors, schema and config as JSON.

A run directory holds ``model.safetensors``, ``schema.json`` and ``config.json``; loading one rebuilds
the model through the registry, and its objective from the config, and reads only tensors, so a model
file from elsewhere cannot run code. With ``train.select: per_task`` the weights file holds one copy of
the weights per task (``<task>.<name>``), each from that task's best epoch.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from mtrec.errors import UserError
from mtrec.features.schema import DatasetSchema, SchemaError
from mtrec.objectives.scorer import Scorer
from mtrec.objectives.weighting import WeightingConfigError
from mtrec.training.build import build_run
from mtrec.training.config import ConfigError, RunConfig
from mtrec.training.nonfinite import nonfinite_parameters
from mtrec.training.tensorfile import save_tensors

WEIGHTS = "model.safetensors"
SCHEMA = "schema.json"
CONFIG = "config.json"


class ArtifactError(UserError, ValueError):
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
    save_tensors(Path(path), tensors)


def weights_problem(state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> str | None:
    """What keeps ``state`` from loading into a module whose state dict is ``expected`` (missing or
    unknown names, another shape or dtype), or None when it fits."""
    missing, unknown = sorted(expected.keys() - state.keys()), sorted(state.keys() - expected.keys())
    if missing or unknown:
        return "; ".join([f"missing tensor(s) {missing[:3]}"] * bool(missing)
                         + [f"unknown tensor(s) {unknown[:3]}"] * bool(unknown))
    for name, want in expected.items():
        got = state[name]
        if not isinstance(got, torch.Tensor) or got.dtype != want.dtype or got.shape != want.shape:
            found = f"{got.dtype} {list(got.shape)}" if isinstance(got, torch.Tensor) else type(got).__name__
            return f"tensor {name!r} is {found}, the model's is {want.dtype} {list(want.shape)}"
    return None


def build_scorer(config: RunConfig, schema: DatasetSchema) -> Scorer:
    """The untrained scorer of a run config: its model (one copy per task with ``select: per_task``) read
    through its objective."""
    per_task = config.train.select == "per_task"
    model, objective, _ = build_run(config, schema, copies=len(schema.task_names) if per_task else 1)
    if per_task:
        models = {t: copy.deepcopy(model) for t in schema.task_names}
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
    except (ConfigError, WeightingConfigError) as exc:
        raise ArtifactError(f"{run_dir}: not a valid mtrec run ({exc})") from exc
    try:
        state = load_file(str(run_dir / WEIGHTS))
    except (SafetensorError, FileNotFoundError, OSError) as exc:
        raise ArtifactError(f"{run_dir / WEIGHTS}: not a valid safetensors model file ({exc})") from exc
    problem = weights_problem(state, scorer.model_state())
    if problem is not None:
        raise ArtifactError(f"{run_dir / WEIGHTS}: weights do not fit model {config.model!r}: {problem}")
    scorer.load_model_state(state)
    bad = nonfinite_parameters(scorer)
    if bad:
        raise ArtifactError(f"{run_dir / WEIGHTS}: {len(bad)} weight tensor(s) hold NaN or infinite values "
                            f"(first: {bad[0]}); the model cannot score")
    return scorer.eval(), config
