"""The training loop, and nothing else: batches in, optimizer steps, validation, early stopping.

The trainer calls only the model interface (``forward``, ``losses``, ``probabilities``) and the weighting
strategy's ``combine``; it never branches on a model's class.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from mtrec.data.batches import BatchIterator
from mtrec.data.dataset import PreparedDataset
from mtrec.models import MultiTaskModel
from mtrec.objectives.weighting import WeightingStrategy, create_weighting
from mtrec.training.callbacks import EarlyStopping, EpochLog
from mtrec.training.checkpoint import WEIGHTS, save_weights
from mtrec.training.config import TrainConfig
from mtrec.training.evaluate import Predictions, predict_split

WARMUP_STEPS = 3  # steps excluded from the throughput figure


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


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
        self.device = resolve_device(config.device)
        self.model = model.to(self.device)
        self.weighting: WeightingStrategy = create_weighting(
            config.weighting, model.task_names, **config.weighting_options
        ).to(self.device)
        params = [*self.model.parameters(), *self.weighting.parameters()]
        self.optimizer = torch.optim.Adam(
            params, lr=config.lr, weight_decay=config.weight_decay, foreach=self.device.type != "cuda",
            fused=self.device.type == "cuda" or None,
        )
        self.out_dir = out_dir
        self.log = log

    def _train_epoch(self, batches: BatchIterator, epoch: int) -> tuple[dict[str, float], int, float]:
        """One pass over the train split; returns mean task losses, samples after warm-up, and seconds."""
        self.model.train()
        totals = {t: torch.zeros((), device=self.device) for t in self.model.task_names}
        steps = 0
        timed_samples, start = 0, time.perf_counter()
        progress = tqdm(batches, desc=f"epoch {epoch}", leave=False, unit="batch", disable=None)
        for batch in progress:
            if steps == WARMUP_STEPS and epoch == 0:
                timed_samples, start = 0, time.perf_counter()
            batch = batch.to(self.device, non_blocking=True)
            outputs = self.model(batch)
            losses = self.model.losses(outputs, batch)
            task_losses = {t: losses[t] for t in self.model.task_names}
            loss = self.weighting.combine(task_losses, self.model)
            for name, term in losses.items():
                if name not in task_losses:
                    loss = loss + term
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            for t in totals:
                totals[t] += task_losses[t].detach()
            steps += 1
            timed_samples += len(batch)
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        mean_losses = {t: float(v) / max(steps, 1) for t, v in totals.items()}
        return mean_losses, timed_samples, seconds

    def fit(self, dataset: PreparedDataset) -> FitResult:
        cfg = self.config
        train_batches = BatchIterator(
            dataset, "train", cfg.batch_size, shuffle=True, seed=cfg.seed, prefetch=cfg.prefetch
        )
        stopper = EarlyStopping(cfg.patience)
        history = EpochLog(self.out_dir / "history.jsonl" if self.out_dir else None)
        if history.path is not None:
            history.path.unlink(missing_ok=True)
        best_state: dict[str, torch.Tensor] = {}
        best_valid: dict[str, dict[str, float]] = {}
        samples, seconds = 0, 0.0
        for epoch in range(cfg.epochs):
            train_batches.set_epoch(epoch)
            train_loss, n, s = self._train_epoch(train_batches, epoch)
            samples, seconds = samples + n, seconds + s
            valid = predict_split(self.model, dataset, "valid", cfg.eval_batch_size, self.device).metrics()
            score = validation_score(valid)
            improved = stopper.update(score, epoch)
            history.append({
                "epoch": epoch, "train_loss": train_loss, "valid": valid, "valid_score": score,
                "samples_per_s": n / s if s > 0 else 0.0, "task_weights": self.weighting.current_weights(),
            })
            summary = "  ".join(f"{t} {m['auc']:.4f}" for t, m in valid.items())
            self.log(f"epoch {epoch}: train loss {sum(train_loss.values()):.4f}  valid AUC {summary}"
                     f"{'  *best*' if improved else ''}")
            if improved:
                best_valid = valid
                best_state = copy.deepcopy(self.model.state_dict())
                if self.out_dir is not None:
                    save_weights(self.out_dir / WEIGHTS, best_state)
            if stopper.should_stop:
                self.log(f"early stop: no better validation AUC for {stopper.bad_epochs} epochs")
                break
        self.model.load_state_dict(best_state)
        test_predictions = predict_split(self.model, dataset, "test", cfg.eval_batch_size, self.device)
        return FitResult(
            best_epoch=stopper.best_epoch,
            valid=best_valid,
            test=test_predictions.metrics(),
            test_predictions=test_predictions,
            train_samples_per_s=samples / seconds if seconds > 0 else 0.0,
            history=history.rows,
        )
