"""The training loop, and nothing else: batches in, optimizer steps, validation, early stopping.

The trainer calls only the model's ``forward`` and ``shared_parameters``, the objective's ``losses`` and
the weighting strategy's ``combine``; it never branches on a model's class. Files go through the run
directory's one writer (:class:`~mtrec.training.rundir.RunDirectory`), resume state through
:mod:`mtrec.training.resume`.

The same loop runs on one process or under ``torchrun`` (see :mod:`mtrec.training.distributed`): each
rank steps on its share of every batch, DDP averages the gradients, validation and test predictions are
gathered from all ranks before metrics are computed, and only rank 0 logs and writes. A run can be
resumed from ``resume.safetensors``, written every ``checkpoint_every`` steps and at each epoch end; a
non-finite loss stops the run or skips the batch (:mod:`mtrec.training.nonfinite`) and never reaches a
written file.

Model selection (``train.select``): ``mean`` keeps the weights of the epoch with the best mean
validation score over tasks (AUC of a binary task, R² of a regression task); ``per_task`` keeps, for each
task, the weights of that task's own best epoch, and the task is evaluated and served from them.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from mtrec import collectives
from mtrec.data.batches import Batch, BatchIterator
from mtrec.data.dataset import PreparedDataset
from mtrec.metrics import task_score
from mtrec.models import MultiTaskModel
from mtrec.objectives.objective import Objective, ObjectiveConfigError, create_objective
from mtrec.objectives.scorer import Scorer
from mtrec.objectives.weighting import WeightingStrategy, create_weighting
from mtrec.training import distributed
from mtrec.training.callbacks import EarlyStopping
from mtrec.training.config import ConfigError, TrainConfig, resolved_objective
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
from mtrec.training.resume import ResumeError, rng_state, set_rng_state
from mtrec.training.rundir import RunDirectory

WARMUP_STEPS = 3  # steps excluded from the throughput figure
# an epoch whose mean train loss of a task exceeds this many times the task's loss at the first step has
# diverged (a learning rate far too high: the model ends up no better than chance, without a NaN)
DIVERGED = 10.0
# settings a resumed run must share with the checkpoint (others, e.g. epochs or patience, may change)
RESUME_FIXED = ("batch_size", "seed", "lr", "weight_decay", "weighting", "weighting_options", "objective",
                "objective_options", "select", "embedding_sharding", "embedding_optimizer")
MEAN = "mean"  # the selection key of train.select: mean


def selection_scores(metrics: dict[str, dict[str, float]], select: str) -> dict[str, float]:
    """Model-selection scores by key: ``{"mean": mean task score}`` (tasks with an undefined score
    skipped), or each task's own score (``per_task``; undefined: -inf)."""
    scores = {t: task_score(m) for t, m in metrics.items()}
    if select == MEAN:
        values = [v for v in scores.values() if not math.isnan(v)]
        return {MEAN: sum(values) / len(values) if values else -math.inf}
    return {t: -math.inf if math.isnan(v) else v for t, v in scores.items()}


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
    first_loss: dict[str, float] = field(default_factory=dict)  # each task's loss at the first step
    diverged: list[str] = field(default_factory=list)  # tasks whose training diverged (warned once each)
    warnings: list[str] = field(default_factory=list)
    epoch_trained_steps: int = 0
    best_valid: dict[str, dict[str, float]] = field(default_factory=dict)  # per task, at its selected epoch
    history: list[dict[str, Any]] = field(default_factory=list)  # one row per finished epoch

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainState:
        return cls(**{**data, "stopper": EarlyStopping(**data["stopper"])})


