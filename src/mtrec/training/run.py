"""One training run end to end: data, model, objective, trainer, artefacts (the library behind ``mtrec
train``). The files of the run directory are listed in :mod:`mtrec.training.rundir`.

Under ``torchrun`` every rank runs this function; only rank 0 logs and writes.
"""

from __future__ import annotations

import platform
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from mtrec.data.dataset import PreparedDataset
from mtrec.data.source import is_synthetic, load_data
from mtrec.devices import check_device
from mtrec.locks import locked_directory
from mtrec.metrics.scenarios import scenario_names
from mtrec.training import distributed
from mtrec.training.build import build_run, resolve_config
from mtrec.training.callbacks import TrainerCallback
from mtrec.training.checkpointer import check_resumable
from mtrec.training.config import RunConfig, TrainConfig
from mtrec.training.evaluate import Predictions
from mtrec.training.gradient_conflict import GradientConflictLogger
from mtrec.training.rundir import RunDirectory
from mtrec.training.state import TrainState
from mtrec.training.tensorboard import TensorBoardLogger
from mtrec.training.trainer import Trainer


def oracle_metrics(dataset: PreparedDataset) -> dict[str, dict[str, float]] | None:
    """The test metrics of the true probabilities (binary tasks) and expected values (value tasks), when the
    data has them (synthetic)."""
    if dataset.oracle is None:
        return None
    from mtrec.metrics.oracle import oracle_metrics as synthetic_oracle

    return synthetic_oracle(dataset, "test")


def scenario_metrics(dataset: PreparedDataset, test: Predictions) -> dict[str, Any]:
    """For a dataset with a scenario: the test metrics per (scenario, task), ``test_by_scenario``, and the
    oracle's, ``oracle_by_scenario``, when the data has one; nothing otherwise."""
    if dataset.schema.scenario is None:
        return {}
    from mtrec.metrics.oracle import oracle_metrics_by_scenario

    found = {"test_by_scenario": test.metrics_by_scenario(scenario_names(dataset.schema, dataset.load_encoders()))}
    return found if dataset.oracle is None else {**found, "oracle_by_scenario": oracle_metrics_by_scenario(dataset)}


def monitors(cfg: TrainConfig, run_dir: RunDirectory, dataset: PreparedDataset, resume: bool,
             is_main: bool) -> list[TrainerCallback]:
    """The callbacks the train settings ask for: gradient conflict (``log_gradient_conflict``), then
    TensorBoard (``log_to``; it logs the conflict measured before it). A fresh run's TensorBoard starts
    anew; a resumed one adds to it."""
    watchers: list[TrainerCallback] = []
    if cfg.log_gradient_conflict:
        watchers.append(GradientConflictLogger(dataset, cfg.log_every, cfg.seed))
    if "tensorboard" in cfg.log_to and is_main:
        watchers.append(TensorBoardLogger(run_dir, cfg.log_every, resume))
    return watchers


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


class RunDescription(TrainerCallback):
    """Writes the run's description (schema, resolved config, encoders) once the trainer has read and
    checked what it starts from, so that a refused resume writes nothing."""

    def __init__(self, run_dir: RunDirectory, dataset: PreparedDataset, config: RunConfig) -> None:
        self.run_dir, self.dataset, self.config = run_dir, dataset, config

    def on_fit_start(self, trainer: Trainer, state: TrainState) -> None:
        if trainer.dist.is_main:
            self.run_dir.start(self.dataset, self.config)


def train_run(
    config: RunConfig,
    out_dir: str | Path,
    dataset: PreparedDataset | None = None,
    log: Callable[[str], None] = tqdm.write,
    resume: bool = False,
    callbacks: Sequence[TrainerCallback] = (),
    overwrite: bool = False,
) -> dict[str, Any]:
    """Train ``config.model`` on ``config.data`` (or the given dataset) and write the run directory.

    ``resume``: continue from the run directory's last checkpoint (a fresh start if it has none).
    ``callbacks``: hooks into the training loop (see :class:`~mtrec.training.callbacks.TrainerCallback`).
    A finished run in ``out_dir`` is continued only with ``resume`` and replaced only with ``overwrite``.
    The run directory is locked while the run writes it (a second process is refused).
    Launched by ``torchrun``, joins the process group and trains data-parallel. Returns the metrics
    written to ``metrics.json``.
    """
    check_device(config.train.device, "train.device")
    run_dir = RunDirectory(Path(out_dir))
    with distributed.process_group(config.train.device) as ctx:
        run_dir.check()
        run_dir.check_replaceable(resume, overwrite)
        with locked_directory(run_dir.path, "run directory") if ctx.is_main else nullcontext():
            return _train(config, run_dir, dataset, log if ctx.is_main else (lambda _: None), resume, ctx,
                          callbacks)


def _train(
    config: RunConfig,
    run_dir: RunDirectory,
    dataset: PreparedDataset | None,
    log: Callable[[str], None],
    resume: bool,
    ctx: distributed.DistContext,
    callbacks: Sequence[TrainerCallback],
) -> dict[str, Any]:
    config = resolve_config(config)  # as the run directory saves it
    cfg = config.train
    torch.set_num_threads(cfg.num_threads or distributed.threads_per_process(ctx))
    if resume:
        check_resumable(config, run_dir.path)
    if dataset is None:
        dataset = load_data(config.data)
    torch.manual_seed(cfg.seed)
    model, objective, weighting = build_run(config, dataset.schema)  # checks every option before writing
    params = count_parameters(model)  # before the trainer: sharded tables leave each rank only its part
    describe = RunDescription(run_dir, dataset, config)
    watchers = monitors(cfg, run_dir, dataset, resume, ctx.is_main)
    trainer = Trainer(model, cfg, run_dir, log, parts=(objective, weighting),
                      callbacks=[describe, *watchers, *callbacks])
    ranks = f" on {ctx.world_size} processes" if ctx.enabled else ""
    train_rows = f"{dataset.split_size('train'):,} train rows"
    if cfg.train_fraction < 1.0:
        subset = dataset.split_size("train", cfg.train_fraction)
        train_rows = f"{subset:,} train rows ({cfg.train_fraction:g} of {train_rows})"
    log(f"training {config.model} ({params:,} parameters, objective {cfg.objective}) on "
        f"{config.data}: {train_rows}{ranks}")
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
        **trainer.precision.record(),
        "machine": {"torch": torch.__version__, "threads": torch.get_num_threads(), "processes": ctx.world_size,
                    "device": str(next(model.parameters()).device), "platform": platform.platform()},
    }
    if is_synthetic(config.data) or dataset.oracle is not None:
        metrics["oracle"] = oracle_metrics(dataset)
    metrics.update(scenario_metrics(dataset, result.test_predictions))
    if ctx.is_main:
        run_dir.write_metrics(metrics)
        predictions = result.test_predictions
        run_dir.write_plots(result.history, dataset.schema, predictions.probs, predictions.labels, predictions.masks)
    return metrics
