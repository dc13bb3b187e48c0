"""One training run end to end: data, model, trainer, artefacts (the library behind ``mtrec train``).

A run directory receives ``config.json``, ``schema.json``, ``model.safetensors`` (best epoch),
``history.jsonl``, ``metrics.json``, ``learning_curves.png`` and ``roc.png``; when the data is a dataset
prepared from raw files, also its ``encoders.json`` (raw values -> model input, for serving).
"""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from mtrec.data.dataset import PreparedDataset
from mtrec.data.source import is_synthetic, load_data
from mtrec.features.encoders import ENCODERS_FILE
from mtrec.io import atomic_write_bytes, atomic_write_text
from mtrec.models import create_model, model_options
from mtrec.training.checkpoint import CONFIG, SCHEMA
from mtrec.training.config import RunConfig
from mtrec.training.plots import plot_learning_curves, plot_roc
from mtrec.training.trainer import Trainer

METRICS = "metrics.json"


def oracle_metrics(dataset: PreparedDataset) -> dict[str, dict[str, float]] | None:
    """Test AUC of the true probabilities per task, when the data has them (synthetic)."""
    if dataset.oracle is None:
        return None
    from mtrec.data.synthetic import oracle_auc

    return {task: {"auc": value} for task, value in oracle_auc(dataset, "test").items()}


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def train_run(
    config: RunConfig,
    out_dir: str | Path,
    dataset: PreparedDataset | None = None,
    log: Callable[[str], None] = tqdm.write,
) -> dict[str, Any]:
    """Train ``config.model`` on ``config.data`` (or the given dataset) and write the run directory.

    Returns the metrics written to ``metrics.json``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg = config.train
    torch.set_num_threads(cfg.num_threads or os.cpu_count() or 1)
    config.model_options = model_options(config.model, config.model_options)
    if dataset is None:
        dataset = load_data(config.data)
    torch.manual_seed(cfg.seed)
    model = create_model(config.model, dataset.schema, **config.model_options)
    dataset.schema.save(out / SCHEMA)
    config.save(out / CONFIG)
    encoders = dataset.path / ENCODERS_FILE if dataset.path is not None else None
    if encoders is not None and encoders.is_file():
        atomic_write_bytes(out / ENCODERS_FILE, encoders.read_bytes())
    log(f"training {config.model} ({count_parameters(model):,} parameters) on {config.data}: "
        f"{dataset.split_size('train'):,} train rows")
    result = Trainer(model, cfg, out, log).fit(dataset)
    metrics: dict[str, Any] = {
        "model": config.model,
        "data": config.data,
        "tasks": dataset.schema.task_names,
        "test": result.test,
        "valid": result.valid,
        "best_epoch": result.best_epoch,
        "epochs_run": len(result.history),
        "train_samples_per_s": result.train_samples_per_s,
        "params": count_parameters(model),
        "seed": cfg.seed,
        "machine": {"torch": torch.__version__, "threads": torch.get_num_threads(),
                    "device": str(next(model.parameters()).device), "platform": platform.platform()},
    }
    if is_synthetic(config.data) or dataset.oracle is not None:
        metrics["oracle"] = oracle_metrics(dataset)
    atomic_write_text(out / METRICS, json.dumps(metrics, indent=2) + "\n")
    plot_learning_curves(result.history, dataset.schema.task_names, out / "learning_curves.png")
    predictions = result.test_predictions
    plot_roc(predictions.probs, predictions.labels, predictions.masks, out / "roc.png")
    return metrics