class LossStep(nn.Module):
    """The model, the objective and the weighting strategy as one module whose forward returns the loss,
    so that DDP averages the gradients of all three (learned parameters of either included)."""

    def __init__(self, model: MultiTaskModel, objective: Objective, weighting: WeightingStrategy) -> None:
        super().__init__()
        self.model = model
        self.objective = objective
        self.weighting = weighting
        self.shared = model.shared_parameters()

    def forward(self, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The scalar loss to minimise, and every named loss term (task losses, auxiliary terms)."""
        losses = self.objective.losses(self.model(batch.features), batch)
        task_losses = {t: losses[t] for t in self.model.task_names}
        loss = self.weighting.combine(task_losses, self.shared)
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
    ) -> None:
        """The objective and the weighting strategy come from ``config`` (the objective: the model's default
        unless ``config.objective`` names one). ``run_dir``: the run directory (None: write nothing, no
        resume); every rank reads its resume checkpoint, only rank 0 writes."""
        self.config = config
        self.dist = distributed.current()
        self.device = distributed.resolve_device(config.device, self.dist)
        self.model = model.to(self.device)
        name, options = resolved_objective(config, model.default_objective)
        try:
            objective = create_objective(name, model.schema, **options)
        except ObjectiveConfigError as exc:
            raise ConfigError(f"train.objective: {exc}") from exc
        self.objective = objective.to(self.device)
        self.weighting: WeightingStrategy = create_weighting(
            config.weighting, model.task_names, **config.weighting_options
        ).to(self.device)
        self.run_dir = run_dir
        self.writer = run_dir if self.dist.is_main else None
        self.log = log if self.dist.is_main else _quiet
        self.placement = create_placement(config, self.model, self.device, self.log)
        loss_step = LossStep(self.model, self.objective, self.weighting)
        if config.compile:
            loss_step.compile_in_place()
        self.loss_step = self.placement.wrap(loss_step)
        dense = [*self.placement.dense_parameters(), *self.objective.parameters(), *self.weighting.parameters()]
        self.optimizer = build_optimizers(config, dense, self.placement.table_parameters(), self.device)
        self.watch = LossWatch(self.device)
        self.scorer = Scorer(self.objective, self.model, model.registry_name)
        self.best_states: dict[str, dict[str, torch.Tensor]] = {}  # selection key -> weights of its best epoch
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
            step_start = time.perf_counter()
            task_losses = self._step(batch.to(self.device, non_blocking=True), state)
            if cfg.compile and first_epoch and session_steps == 0:
                self.log(f"train.compile: the first step (compilation included) took "
                         f"{time.perf_counter() - step_start:.1f} s")
            if task_losses is not None and not state.first_loss:  # one sync, once per run
                first = collectives.all_reduce_(task_losses.clone()) / self.dist.world_size
                state.first_loss = dict(zip(self.model.task_names, first.tolist(), strict=True))
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
        summed = collectives.all_reduce_(local_loss.clone()) / self.dist.world_size
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
        where = (f"; the last good checkpoint is {self.run_dir.resume_path}"
                 if self.run_dir is not None and self.run_dir.resume_path.exists() else "")
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

    def _check_divergence(self, state: TrainState, train_loss: dict[str, float]) -> None:
        """Warn (in the log and the run's metrics) when an epoch's train loss has grown far beyond the
        loss at the first step: training diverged, so its model is no better than chance."""
        for task, loss in train_loss.items():
            first = state.first_loss.get(task)
            if first is None or task in state.diverged or not loss > DIVERGED * max(first, 1e-3):
                continue
            state.diverged.append(task)
            warning = (f"training diverged: epoch {state.epoch} train loss of task {task!r} is {loss:.3g}, "
                       f"{loss / max(first, 1e-3):.3g} times its loss at the first step ({first:.3g}); "
                       f"lower train.lr (now {self.config.lr:g})")
            state.warnings.append(warning)
            self.log(f"warning: {warning}")

    def _check_parameters(self) -> None:
        """Refuse to go on (and so to write) with non-finite weights, whatever the losses said."""
        bad = nonfinite_parameters(self.model) + [f"weighting.{n}" for n in nonfinite_parameters(self.weighting)]
        # a collective: with sharded tables a rank may hold the only bad shard
        if collectives.all_reduce_(torch.tensor([len(bad)], device=self.device), "max").item():
            raise NonFiniteParametersError(
                f"parameters became non-finite (first: {bad[:3] or 'on another rank'}) although every loss was "
                f"finite; nothing was written from them. Lower train.lr"
            )

    # ---- evaluation ---------------------------------------------------------------------------
    def _predict(self, scorer: Scorer, dataset: PreparedDataset, split: str) -> Predictions:
        """The whole split's predictions: each rank scores its block, then all are gathered."""
        part = distributed.block_of(dataset.split_size(split), self.dist)
        batch_size = self.config.eval_batch_size
        local = predict_split(scorer, dataset, split, batch_size, self.device, part,
                              min_batches=self.placement.eval_batches(dataset.split_size(split), batch_size))
        return distributed.gather_predictions(local, self.device)

    def _selected_weights(self) -> dict[str, torch.Tensor]:
        """The selected weights as the run directory stores them (see :meth:`Scorer.model_state`), whole
        on rank 0 (a collective: sharded tables are gathered)."""
        if self.config.select == MEAN:
            return self.placement.full_state(self.best_states[MEAN])
        return {f"{task}.{k}": v for task, state in self.best_states.items() for k, v in state.items()}

    def _selected_scorer(self) -> Scorer:
        """The scorer of the selected weights (the last weights if no epoch finished)."""
        if not self.best_states:
            self.log("no epoch finished; keeping the last weights")
            return self.scorer
        if self.config.select == MEAN:
            self.placement.restore(self.best_states[MEAN])
            return self.scorer
        copies = {}
        for task, state in self.best_states.items():
            copies[task] = copy.deepcopy(self.model)
            copies[task].load_state_dict(state)
        return Scorer(self.objective, copies, self.scorer.name)

    def _finish_epoch(self, dataset: PreparedDataset, state: TrainState, rows: int, seconds: float) -> None:
        self._check_losses()
        train_loss = {t: v / max(state.epoch_trained_steps, 1) for t, v in state.epoch_loss.items()}
        self._check_divergence(state, train_loss)
        valid = self._predict(self.scorer, dataset, "valid").metrics()
        scores = selection_scores(valid, self.config.select)
        improved = state.stopper.update(scores, state.epoch)
        row = {
            "epoch": state.epoch, "train_loss": train_loss, "valid": valid, "valid_score": scores,
            "samples_per_s": rows / seconds if seconds > 0 else 0.0,
            "task_weights": self.weighting.current_weights(),
        }
        state.history.append(row)
        summary = "  ".join(f"{t} {task_score(m):.4f}" for t, m in valid.items())
        marks = ("  *best*" if improved == [MEAN] else f"  *best: {', '.join(improved)}*") if improved else ""
        self.log(f"epoch {state.epoch}: train loss {sum(train_loss.values()):.4f}  valid {summary}{marks}")
        if improved:
            weights = self.placement.snapshot()
            for key in improved:
                self.best_states[key] = weights
            for task in self.model.task_names:
                if task in improved or MEAN in improved:
                    state.best_valid[task] = valid[task]
        state.epoch, state.step, state.epoch_loss, state.epoch_trained_steps = state.epoch + 1, 0, {}, 0
        self._save_resume(state)  # checks losses and parameters first, so nothing non-finite is written
        selected = self._selected_weights() if improved else None
        if self.writer is not None:
            if selected is not None:  # (a kill before this write is mended by resuming: fit rewrites it)
                self.writer.write_weights(selected)
            self.writer.append_history(row)
        if state.stopper.should_stop:
            self.log(f"early stop: no better validation score for {state.stopper.bad_epochs} epochs")

    # ---- resume -------------------------------------------------------------------------------
    def _settings(self) -> dict[str, Any]:
        return {name: getattr(self.config, name) for name in RESUME_FIXED}

    def _save_resume(self, state: TrainState) -> None:
        """Write the resume checkpoint after checking that nothing non-finite goes in it."""
        self._check_losses()
        self._check_parameters()
        if self.run_dir is None:  # the same on every rank
            return
        common = {
            "settings": self._settings(),
            "steps_per_epoch": self.steps_per_epoch,
            "progress": state.to_dict(),
            "weighting": self.weighting.state_dict(),
            "objective": self.objective.state_dict(),
            "rng": rng_state(self.device),  # a collective
        }
        held = {"model": self.placement.held(), "best": self.best_states, "optimizer": self.optimizer.state_dict(),
                **self.placement.extra_state()}
        self.placement.save_checkpoint(self.run_dir, common, held, state.global_step)

    def _restore(self, saved: dict[str, Any], where: str) -> TrainState:
        """Continue from a resume checkpoint ``saved`` (read from ``where``)."""
        assert self.run_dir is not None
        defaults = TrainConfig()  # a checkpoint written before a setting existed had its default
        settings = {k: saved["settings"].get(k, getattr(defaults, k)) for k in RESUME_FIXED}
        changed = [f"train.{k}: {settings[k]!r} -> {v!r}" for k, v in self._settings().items() if settings[k] != v]
        if changed:
            raise ResumeError(f"{where}: cannot resume with changed settings ({'; '.join(changed)}); "
                              f"use the checkpoint's settings or start a new run directory")
        if saved["steps_per_epoch"] != self.steps_per_epoch:
            raise ResumeError(f"{where}: the checkpoint has {saved['steps_per_epoch']} steps per epoch, this "
                              f"run {self.steps_per_epoch}: not the same training data")
        held = self.placement.load_checkpoint(saved, self.run_dir)
        try:
            self.placement.restore(held["model"])
            self.weighting.load_state_dict(saved["weighting"])
            self.objective.load_state_dict(saved["objective"])
            self.optimizer.load_state_dict(held["optimizer"])
            self.placement.load_extra_state(held)
        except (RuntimeError, ValueError, KeyError) as exc:
            raise ResumeError(f"{where}: does not fit this model and optimizer ({exc})") from exc
        self.best_states = {key: {k: v.to(self.device) for k, v in weights.items()}
                            for key, weights in held["best"].items()}
        set_rng_state(saved["rng"], self.device, self.dist.rank, self.dist.world_size)
        state = TrainState.from_dict(saved["progress"])
        self.log(f"resumed from {where}: epoch {state.epoch} step {state.step}, "
                 f"{state.samples:,} samples trained so far")
        return state

    # ---- the run ------------------------------------------------------------------------------
    def fit(self, dataset: PreparedDataset, resume: bool = False) -> FitResult:
        """Train, select on valid, evaluate test once. ``resume``: continue from the run directory's
        ``resume.safetensors`` when it exists (else start from the beginning)."""
        cfg = self.config
        batches = BatchIterator(
            dataset, "train", cfg.batch_size, shuffle=True, seed=cfg.seed, prefetch=cfg.prefetch,
            rank=self.dist.rank, world_size=self.dist.world_size,
        )
        self.steps_per_epoch = len(batches)
        state = TrainState(stopper=EarlyStopping(cfg.patience))
        if self.writer is not None:
            self.writer.remove_stale_temporaries()  # left by a killed run
        if resume:
            state = self._resume(state)
        elif self.writer is not None:
            self.writer.remove_resume()
        selected = self._selected_weights() if self.best_states else None
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
        scorer = self._selected_scorer()
        test_predictions = self._predict(scorer, dataset, "test")
        epochs = state.stopper.best_epoch
        return FitResult(
            best_epochs={t: epochs.get(MEAN, epochs.get(t, -1)) for t in self.model.task_names},
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

    def _resume(self, state: TrainState) -> TrainState:
        """The state to continue from: the run directory's checkpoint (every rank reads the same file), or
        ``state`` when there is none."""
        if self.run_dir is None:
            raise ResumeError("resuming needs the run directory that holds the checkpoint")
        saved = self.run_dir.read_resume()
        if saved is None:
            self.log(f"--resume: no checkpoint at {self.run_dir.resume_path}, starting from the beginning")
            return state
        return self._restore(saved, str(self.run_dir.resume_path))
