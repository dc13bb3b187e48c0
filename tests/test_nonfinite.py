"""A non-finite loss stops the run naming step and task, or skips the batch; never a NaN file."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from safetensors.torch import load_file

from fakes import tiny_dataset
from mtrec.data.batches import BatchIterator
from mtrec.data.dataset import PreparedDataset
from mtrec.models import create_model
from mtrec.training.checkpoint import WEIGHTS
from mtrec.training.config import ConfigError, TrainConfig
from mtrec.training.nonfinite import NonFiniteLossError, NonFiniteParametersError
from mtrec.training.resume import RESUME, load_resume
from mtrec.training.rundir import RunDirectory
from mtrec.training.trainer import Trainer

BATCH = 16


def poisoned(seed: int = 0) -> tuple[PreparedDataset, int]:
    """Tiny data whose conversion label is NaN on one clicked train row (only that task's loss breaks)."""
    data = tiny_dataset(rows=240, seed=seed)
    train = data.splits["train"]
    row = int(train[data.labels[train, 0] == 1][0])
    data.labels[row, 1] = np.nan
    return data, row


def step_of(data: PreparedDataset, row: int, epoch: int) -> int:
    it = BatchIterator(data, "train", BATCH, shuffle=True, seed=0)
    it.set_epoch(epoch)
    return int(np.flatnonzero(it.order() == row)[0]) // BATCH


def trainer(data: PreparedDataset, out: Path | None, **options: object) -> Trainer:
    torch.manual_seed(0)
    model = create_model("shared_bottom", data.schema, embedding_dim=4, bottom_sizes=[8], tower_sizes=[4])
    config = TrainConfig(epochs=2, batch_size=BATCH, lr=0.01, num_threads=1, prefetch=0, **options)  # type: ignore[arg-type]
    return Trainer(model, config, RunDirectory(out) if out is not None else None, log=lambda _: None)


def test_stop_names_the_step_and_task_and_writes_nothing_from_it(tmp_path: Path) -> None:
    data, row = poisoned()
    bad_step = step_of(data, row, 0)
    assert bad_step >= 2, "the test needs a checkpoint before the bad step"
    # checks every 100 steps only: the check before each checkpoint (every 2 steps) must catch it
    run = trainer(data, tmp_path, checkpoint_every=2, nonfinite_check_every=100)
    with pytest.raises(NonFiniteLossError, match=re.escape(f"of task 'conversion' at epoch 0 step {bad_step} ")):
        run.fit(data)
    saved = load_resume(tmp_path / RESUME)
    assert saved["progress"]["global_step"] <= bad_step  # the last checkpoint predates the NaN
    assert all(torch.isfinite(t).all() for t in saved["model"].values())
    assert not (tmp_path / WEIGHTS).exists()


def test_stop_is_noticed_at_the_check_interval_without_checkpoints(tmp_path: Path) -> None:
    data, row = poisoned()
    run = trainer(data, None, checkpoint_every=0, nonfinite_check_every=1)
    with pytest.raises(NonFiniteLossError, match=f"optimizer step {step_of(data, row, 0)}\\)"):
        run.fit(data)


def test_skip_drops_only_the_bad_batches(tmp_path: Path) -> None:
    data, row = poisoned()
    result = trainer(data, tmp_path, on_nonfinite="skip").fit(data)
    assert result.skipped_batches == 2  # the row's batch in each of the 2 epochs
    skipped_rows = sum(min(BATCH, 144 - BATCH * step_of(data, row, e)) for e in range(2))
    assert result.samples_seen == 2 * 144 - skipped_rows
    weights = load_file(str(tmp_path / WEIGHTS))
    assert all(torch.isfinite(w).all() for w in weights.values())
    assert all(np.isfinite(r["train_loss"]["conversion"]) for r in result.history)


def test_parameters_gone_non_finite_are_never_written(tmp_path: Path) -> None:
    data = tiny_dataset(rows=240)
    run = trainer(data, tmp_path, checkpoint_every=1)
    real_step = run.optimizer.step

    def overflowing_step() -> None:  # an update that overflows although the loss was finite
        real_step()
        with torch.no_grad():
            next(run.model.parameters()).fill_(float("inf"))

    run.optimizer.step = overflowing_step  # type: ignore[method-assign]
    with pytest.raises(NonFiniteParametersError, match="non-finite"):
        run.fit(data)
    assert not (tmp_path / RESUME).exists() and not (tmp_path / WEIGHTS).exists()


def test_policy_is_validated() -> None:
    with pytest.raises(ConfigError, match=r"train\.on_nonfinite: must be one of 'stop' or 'skip', got 'ignore'"):
        TrainConfig.parse({"on_nonfinite": "ignore"})
    with pytest.raises(ValidationError, match="on_nonfinite"):  # keywords: pydantic's own error
        TrainConfig(on_nonfinite="ignore")
