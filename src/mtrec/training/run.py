"""One training run end to end: data, model, objective, trainer, artefacts (the library behind ``mtrec
train``). The files of the run directory are listed in :mod:`mtrec.training.rundir`.

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
from mtrec.models import create_model, model_options
from mtrec.training import distributed
from mtrec.training.checkpoint import CONFIG
from mtrec.training.config import ConfigError, RunConfig, resolved_objective
from mtrec.training.rundir import RunDirectory
from mtrec.training.trainer import Trainer


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
    run_dir = RunDirectory(out)
    run_dir.check()
    torch.set_num_threads(cfg.num_threads or distributed.threads_per_process(ctx))
    config.model_options = model_options(config.model, config.model_options)
    if resume:
        check_resumable(config, out)
    if dataset is None:
        dataset = load_data(config.data)
    torch.manual_seed(cfg.seed)
    model = create_model(config.model, dataset.schema, **config.model_options)
    cfg.objective, cfg.objective_options = resolved_objective(cfg, model.default_objective)
    params = count_parameters(model)  # before the trainer: sharded tables leave each rank only its part
    trainer = Trainer(model, cfg, run_dir, log)  # checks the weighting options before anything is written
    if ctx.is_main:
        run_dir.start(dataset, config)
    ranks = f" on {ctx.world_size} processes" if ctx.enabled else ""
    log(f"training {config.model} ({params:,} parameters, objective {cfg.objective}) on "
        f"{config.data}: {dataset.split_size('train'):,} train rows{ranks}")
    result = trainer.fit(dataset, resume=resume)
    metrics: dict[str, Any] = {
        "model": config.model,
        "data": config.data,
        "tasks": dataset.schema.task_names,
        "test": result.test,
        "valid": result.valid,
        "objective": cfg.objective,
        "select": cfg.select,
        "best_epoch": max(result.best_epochs.values()),
        "best_epochs": result.best_epochs,
        "epochs_run": len(result.history),
        "train_samples_per_s": result.train_samples_per_s,
        "samples_seen": result.samples_seen,
        "skipped_batches": result.skipped_batches,
        "warnings": result.warnings,
        "params": params,
        "embedding": result.embedding,
        "seed": cfg.seed,
        "machine": {"torch": torch.__version__, "threads": torch.get_num_threads(), "processes": ctx.world_size,
                    "device": str(next(model.parameters()).device), "platform": platform.platform()},
    }
    if is_synthetic(config.data) or dataset.oracle is not None:
        metrics["oracle"] = oracle_metrics(dataset)
    if ctx.is_main:
        run_dir.write_metrics(metrics)
        predictions = result.test_predictions
        run_dir.write_plots(result.history, dataset.schema, predictions.probs, predictions.labels, predictions.masks)
    return metrics
