"""The training loop, and nothing else: batches in, optimizer steps, validation, early stopping.

The trainer calls only the model interface (``forward``, ``losses``, ``probabilities``) and the weighting
strategy's ``combine``; it never branches on a model's class.

The same loop runs on one process or under ``torchrun`` (see :mod:`mtrec.training.distributed`): each
rank steps on its share of every batch, DDP averages the gradients, validation and test predictions are
gathered from all ranks before metrics are computed, and only rank 0 logs and writes. A run can be
resumed from ``resume.safetensors`` (:mod:`mtrec.training.resume`), written every
``checkpoint_every`` steps and at each epoch end; a non-finite loss stops the run or skips the batch
(:mod:`mtrec.training.nonfinite`) and never reaches a written file.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from mtrec.data.batches import Batch, BatchIterator
from mtrec.data.dataset import PreparedDataset
from mtrec.io import atomic_write_text
from mtrec.models import MultiTaskModel
from mtrec.objectives.weighting import WeightingStrategy, create_weighting
from mtrec.training import distributed
from mtrec.training.callbacks import EarlyStopping, EpochLog
from mtrec.training.checkpoint import WEIGHTS, save_weights
from mtrec.training.config import TrainConfig
from mtrec.training.evaluate import Predictions, predict_split
from mtrec.training.nonfinite import (
    TOTAL,
    LossWatch,
    NonFiniteLossError,
    NonFiniteParametersError,
    all_finite_everywhere,
    nonfinite_parameters,
)
from mtrec.training.optimizers import build_optimizers
from mtrec.training.placement import create_placement
from mtrec.training.resume import RESUME, ResumeError, remove_checkpoint, remove_stale_temporaries

WARMUP_STEPS = 3  # steps excluded from the throughput figure
# settings a resumed run must share with the checkpoint (others, e.g. epochs or patience, may change)
RESUME_FIXED = ("batch_size", "seed", "lr", "weight_decay", "weighting", "weighting_options", "embedding_sharding",
                "embedding_optimizer")


def validation_score(metrics: dict[str, dict[str, float]]) -> float:
    """Model-selection score: mean validation AUC over tasks (tasks with an undefined AUC skipped)."""
    values = [m["auc"] for m in metrics.values() if not math.isnan(m["auc"])]
    return sum(values) / len(values) if values else -math.inf


@dataclass
class FitResult:
    best_epoch: int
    valid: dict[str, dict[str, float]]
    test: dict[str, dict[str, float]]
    test_predictions: Predictions
    train_samples_per_s: float
    history: list[dict[str, Any]] = field(default_factory=list)
    samples_seen: int = 0  # rows trained on over all epochs and ranks (a resumed run counts all of them)
    skipped_batches: int = 0  # steps skipped for a non-finite loss (train.on_nonfinite: skip)
    embedding: dict[str, Any] = field(default_factory=dict)  # the tables' sharding and bytes per rank


@dataclass
class TrainState:
    """A run's progress: what a resume checkpoint restores besides modules and RNG states."""

    stopper: EarlyStopping
    epoch: int = 0  # the epoch in progress (= epochs completed)
    step: int = 0  # steps completed within it
    global_step: int = 0
    samples: int = 0
    skipped_batches: int = 0
    epoch_loss: dict[str, float] = field(default_factory=dict)  # sum over the epoch's trained steps
    epoch_trained_steps: int = 0
    best_valid: dict[str, dict[str, float]] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainState:
        return cls(**{**data, "stopper": EarlyStopping(**data["stopper"])})


