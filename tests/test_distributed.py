"""Data-parallel training: step shards, loss normalisation over ranks, and a real 2-process gloo run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from fakes import tiny_dataset
from mtrec.data.batches import Batch, BatchIterator, gather_batch
from mtrec.models import create_model
from mtrec.objectives import create_objective
from mtrec.training.checkpoint import WEIGHTS, load_model
from mtrec.training.config import ConfigError, RunConfig
from mtrec.training.distributed import DistContext, block_of
from mtrec.training.evaluate import predict_split
from mtrec.training.run import train_run
from procs import max_weight_difference, torchrun_train


def shards(it_args: dict[str, Any], world_size: int, epoch: int = 0) -> list[list[Batch]]:
    """Every rank's batches of one epoch: ``[rank][step]``."""
    out = []
    for rank in range(world_size):
        it = BatchIterator(**it_args, rank=rank, world_size=world_size, prefetch=0)
        it.set_epoch(epoch)
        out.append(list(it))
    return out


@pytest.mark.parametrize(("world_size", "batch_size"), [(2, 25), (3, 16), (4, 2)])
def test_each_step_is_dealt_to_the_ranks_without_loss_or_repeat(world_size: int, batch_size: int) -> None:
    data = tiny_dataset(rows=230)  # 138 train rows: every case leaves uneven shares and a short last step
    args = {"dataset": data, "split": "train", "batch_size": batch_size, "shuffle": True, "seed": 4}
    single = shards(args, 1)[0]
    ranks = shards(args, world_size)
    assert all(len(r) == len(single) for r in ranks)  # the same number of steps on every rank
    for step, whole in enumerate(single):
        parts = [r[step] for r in ranks]
        assert len({len(p) for p in parts}) == 1  # equal batch shapes, padding included
        real = np.concatenate([p.features.dense[: p.num_real, 0].numpy() for p in parts])
        np.testing.assert_array_equal(np.sort(real), np.sort(whole.features.dense[:, 0].numpy()))
        for p in parts:
            pad = slice(p.num_real, None)
            assert all(float(m[pad].abs().sum()) == 0 for m in p.masks.values())
            assert p.shard is not None and p.shard.step_rows == len(whole)
            for task, mask in whole.masks.items():
                assert p.shard.step_observed[task] == float(mask.sum())
    seen = np.concatenate([it.epoch_rows() for it in
                           (BatchIterator(**args, rank=r, world_size=world_size) for r in range(world_size))])
    assert sorted(seen.tolist()) == sorted(data.splits["train"].tolist())


def _grads(model: torch.nn.Module, loss: torch.Tensor) -> list[torch.Tensor]:
    return [g.clone() for g in torch.autograd.grad(loss, list(model.parameters()))]


@pytest.mark.parametrize("objective", ["masked", "entire_space"])
def test_ranks_average_gradient_equals_the_whole_step_gradient(objective: str) -> None:
    """What DDP computes (the mean over ranks of each rank's gradient) equals one process's gradient,
    because each rank divides by the step's counts; a mean of per-rank means would not."""
    data = tiny_dataset(rows=200, seed=3)
    torch.manual_seed(0)
    model = create_model("shared_bottom", data.schema)

    def loss_of(batch: Batch) -> torch.Tensor:
        out = model(batch.features)
        losses = create_objective(objective, data.schema).losses(out, batch)
        return torch.stack(list(losses.values())).sum()

    args = {"dataset": data, "split": "train", "batch_size": 44, "shuffle": True, "seed": 1}
    whole = shards(args, 1)[0][0]
    ranks = [r[0] for r in shards(args, 3)]
    want = _grads(model, loss_of(whole))
    per_rank = [_grads(model, loss_of(b)) for b in ranks]
    got = [torch.stack(gs).mean(0) for gs in zip(*per_rank, strict=True)]
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-7)
    # the naive alternative, each rank's own mean over the same rows (15, 15, 14), averaged: it differs
    it = BatchIterator(**args)
    naive_batches = [gather_batch(data, it.order()[: it.batch_size][r::3]) for r in range(3)]
    naive = [torch.stack(gs).mean(0) for gs in zip(*[_grads(model, loss_of(b)) for b in naive_batches],
                                                   strict=True)]
    assert max(float((n - w).abs().max()) for n, w in zip(naive, want, strict=True)) > 1e-5


def test_blocks_of_a_split_cover_it_in_order() -> None:
    for n, w in [(10, 3), (2, 4), (7, 1)]:
        parts = [block_of(n, DistContext(rank=r, world_size=w)) for r in range(w)]
        assert [i for p in parts for i in range(n)[p]] == list(range(n))


