"""The training loop, and nothing else: batches in, optimizer steps, validation, early stopping.

The trainer calls only the model's ``forward``, ``shared_parameters`` and ``shared_representation``, the
objective's ``losses`` and the weighting strategy's ``combine``; it never branches on a model's class.
Beside the loop:
:class:`~mtrec.training.checkpointer.Checkpointer` (resume state), :class:`~mtrec.training.selection.
ModelSelection` (``train.select``: which epoch's weights are kept), :class:`~mtrec.training.guards.Guards`
(non-finite losses and weights, divergence) and the :class:`~mtrec.training.callbacks.TrainerCallback`
hooks. Files go through the run directory's one writer (:class:`~mtrec.training.rundir.RunDirectory`).

The same loop runs on one process or under ``torchrun`` (see :mod:`mtrec.training.distributed`): each
rank steps on its share of every batch, DDP averages the gradients, validation and test predictions are
gathered from all ranks before metrics are computed, and only rank 0 logs and writes. A run can be
resumed from ``resume.safetensors``, written every ``checkpoint_every`` steps and at each epoch end; a
non-finite loss stops the run or skips the batch (:mod:`mtrec.training.nonfinite`) and never reaches a
written file.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from mtrec import collectives
from mtrec.data.batches import Batch, BatchIterator
from mtrec.data.dataset import PreparedDataset
from mtrec.metrics import task_score
from mtrec.models import MultiTaskModel
from mtrec.nn.embedding import capturing
from mtrec.objectives.objective import Objective
from mtrec.objectives.scorer import Scorer
from mtrec.objectives.weighting import WeightingStrategy
from mtrec.training import distributed
from mtrec.training.build import objective_and_weighting
from mtrec.training.callbacks import EarlyStopping, TrainerCallback
from mtrec.training.checkpointer import Checkpointer
from mtrec.training.config import TrainConfig
from mtrec.training.evaluate import Predictions, predict_split
from mtrec.training.guards import Guards
from mtrec.training.nonfinite import TOTAL, all_finite_everywhere
from mtrec.training.optimizers import build_optimizers
from mtrec.training.placement import create_placement
from mtrec.training.precision import FP32, Precision, choose_precision
from mtrec.training.progress import EpochProgress
from mtrec.training.rundir import RunDirectory
from mtrec.training.selection import ModelSelection
from mtrec.training.state import TrainState

WARMUP_STEPS = 3  # steps excluded from the throughput figure


@dataclass
class FitResult:
    best_epochs: dict[str, int]  # per task: the epoch its evaluated weights come from
    valid: dict[str, dict[str, float]]
    test: dict[str, dict[str, float]]
    test_predictions: Predictions
    train_samples_per_s: float
    history: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # e.g. that training diverged
    embedding: dict[str, Any] = field(default_factory=dict)  # the tables' sharding and bytes per rank
    samples_seen: int = 0  # rows trained on over all epochs and ranks (a resumed run counts all of them)
    skipped_batches: int = 0  # steps skipped for a non-finite loss (train.on_nonfinite: skip)


class LossStep(nn.Module):
    """The model, the objective and the weighting strategy as one module whose forward returns the loss,
    so that DDP averages the gradients of all three (learned parameters of either included). The model
    runs in ``precision`` (:mod:`mtrec.training.precision`); the objective and the weighting in float32."""

    def __init__(self, model: MultiTaskModel, objective: Objective, weighting: WeightingStrategy,
                 precision: Precision = FP32) -> None:
        super().__init__()
        self.model = model
        self.objective = objective
        self.weighting = weighting
        self.precision = precision
        self.shared = model.shared_parameters()

    def forward(self, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The scalar loss to minimise, and every named loss term (task losses, auxiliary terms)."""
        source = self.model.shared_representation() if self.weighting.reads_representation else None
        with capturing(source) as representation:  # the shared representation, for a weighting that reads it
            outputs = self.precision.outputs(self.model, batch.features)
        losses = self.objective.losses(outputs, batch)
        task_losses = {t: losses[t] for t in self.model.task_names}
        loss = self.weighting.combine(task_losses, self.shared, representation)
        for name, term in losses.items():
            if name not in task_losses:
                loss = loss + term
        return loss, losses

    def compile_in_place(self) -> None:
        """``forward`` through torch.compile (inductor), compiled at the first call (``train.compile``)."""
        # TorchDynamo caches compiled graphs per code object (LossStep.forward here) and stops compiling
        # it after a few: a process that trains one model after another starts each from an empty cache
        torch._dynamo.reset()
        # in place: the modules' parameters and state-dict keys stay as they are. For any batch size
        # (dynamic): an epoch's last, smaller batch would otherwise compile the step a second time
        self.compile(dynamic=True)


