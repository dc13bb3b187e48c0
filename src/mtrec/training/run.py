"""One training run end to end: data, model, trainer, artefacts (the library behind ``mtrec train``).

A run directory receives ``config.json``, ``schema.json``, ``model.safetensors`` (best epoch),
``history.jsonl``, ``metrics.json``, ``learning_curves.png``, ``roc.png`` and ``resume.safetensors``
(the checkpoint ``--resume`` continues from); when the data is a dataset prepared from raw files, also
its ``encoders.json`` (raw values -> model input, for serving).

Under ``torchrun`` every rank runs this function; only rank 0 logs and writes.
"""

from __future__ import annotations

import json
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
from mtrec.training import distributed
from mtrec.training.checkpoint import CONFIG, SCHEMA
from mtrec.training.config import ConfigError, RunConfig
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


def check_resumable(config: RunConfig, out: Path) -> None:
    """Refuse to resume a run directory whose saved config names another model, data or model options."""
    path = out / CONFIG
    if not path.exists():
        return
    saved = RunConfig.load(path).to_dict()
    current = json.loads(json.dumps(config.to_dict()))  # as saved: tuples become lists
    changed = [f"{key}: {saved[key]!r} -> {current[key]!r}"
               for key in ("model", "data", "model_options") if saved[key] != current[key]]
    if changed:
        raise ConfigError(f"cannot resume {out}: the run was started with other settings ({'; '.join(changed)})")


def train_run(
    config: RunConfig,
    out_dir: str | Path,
    dataset: PreparedDataset | None = None,
    log: Callable[[str], None] = tqdm.write,
    resume: bool = False,
) -> dict[str, Any]:
    """Train ``config.model`` on ``config.data`` (or the given dataset) and write the run directory.

    ``resume``: continue from the run directory's last checkpoint (a fresh start if it has none).
    Launched by ``torchrun``, joins the process group and trains data-parallel. Returns the metrics
    written to ``metrics.json``.
    """
    with distributed.process_group(config.train.device) as ctx:
        return _train(config, Path(out_dir), dataset, log if ctx.is_main else (lambda _: None), resume, ctx)


def _train(
    config: RunConfig,
    out: Path,
    dataset: PreparedDataset | None,
    log: Callable[[str], None],
    resume: bool,
    ctx: distributed.DistContext,
) -> dict[str, Any]:
    cfg = config.train
    torch.set_num_threads(cfg.num_threads or distributed.threads_per_process(ctx))
    config.model_options = model_options(config.model, config.model_options)
    if resume:
        check_resumable(config, out)
    if dataset is None:
        dataset = load_data(config.data)
    torch.manual_seed(cfg.seed)
    model = create_model(config.model, dataset.schema, **config.model_options)
    if ctx.is_main:
        out.mkdir(parents=True, exist_ok=True)
        dataset.schema.save(out / SCHEMA)
        config.save(out / CONFIG)
        encoders = dataset.path / ENCODERS_FILE if dataset.path is not None else None
        if encoders is not None and encoders.is_file():
            atomic_write_bytes(out / ENCODERS_FILE, encoders.read_bytes())
    ranks = f" on {ctx.world_size} processes" if ctx.enabled else ""
    params = count_parameters(model)  # before training: sharding leaves each rank only its part
    log(f"training {config.model} ({params:,} parameters) on {config.data}: "
        f"{dataset.split_size('train'):,} train rows{ranks}")
    result = Trainer(model, cfg, out, log).fit(dataset, resume=resume)
    metrics: dict[str, Any] = {
        "model": config.model,
        "data": config.data,
        "tasks": dataset.schema.task_names,
        "test": result.test,
        "valid": result.valid,
        "best_epoch": result.best_epoch,
        "epochs_run": len(result.history),
        "train_samples_per_s": result.train_samples_per_s,
        "samples_seen": result.samples_seen,
        "skipped_batches": result.skipped_batches,
        "params": params,
        "embedding": result.embedding,
        "seed": cfg.seed,
        "machine": {"torch": torch.__version__, "threads": torch.get_num_threads(), "processes": ctx.world_size,
                    "device": str(next(model.parameters()).device), "platform": platform.platform()},
    }
    if is_synthetic(config.data) or dataset.oracle is not None:
        metrics["oracle"] = oracle_metrics(dataset)
    if ctx.is_main:
        from mtrec.training.plots import plot_learning_curves, plot_roc  # matplotlib: rank 0 only

        atomic_write_text(out / METRICS, json.dumps(metrics, indent=2) + "\n")
        plot_learning_curves(result.history, dataset.schema.task_names, out / "learning_curves.png")
        predictions = result.test_predictions
        plot_roc(predictions.probs, predictions.labels, predictions.masks, out / "roc.png")
    return metrics