def test_two_gloo_processes_train_the_same_weights_as_one(tmp_path: Path) -> None:
    """torchrun, 2 processes, gloo on loopback, against one process with the same global batch and seed.

    The global batch (25) is odd, so every step is dealt 13 + 12 rows plus a padding row; the
    conversion task is observed on click positives only, so the ranks' observed counts differ; one train
    row holds a NaN and ``on_nonfinite: skip`` must skip that step on both ranks.
    """
    data = tiny_dataset(rows=240, seed=5)
    bad_row = data.splits["train"][17]
    data.dense[bad_row, 1] = np.nan
    data.save(tmp_path / "data")
    config = {"model": "mmoe", "data": str(tmp_path / "data"),
              "model_options": {"expert_sizes": [16], "tower_sizes": [8], "num_experts": 2, "embedding_dim": 4},
              "train": {"epochs": 2, "batch_size": 25, "lr": 0.01, "num_threads": 1, "prefetch": 0, "precision": "fp32",
                        "on_nonfinite": "skip", "checkpoint_every": 3, "eval_batch_size": 16}}
    (tmp_path / "run.json").write_text(json.dumps(config))
    proc = torchrun_train(2, "--config", str(tmp_path / "run.json"), "--out", str(tmp_path / "two"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    one = train_run(RunConfig.from_dict(config), tmp_path / "one", log=lambda _: None)

    two = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert two["machine"]["processes"] == 2
    order = BatchIterator(data, "train", 25, shuffle=True, seed=0)
    skipped_rows = 0
    for epoch in range(2):  # the step holding the NaN row is skipped: its rows are not trained on
        order.set_epoch(epoch)
        step = int(np.flatnonzero(order.order() == bad_row)[0]) // 25
        skipped_rows += len(order.order()[step * 25 : (step + 1) * 25])
    assert two["samples_seen"] == one["samples_seen"] == 2 * data.split_size("train") - skipped_rows
    assert two["skipped_batches"] == one["skipped_batches"] == 2
    assert max_weight_difference(tmp_path / "one" / WEIGHTS, tmp_path / "two" / WEIGHTS) < 1e-5

    # the 2-process AUC (predictions gathered from both ranks) equals the AUC one process computes on
    # the predictions of the same weights
    model, _ = load_model(tmp_path / "two")
    reference = predict_split(model, data, "test", batch_size=16).metrics()
    for task, metrics in reference.items():
        assert two["test"][task]["rows"] == metrics["rows"]
        assert two["test"][task]["auc"] == pytest.approx(metrics["auc"], abs=1e-9)
        assert two["test"][task]["auc"] == pytest.approx(one["test"][task]["auc"], abs=1e-6)


@pytest.mark.parametrize(("train", "message"), [
    ({"embedding_sharding": "row_wise"}, r"train.embedding_sharding: must be one of 'none', 'table_wise'"),
    ({"embedding_sharding": "table_wise", "embedding_optimizer": "adam"}, "needs train.embedding_optimizer adagrad"),
    ({"embedding_sharding": "auto", "embedding_optimizer": "sgd", "weighting": "gradnorm"},
     "gradnorm cannot be used with train.embedding_sharding: auto"),
    ({"embedding_memory_mb": -1}, "train.embedding_memory_mb: must be >= 0"),
    ({"embedding_sharding": "column_wise", "embedding_optimizer": "sgd", "select": "per_task"},
     "per_task cannot be used with train.embedding_sharding: column_wise"),
])
def test_sharding_settings_are_checked_with_one_line_errors(train: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        RunConfig.from_dict({"model": "mmoe", "train": train})


def test_sharding_on_one_process_keeps_the_tables_whole(tmp_path: Path) -> None:
    """Without torchrun there is nothing to shard over: the run is the plain one (TorchRec not needed)."""
    config = {"model": "shared_bottom", "model_options": {"embedding_dim": 4, "bottom_sizes": [8], "tower_sizes": [4]},
              "train": {"epochs": 1, "batch_size": 32, "num_threads": 1, "prefetch": 0,
                        "embedding_sharding": "table_wise", "embedding_optimizer": "adagrad"}}
    logs: list[str] = []
    data = tiny_dataset(rows=120)
    metrics = train_run(RunConfig.from_dict(config), tmp_path / "run", dataset=data, log=logs.append)
    assert any("on one process: the tables stay whole" in line for line in logs)
    rows = 4 * sum(data.schema.table_sizes().values())
    assert metrics["embedding"] == {"sharding": "none", "rank_table_bytes": [rows * 4],
                                    "rank_table_optimizer_bytes": [rows * 4]}