def _quiet(_: str) -> None:
    """The log of ranks other than 0."""


class Trainer:
    """Trains ``model`` on a prepared dataset's train split, selects on valid, evaluates test once."""

    def __init__(
        self,
        model: MultiTaskModel,
        config: TrainConfig,
        run_dir: RunDirectory | None = None,
        log: Callable[[str], None] = tqdm.write,
        parts: tuple[Objective, WeightingStrategy] | None = None,
        callbacks: Sequence[TrainerCallback] = (),
    ) -> None:
        """``parts``: the objective and the weighting strategy (None: built from ``config``, see
        :func:`~mtrec.training.build.objective_and_weighting`). ``run_dir``: the run directory (None: write
        nothing, no resume); every rank reads its resume checkpoint, only rank 0 writes."""
        self.config = config
        self.dist = distributed.current()
        self.device = distributed.resolve_device(config.device, self.dist)
        self.model = model.to(self.device)
        objective, weighting = parts if parts is not None else objective_and_weighting(model, config)
        self.objective = objective.to(self.device)
        self.weighting = weighting.to(self.device)
        self.writer = run_dir if self.dist.is_main else None
        self.log = log if self.dist.is_main else _quiet
        self.callbacks = list(callbacks)
        self.precision = choose_precision(config.precision, self.device)
        self.log(f"precision: {self.precision.name} ({self.precision.reason})")
        self.scaler = self.precision.grad_scaler()  # fp16 only
        self.placement = create_placement(config, self.model, self.device, self.log)
        loss_step = LossStep(self.model, self.objective, self.weighting, self.precision)
        if config.compile:
            loss_step.compile_in_place()
        self.loss_step = self.placement.wrap(loss_step)
        dense = [*self.placement.dense_parameters(), *self.objective.parameters(), *self.weighting.parameters()]
        self.optimizer = build_optimizers(config, dense, self.placement.table_parameters(), self.device)
        self.guards = Guards(config, self.model, self.weighting, self.device, self.log)
        self.checkpointer = Checkpointer(run_dir, config)
        self.selection = ModelSelection(config.select, self.placement)
        self.scorer = Scorer(self.objective, self.model, model.registry_name)
        self.steps_per_epoch = 0
        self.epoch_rows = 0  # train rows of an epoch (all ranks)

    # ---- one step -----------------------------------------------------------------------------
    def _step(self, batch: Batch, state: TrainState) -> dict[str, torch.Tensor] | None:
        """Forward, backward and update on one batch; its loss terms (detached), or None if skipped."""
        loss, terms = self.loss_step(batch)
        finite = self.guards.watch.observe(state.global_step, {**terms, TOTAL: loss})
        if self.config.on_nonfinite == "skip" and not all_finite_everywhere(finite):
            bad = [n for n, ok in zip(self.guards.watch.names, finite.tolist(), strict=True) if not ok]
            where = f"of {self.guards.describe(bad)}" if bad else "on another rank"
            self.log(f"skipped epoch {state.epoch} step {state.step}: non-finite loss {where}")
            state.skipped_batches += 1
            return None
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is None:
            loss.backward()
            self.optimizer.step()
        else:  # fp16: backward on the scaled loss; a step whose gradients overflowed is skipped
            self.scaler.scale(loss).backward()
            self.optimizer.step(self.scaler)
        return {name: term.detach() for name, term in terms.items()}

    def _train_epoch(self, batches: BatchIterator, state: TrainState, first_epoch: bool) -> tuple[int, float]:
        """The rest of the current epoch; returns rows (all ranks) after warm-up, and their seconds."""
        cfg = self.config
        self.loss_step.train()
        local_loss = torch.zeros(len(self.model.task_names), device=self.device)  # [T] since last fold
        timed_rows, start, session_steps = 0, time.perf_counter(), 0
        progress = EpochProgress(state.epoch, self.epoch_rows, min(state.step * cfg.batch_size, self.epoch_rows),
                                 self.model.task_names, cfg.progress_seconds, self.log, self.dist.is_main)

        def loss_sum() -> torch.Tensor:  # [T] the epoch's so far
            folded = torch.tensor([state.epoch_loss.get(t, 0.0) for t in self.model.task_names])
            return folded + local_loss.cpu()

        for batch in batches:
            if first_epoch and session_steps == WARMUP_STEPS:
                timed_rows, start = 0, time.perf_counter()
            step_start = time.perf_counter()
            terms = self._step(batch.to(self.device, non_blocking=True), state)
            if cfg.compile and first_epoch and session_steps == 0:
                self.log(f"train.compile: the first step (compilation included) took "
                         f"{time.perf_counter() - step_start:.1f} s")
            if terms is not None:
                task_losses = torch.stack([terms[t] for t in self.model.task_names])  # [T]
                if not state.first_loss:  # one sync, once per run
                    first = collectives.all_reduce_(task_losses.clone()) / self.dist.world_size
                    state.first_loss = dict(zip(self.model.task_names, first.tolist(), strict=True))
                local_loss += task_losses
                state.samples += batch.step_rows
                state.epoch_trained_steps += 1
            timed_rows += batch.step_rows
            state.step, state.global_step, session_steps = state.step + 1, state.global_step + 1, session_steps + 1
            progress.update(batch.step_rows, loss_sum, state.epoch_trained_steps)
            for callback in self.callbacks:
                callback.on_step_end(self, state, terms)
            if cfg.on_nonfinite == "stop" and state.global_step % cfg.nonfinite_check_every == 0:
                self._check_losses()
            if self.checkpointer.due(self, state) and state.step < self.steps_per_epoch:
                self._fold_loss(state, local_loss)
                self._checkpoint(state)
        progress.close()
        self._fold_loss(state, local_loss)
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        return timed_rows, time.perf_counter() - start

    def _fold_loss(self, state: TrainState, local_loss: torch.Tensor) -> None:
        """Add the ranks' loss sums since the last fold to ``state.epoch_loss`` (a collective).

        A rank's task loss is its share of the step's mean scaled by the world size (see
        :func:`mtrec.objectives.losses.step_mean`), so the step's mean is the ranks' average.
        """
        summed = collectives.all_reduce_(local_loss.clone()) / self.dist.world_size
        for task, value in zip(self.model.task_names, summed.tolist(), strict=True):
            state.epoch_loss[task] = state.epoch_loss.get(task, 0.0) + value
        local_loss.zero_()

    def _check_losses(self) -> None:
        """Stop on a non-finite loss seen on any rank (see :meth:`Guards.check_losses`; a collective)."""
        self.guards.check_losses(self.steps_per_epoch, self.checkpointer.last_checkpoint())

    def _checkpoint(self, state: TrainState) -> None:
        """Write the resume checkpoint after checking that nothing non-finite goes in it."""
        self._check_losses()
        self.guards.check_parameters()
        self.checkpointer.save(self, state)

    # ---- evaluation ---------------------------------------------------------------------------
    def _predict(self, scorer: Scorer, dataset: PreparedDataset, split: str) -> Predictions:
        """The whole split's predictions: each rank scores its block, then all are gathered."""
        part = distributed.block_of(dataset.split_size(split), self.dist)
        batch_size = self.config.eval_batch_size
        local = predict_split(scorer, dataset, split, batch_size, self.device, part,
                              min_batches=self.placement.eval_batches(dataset.split_size(split), batch_size))
        return distributed.gather_predictions(local, self.device)

    def _finish_epoch(self, dataset: PreparedDataset, state: TrainState, rows: int, seconds: float) -> None:
        self._check_losses()
        train_loss = {t: v / max(state.epoch_trained_steps, 1) for t, v in state.epoch_loss.items()}
        self.guards.check_divergence(state, train_loss)
        valid = self._predict(self.scorer, dataset, "valid").metrics()
        scores = self.selection.scores(valid, first=state.history[0]["valid"] if state.history else valid)
        improved = state.stopper.update(scores, state.epoch)
        row = {
            "epoch": state.epoch, "train_loss": train_loss, "valid": valid, "valid_score": scores,
            "samples_per_s": rows / seconds if seconds > 0 else 0.0,
            "task_weights": self.weighting.current_weights(),
        }
        state.history.append(row)
        summary = "  ".join(f"{t} {task_score(m):.4f}" for t, m in valid.items())
        self.log(f"epoch {state.epoch}: train loss {sum(train_loss.values()):.4f}  valid {summary}"
                 f"{self.selection.mark(improved)}")
        self.selection.update(improved, valid, state.best_valid)
        state.epoch, state.step, state.epoch_loss, state.epoch_trained_steps = state.epoch + 1, 0, {}, 0
        self._checkpoint(state)  # checks losses and parameters first, so nothing non-finite is written
        selected = self.selection.selected_weights() if improved else None
        if self.writer is not None:
            if selected is not None:  # (a kill before this write is mended by resuming: fit rewrites it)
                self.writer.write_weights(selected)
            self.writer.append_history(row)
        if state.stopper.should_stop:
            self.log(f"early stop: no better validation score for {state.stopper.bad_epochs} epochs")
        for callback in self.callbacks:
            callback.on_epoch_end(self, state, row)

    # ---- the run ------------------------------------------------------------------------------
    def fit(self, dataset: PreparedDataset, resume: bool = False) -> FitResult:
        """Train, select on valid, evaluate test once. ``resume``: continue from the run directory's
        ``resume.safetensors`` when it exists (else start from the beginning)."""
        cfg = self.config
        train_rows = dataset.split_rows("train", cfg.train_fraction)
        batches = BatchIterator(
            dataset, "train", cfg.batch_size, shuffle=True, seed=cfg.seed, prefetch=cfg.prefetch,
            rank=self.dist.rank, world_size=self.dist.world_size, rows=train_rows,
        )
        self.steps_per_epoch, self.epoch_rows = len(batches), len(train_rows)
        state = TrainState(stopper=EarlyStopping(cfg.patience))
        if self.writer is not None:
            self.writer.remove_stale_temporaries()  # left by a killed run
        if resume:
            state = self.checkpointer.restore(self, state)
        for callback in self.callbacks:
            callback.on_fit_start(self, state)
        if not resume and self.writer is not None:
            self.writer.remove_resume()
        selected = self.selection.selected_weights() if self.selection.best_states else None
        if self.writer is not None:  # make the run directory agree with the state continued from
            self.writer.write_history(state.history)
            if selected is not None:
                self.writer.write_weights(selected)
            else:
                self.writer.remove_weights()
        rows, seconds = 0, 0.0
        first = True
        while state.epoch < cfg.epochs and not state.stopper.should_stop:
            batches.set_epoch(state.epoch, start_step=state.step)
            n, s = self._train_epoch(batches, state, first)
            rows, seconds, first = rows + n, seconds + s, False
            self._finish_epoch(dataset, state, n, s)
        scorer = self.selection.selected_scorer(self.model, self.objective, self.scorer, self.log)
        test_predictions = self._predict(scorer, dataset, "test")
        result = FitResult(
            best_epochs=self.selection.best_epochs(state.stopper.best_epoch, self.model.task_names),
            valid=state.best_valid,
            test=test_predictions.metrics(),
            test_predictions=test_predictions,
            train_samples_per_s=rows / seconds if seconds > 0 else 0.0,
            history=list(state.history),
            samples_seen=state.samples,
            skipped_batches=state.skipped_batches,
            warnings=list(state.warnings),
            embedding=self.placement.summary(self.optimizer),
        )
        for callback in self.callbacks:
            callback.on_fit_end(self, result)
        return result