class LossStep(nn.Module):
    """The model and the weighting strategy as one module whose forward returns the loss, so that DDP
    averages the gradients of both (a learned weighting's parameters included)."""

    def __init__(self, model: MultiTaskModel, weighting: WeightingStrategy) -> None:
        super().__init__()
        self.model = model
        self.weighting = weighting

    def forward(self, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The scalar loss to minimise, and every named loss term (task losses, auxiliary terms)."""
        losses = self.model.losses(self.model(batch), batch)
        task_losses = {t: losses[t] for t in self.model.task_names}
        loss = self.weighting.combine(task_losses, self.model)
        for name, term in losses.items():
            if name not in task_losses:
                loss = loss + term
        return loss, losses


def _quiet(_: str) -> None:
    """The log of ranks other than 0."""


class Trainer:
    """Trains ``model`` on a prepared dataset's train split, selects on valid, evaluates test once."""

    def __init__(
        self,
        model: MultiTaskModel,
        config: TrainConfig,
        out_dir: Path | None = None,
        log: Callable[[str], None] = tqdm.write,
    ) -> None:
        self.config = config
        self.dist = distributed.current()
        self.device = distributed.resolve_device(config.device, self.dist)
        self.model = model.to(self.device)
        self.weighting: WeightingStrategy = create_weighting(
            config.weighting, model.task_names, **config.weighting_options
        ).to(self.device)
        self.out_dir = out_dir
        self.writes = out_dir is not None and self.dist.is_main
        self.log = log if self.dist.is_main else _quiet
        self.placement = create_placement(config, self.model, self.device, self.log)
        self.loss_step = self.placement.wrap(LossStep(self.model, self.weighting))
        self.optimizer = build_optimizers(config, [*self.placement.dense_parameters(), *self.weighting.parameters()],
                                          self.placement.table_parameters(), self.device)
        self.watch = LossWatch(self.device)
        self.best_state: dict[str, torch.Tensor] = {}
        self.steps_per_epoch = 0

    # ---- one step -----------------------------------------------------------------------------
    def _step(self, batch: Batch, state: TrainState) -> torch.Tensor | None:
        """Forward, backward and update on one batch; the task losses ``[T]``, or None if skipped."""
        loss, terms = self.loss_step(batch)
        finite = self.watch.observe(state.global_step, {**terms, TOTAL: loss})
        if self.config.on_nonfinite == "skip" and not all_finite_everywhere(finite):
            bad = [n for n, ok in zip(self.watch.names, finite.tolist(), strict=True) if not ok]
            where = f"of {self._describe(bad)}" if bad else "on another rank"
            self.log(f"skipped epoch {state.epoch} step {state.step}: non-finite loss {where}")
            state.skipped_batches += 1
            return None
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return torch.stack([terms[t].detach() for t in self.model.task_names])

    def _train_epoch(self, batches: BatchIterator, state: TrainState, first_epoch: bool) -> tuple[int, float]:
        """The rest of the current epoch; returns rows (all ranks) after warm-up, and their seconds."""
        cfg = self.config
        self.loss_step.train()
        local_loss = torch.zeros(len(self.model.task_names), device=self.device)  # [T] since last fold
        timed_rows, start, session_steps = 0, time.perf_counter(), 0
        progress = tqdm(batches, total=self.steps_per_epoch, initial=state.step, desc=f"epoch {state.epoch}",
                        leave=False, unit="batch", disable=None if self.dist.is_main else True)
        for batch in progress:
            if first_epoch and session_steps == WARMUP_STEPS:
                timed_rows, start = 0, time.perf_counter()
            task_losses = self._step(batch.to(self.device, non_blocking=True), state)
            if task_losses is not None:
                local_loss += task_losses
                state.samples += batch.step_rows
                state.epoch_trained_steps += 1
            timed_rows += batch.step_rows
            state.step, state.global_step, session_steps = state.step + 1, state.global_step + 1, session_steps + 1
            if cfg.on_nonfinite == "stop" and state.global_step % cfg.nonfinite_check_every == 0:
                self._check_losses()
            if cfg.checkpoint_every and state.global_step % cfg.checkpoint_every == 0 \
                    and state.step < self.steps_per_epoch:
                self._fold_loss(state, local_loss)
                self._save_resume(state)
        self._fold_loss(state, local_loss)
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        return timed_rows, time.perf_counter() - start

    def _fold_loss(self, state: TrainState, local_loss: torch.Tensor) -> None:
        """Add the ranks' loss sums since the last fold to ``state.epoch_loss`` (a collective).

        A rank's task loss is its share of the step's mean scaled by the world size (see
        :func:`mtrec.objectives.losses.step_mean`), so the step's mean is the ranks' average.
        """
        summed = distributed.all_reduce_(local_loss.clone()) / self.dist.world_size
        for task, value in zip(self.model.task_names, summed.tolist(), strict=True):
            state.epoch_loss[task] = state.epoch_loss.get(task, 0.0) + value
        local_loss.zero_()

    # ---- guards -------------------------------------------------------------------------------
    def _check_losses(self) -> None:
        """Raise NonFiniteLossError if any rank saw a non-finite loss (stop mode; a collective)."""
        if self.config.on_nonfinite != "stop":
            return
        failure = self.watch.first_failure()
        if failure is None:
            return
        step, names = failure
        epoch, in_epoch = divmod(step, max(self.steps_per_epoch, 1))
        where = f"; the last good checkpoint is {self.out_dir / RESUME}" if self.out_dir is not None else ""
        raise NonFiniteLossError(
            f"non-finite loss of {self._describe(names)} at epoch {epoch} step {in_epoch} "
            f"(optimizer step {step}); stopped before writing anything from it{where}. Lower train.lr, "
            f"check the data for NaN/inf values, or set train.on_nonfinite: skip to skip such batches"
        )

    def _describe(self, names: list[str]) -> str:
        """``task 'conversion'``, ``tasks 'click', 'conversion'``, ``loss term 'aux'``; the weighted total
        only when no term itself was bad."""
        terms = [n for n in names if n != TOTAL] or names
        tasks = [repr(n) for n in terms if n in self.model.task_names]
        others = [repr(n) for n in terms if n not in self.model.task_names]
        parts = [f"task{'s' * (len(tasks) > 1)} {', '.join(tasks)}"] if tasks else []
        parts += [f"loss term{'s' * (len(others) > 1)} {', '.join(others)}"] if others else []
        return " and ".join(parts)

    def _check_parameters(self) -> None:
        """Refuse to go on (and so to write) with non-finite weights, whatever the losses said."""
        bad = nonfinite_parameters(self.model) + [f"weighting.{n}" for n in nonfinite_parameters(self.weighting)]
        # a collective: with sharded tables a rank may hold the only bad shard
        if distributed.all_reduce_(torch.tensor([len(bad)], device=self.device), "max").item():
            raise NonFiniteParametersError(
                f"parameters became non-finite (first: {bad[:3] or 'on another rank'}) although every loss was "
                f"finite; nothing was written from them. Lower train.lr"
            )

    # ---- evaluation ---------------------------------------------------------------------------
    def _predict(self, dataset: PreparedDataset, split: str) -> Predictions:
        """The whole split's predictions: each rank scores its block, then all are gathered."""
        part = distributed.block_of(dataset.split_size(split), self.dist)
        batch_size = self.config.eval_batch_size
        local = predict_split(self.model, dataset, split, batch_size, self.device, part,
                              min_batches=self.placement.eval_batches(dataset.split_size(split), batch_size))
        return distributed.gather_predictions(local, self.device)

    def _finish_epoch(self, dataset: PreparedDataset, state: TrainState, history: EpochLog,
                      rows: int, seconds: float) -> None:
        self._check_losses()
        train_loss = {t: v / max(state.epoch_trained_steps, 1) for t, v in state.epoch_loss.items()}
        valid = self._predict(dataset, "valid").metrics()
        score = validation_score(valid)
        improved = state.stopper.update(score, state.epoch)
        row = {
            "epoch": state.epoch, "train_loss": train_loss, "valid": valid, "valid_score": score,
            "samples_per_s": rows / seconds if seconds > 0 else 0.0,
            "task_weights": self.weighting.current_weights(),
        }
        state.history.append(row)
        summary = "  ".join(f"{t} {m['auc']:.4f}" for t, m in valid.items())
        self.log(f"epoch {state.epoch}: train loss {sum(train_loss.values()):.4f}  valid AUC {summary}"
                 f"{'  *best*' if improved else ''}")
        if improved:
            state.best_valid = valid
            self.best_state = self.placement.snapshot()
        state.epoch, state.step, state.epoch_loss, state.epoch_trained_steps = state.epoch + 1, 0, {}, 0
        self._save_resume(state)  # checks losses and parameters first, so nothing non-finite is written
        if improved:  # (a kill before this write is mended by resuming: _restore writes it)
            self._write_best()
        history.append(row)
        if state.stopper.should_stop:
            self.log(f"early stop: no better validation AUC for {state.stopper.bad_epochs} epochs")

    # ---- resume -------------------------------------------------------------------------------
    def _settings(self) -> dict[str, Any]:
        return {name: getattr(self.config, name) for name in RESUME_FIXED}

    def _rng_state(self) -> dict[str, Any]:
        """RNG states: torch (CPU, and CUDA) per rank, Python and NumPy of rank 0. A collective."""
        state: dict[str, Any] = {
            "torch": distributed.all_gather_equal(torch.get_rng_state().to(self.device)),
            "python": random.getstate(),
            "numpy": np.random.get_state(),
        }
        if self.device.type == "cuda":
            state["cuda"] = distributed.all_gather_equal(torch.cuda.get_rng_state(self.device).to(self.device))
        return state

    def _set_rng_state(self, state: dict[str, Any]) -> None:
        """Each rank takes its own saved state (rank 0's when the world size has changed)."""
        def mine(states: list[torch.Tensor]) -> torch.Tensor:
            return states[self.dist.rank if len(states) == self.dist.world_size else 0].cpu()

        torch.set_rng_state(mine(state["torch"]))
        if "cuda" in state and self.device.type == "cuda":
            torch.cuda.set_rng_state(mine(state["cuda"]), self.device)
        random.setstate(state["python"])
        np.random.set_state(state["numpy"])

    def _write_best(self) -> None:
        """Write the best weights, gathered whole, to ``model.safetensors`` (rank 0; a collective)."""
        full = self.placement.full_state(self.best_state)
        if self.writes:
            assert self.out_dir is not None
            save_weights(self.out_dir / WEIGHTS, full)

    def _save_resume(self, state: TrainState) -> None:
        """Write the resume checkpoint after checking that nothing non-finite goes in it."""
        self._check_losses()
        self._check_parameters()
        if self.out_dir is None:  # the same on every rank
            return
        common = {
            "settings": self._settings(),
            "steps_per_epoch": self.steps_per_epoch,
            "progress": state.to_dict(),
            "weighting": self.weighting.state_dict(),
            "rng": self._rng_state(),
        }
        held = {"model": self.placement.held(), "best": self.best_state, "optimizer": self.optimizer.state_dict(),
                **self.placement.extra_state()}
        self.placement.save_checkpoint(self.out_dir, common, held, state.global_step)

    def _restore(self, state: TrainState, history: EpochLog) -> TrainState:
        """Load ``resume.safetensors`` if there is one; the state to continue from."""
        assert self.out_dir is not None
        path = self.out_dir / RESUME
        if self.dist.is_main:
            remove_stale_temporaries(self.out_dir)
        if not path.exists():
            self.log(f"--resume: no checkpoint at {path}, starting from the beginning")
            return state
        saved, held = self.placement.load_checkpoint(self.out_dir)
        defaults = TrainConfig()  # a checkpoint written before a setting existed had its default
        settings = {k: saved["settings"].get(k, getattr(defaults, k)) for k in RESUME_FIXED}
        changed = [f"train.{k}: {settings[k]!r} -> {v!r}" for k, v in self._settings().items() if settings[k] != v]
        if changed:
            raise ResumeError(f"{path}: cannot resume with changed settings ({'; '.join(changed)}); "
                              f"use the checkpoint's settings or start a new run directory")
        if saved["steps_per_epoch"] != self.steps_per_epoch:
            raise ResumeError(f"{path}: the checkpoint has {saved['steps_per_epoch']} steps per epoch, this "
                              f"run {self.steps_per_epoch}: not the same training data")
        try:
            self.placement.restore(held["model"])
            self.weighting.load_state_dict(saved["weighting"])
            self.optimizer.load_state_dict(held["optimizer"])
            self.placement.load_extra_state(held)
        except (RuntimeError, ValueError, KeyError) as exc:
            raise ResumeError(f"{path}: does not fit this model and optimizer ({exc})") from exc
        self.best_state = {k: v.to(self.device) for k, v in held["best"].items()}
        self._set_rng_state(saved["rng"])
        state = TrainState.from_dict(saved["progress"])
        self.log(f"resumed from {path}: epoch {state.epoch} step {state.step}, "
                 f"{state.samples:,} samples trained so far")
        if self.best_state:  # make the run directory agree with the checkpoint
            self._write_best()
        elif self.writes:
            (self.out_dir / WEIGHTS).unlink(missing_ok=True)
        history.rows = list(state.history)
        return state

    # ---- the run ------------------------------------------------------------------------------
    def fit(self, dataset: PreparedDataset, resume: bool = False) -> FitResult:
        """Train, select on valid, evaluate test once. ``resume``: continue from ``out_dir``'s
        ``resume.safetensors`` when it exists (else start from the beginning)."""
        cfg = self.config
        batches = BatchIterator(
            dataset, "train", cfg.batch_size, shuffle=True, seed=cfg.seed, prefetch=cfg.prefetch,
            rank=self.dist.rank, world_size=self.dist.world_size,
        )
        self.steps_per_epoch = len(batches)
        history = EpochLog(self.out_dir / "history.jsonl" if self.writes and self.out_dir else None)
        state = TrainState(stopper=EarlyStopping(cfg.patience))
        if resume:
            if self.out_dir is None:
                raise ResumeError("resuming needs the run directory (out_dir) that holds the checkpoint")
            state = self._restore(state, history)
        elif self.writes:
            assert self.out_dir is not None
            remove_checkpoint(self.out_dir)  # a fresh run must not resume an older one
        if history.path is not None:
            atomic_write_text(history.path, "".join(EpochLog.line(row) for row in history.rows))
        rows, seconds = 0, 0.0
        first = True
        while state.epoch < cfg.epochs and not state.stopper.should_stop:
            batches.set_epoch(state.epoch, start_step=state.step)
            n, s = self._train_epoch(batches, state, first)
            rows, seconds, first = rows + n, seconds + s, False
            self._finish_epoch(dataset, state, history, n, s)
        if self.best_state:
            self.placement.restore(self.best_state)
        else:
            self.log("no epoch improved the validation score; keeping the last weights")
        test_predictions = self._predict(dataset, "test")
        return FitResult(
            best_epoch=state.stopper.best_epoch,
            valid=state.best_valid,
            test=test_predictions.metrics(),
            test_predictions=test_predictions,
            train_samples_per_s=rows / seconds if seconds > 0 else 0.0,
            history=list(state.history),
            samples_seen=state.samples,
            skipped_batches=state.skipped_batches,
            embedding=self.placement.summary(self.optimizer),
        )
