"""Embedding memory per rank and train throughput with a large item table: replicated vs sharded (TorchRec).

A synthetic schema whose item table is too large to replicate comfortably (``--items`` ids x width 16;
default 10M x 16 = 640 MB of weights, as much again of Adagrad state), beside a user table and small
fields; MMoE with its default sizes. Each setting is a real ``mtrec train`` run, one epoch over a
memory-mapped dataset, ``train.embedding_optimizer: adagrad`` everywhere (sharded tables need it), global
batch 1024, one thread per process:

- 1 process (the tables whole);
- 2 processes, DDP (``embedding_sharding: none``: every rank holds every table, gradients all-reduced);
- 2 processes, ``table_wise`` and ``column_wise`` (TorchRec, gloo);
- 2 processes, ``auto`` with ``--budget-mb`` per rank (TorchRec's planner).

Printed per setting: each rank's table bytes and table optimizer-state bytes (``metrics.json``), the peak
resident memory of the largest process (which includes building the whole model on every rank before
sharding it, and the copies a checkpoint write makes), train samples/s, and the plan.

    python benchmarks/sharding.py [--items 10000000] [--rows 60000] [--budget-mb 1000]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from distributed_throughput import mtrec_train
from mtrec.data.dataset import PreparedDataset
from mtrec.features.schema import DatasetSchema, DenseFeature, SparseFeature, TaskSpec

SETTINGS = [(1, "none"), (2, "none"), (2, "table_wise"), (2, "column_wise"), (2, "auto")]


def large_item_table(rows: int, items: int, seed: int = 0) -> PreparedDataset:
    """``rows`` impressions over ``items`` items (Zipf-like popularity), 200K users, a category and an hour;
    click depends on a dense feature and on the item, conversion on click."""
    rng = np.random.default_rng(seed)
    users, categories = 200_000, 10_000
    schema = DatasetSchema(
        sparse=(SparseFeature("user_id", users + 2), SparseFeature("item_id", items + 2),
                SparseFeature("category", categories + 2), SparseFeature("hour", 24 + 2)),
        dense=(DenseFeature("price"), DenseFeature("activity")),
        tasks=(TaskSpec("click"), TaskSpec("conversion", observed_after="click")),
    )
    item = (rng.zipf(1.1, rows) - 1) % items
    sparse = np.stack([rng.integers(0, users, rows), item, item % categories, rng.integers(0, 24, rows)], 1) + 2
    dense = rng.normal(size=(rows, 2)).astype(np.float32)
    logit = dense[:, 0] + np.where(item % 7 == 0, 1.0, -0.5) - 2.0
    click = (rng.random(rows) < 1 / (1 + np.exp(-logit))).astype(np.float32)
    conversion = click * (rng.random(rows) < 1 / (1 + np.exp(-dense[:, 1] + 1))).astype(np.float32)
    perm = rng.permutation(rows)
    a, b = int(0.6 * rows), int(0.8 * rows)
    return PreparedDataset(schema, sparse.astype(np.int32), dense, {}, np.stack([click, conversion], 1),
                           {"train": perm[:a], "valid": perm[a:b], "test": perm[b:]})


def mib(values: list[int]) -> str:
    return " / ".join(f"{v / 2**20:,.0f}" for v in values)


def plan_line(plan: dict[str, Any]) -> str:
    return ", ".join(f"{t}: {p['sharding_type']} on {p['ranks']}" for t, p in plan.items())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=10_000_000, help="ids of the item table")
    parser.add_argument("--rows", type=int, default=60_000, help="dataset rows (60%% train)")
    parser.add_argument("--batch-size", type=int, default=1024, help="global batch")
    parser.add_argument("--budget-mb", type=int, default=1000, help="auto: each rank's table memory budget")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        large_item_table(args.rows, args.items).save(Path(tmp) / "data")
        results = []
        for processes, sharding in SETTINGS:
            out = Path(tmp) / f"run_{processes}_{sharding}"
            config = {"model": "mmoe", "data": str(Path(tmp) / "data"), "model_options": {"embedding_dim": 16},
                      "train": {"epochs": 1, "batch_size": args.batch_size, "lr": 0.01, "num_threads": 1, "seed": 0,
                                "checkpoint_every": 0, "embedding_optimizer": "adagrad",
                                "embedding_sharding": sharding, "embedding_memory_mb": args.budget_mb}}
            metrics = mtrec_train(config, out, processes, 1)
            shutil.rmtree(out)  # gigabytes of checkpoint per run
            results.append((processes, sharding, metrics))
            emb = metrics["embedding"]
            print(f"  {processes} process(es), embedding_sharding {sharding}: {metrics['train_samples_per_s']:,.0f} "
                  f"samples/s; table MiB per rank {mib(emb['rank_table_bytes'])}, optimizer state "
                  f"{mib(emb['rank_table_optimizer_bytes'])}; peak RSS {metrics['peak_rss_mib']:,.0f} MiB; "
                  f"load average {os.getloadavg()[0]:.1f}", flush=True)
    load = os.getloadavg()
    print(f"machine: {os.cpu_count()} cores, torch {torch.__version__}, {platform.machine()}, "
          f"load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} (1 / 5 / 15 min) at the end")
    print(f"mtrec train, MMoE (defaults, embedding 16), item table {args.items:,} x 16, {args.rows:,} rows "
          f"({int(0.6 * args.rows):,} train), global batch {args.batch_size}, 1 epoch, Adagrad tables, "
          f"1 thread per process")
    print("| processes | embedding_sharding | table MiB per rank | table optimizer state MiB per rank | "
          "peak RSS of the largest process MiB | train samples/s | test AUC click | plan |")
    print("| ---: | --- | ---: | ---: | ---: | ---: | ---: | --- |")
    for processes, sharding, m in results:
        emb = m["embedding"]
        plan = plan_line(emb["plan"]) if "plan" in emb else ("replicated" if processes > 1 else "")
        print(f"| {processes} | {sharding} | {mib(emb['rank_table_bytes'])} | {mib(emb['rank_table_optimizer_bytes'])}"
              f" | {m['peak_rss_mib']:,.0f} | {m['train_samples_per_s']:,.0f} | {m['test']['click']['auc']:.4f} "
              f"| {plan} |")


if __name__ == "__main__":
    main()
