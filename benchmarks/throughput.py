"""Train throughput of MMoE on Census-shaped data: with the data pipeline vs model-bound.

Census-shaped: 40 fields (33 categorical with Census-like vocabularies, 7 dense), embedding 16,
batch 1024, two tasks. The pipeline figure reads a prepared dataset from disk (memory-mapped) through
``BatchIterator`` (seeded shuffle, one gather per block, background prefetch); the model-bound figure steps
the same model on batches already built in memory. Their ratio is the pipeline's cost (target >= 0.9).

For comparison, ``--per-sample`` also times the loading most recommender libraries use: a
``torch.utils.data.Dataset`` whose ``__getitem__`` returns one row as a dict of tensors, batched by
``DataLoader``'s default collate (``--workers`` worker processes), over the same memory-mapped arrays.

    python benchmarks/throughput.py [--rows 400000] [--steps 150] [--repeats 5] [--prefetch 2] [--per-sample]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np
import torch

from mtrec.data.batches import Batch, BatchIterator
from mtrec.data.dataset import PreparedDataset
from mtrec.features.inputs import Features
from mtrec.features.schema import DatasetSchema, DenseFeature, SparseFeature, TaskSpec
from mtrec.models import create_model
from stepping import train_step


def census_shaped(rows: int, seed: int = 0) -> PreparedDataset:
    rng = np.random.default_rng(seed)
    vocab = rng.integers(3, 60, 33)
    vocab[:3] = [60, 50, 40]
    schema = DatasetSchema(
        sparse=tuple(SparseFeature(f"c{i}", int(v) + 2) for i, v in enumerate(vocab)),
        dense=tuple(DenseFeature(f"d{i}") for i in range(7)),
        tasks=(TaskSpec("income"), TaskSpec("marital")),
    )
    sparse = (rng.random((rows, 33)) * vocab).astype(np.int32) + 2
    dense = rng.normal(size=(rows, 7)).astype(np.float32)
    labels = (rng.random((rows, 2)) < [0.06, 0.43]).astype(np.float32)
    perm = rng.permutation(rows)
    a, b = int(0.6 * rows), int(0.8 * rows)
    return PreparedDataset(schema, sparse, dense, {}, labels, {"train": perm[:a], "valid": perm[a:b],
                                                              "test": perm[b:]})


class PerSampleRows(torch.utils.data.Dataset[dict[str, torch.Tensor]]):
    """One training row per ``__getitem__`` as a dict of tensors: the per-sample loading being compared."""

    def __init__(self, data: PreparedDataset, split: str) -> None:
        self.data, self.rows = data, data.splits[split]

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        row = int(self.rows[i])
        return {
            "sparse": torch.from_numpy(self.data.sparse[row].astype(np.int64)),
            "dense": torch.from_numpy(np.array(self.data.dense[row])),
            "labels": torch.from_numpy(np.array(self.data.labels[row])),
        }


def per_sample_batches(data: PreparedDataset, batch_size: int, workers: int) -> Iterator[Batch]:
    """``DataLoader`` over :class:`PerSampleRows` (shuffled, default collate), turned into :class:`Batch`."""
    loader = torch.utils.data.DataLoader(PerSampleRows(data, "train"), batch_size=batch_size, shuffle=True,
                                         num_workers=workers, persistent_workers=workers > 0)
    tasks = data.schema.task_names
    for item in loader:
        labels = {t: item["labels"][:, k] for k, t in enumerate(tasks)}
        features = Features(item["sparse"], item["dense"])
        yield Batch(features, labels, {t: torch.ones_like(v) for t, v in labels.items()})


def load_only(batches: Iterable[Batch], steps: int) -> float:
    """Samples per second of building ``steps`` batches with no model step in between."""
    samples, start = 0, time.perf_counter()
    for i, batch in enumerate(batches):
        if i == steps:
            break
        samples += len(batch)
    return samples / (time.perf_counter() - start)


def step_all(step: Callable[[Batch], None], batches: Iterable[Batch], steps: int) -> float:
    """Train steps over the first ``steps`` batches; returns samples per second."""
    samples, start = 0, time.perf_counter()
    for i, batch in enumerate(batches):
        if i == steps:
            break
        step(batch)
        samples += len(batch)
    return samples / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=400_000)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--prefetch", type=int, default=2)
    parser.add_argument("--per-sample", action="store_true", help="also time a per-row Dataset + DataLoader")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader worker processes for --per-sample")
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    with tempfile.TemporaryDirectory() as tmp:
        census_shaped(args.rows).save(Path(tmp) / "data")
        data = PreparedDataset.load(Path(tmp) / "data")  # memory-mapped
        torch.manual_seed(0)
        step = train_step(create_model("mmoe", data.schema, embedding_dim=16))
        iterator = BatchIterator(data, "train", args.batch_size, shuffle=True, seed=0, prefetch=args.prefetch)
        in_memory = [b for b, _ in zip(iterator, range(args.steps), strict=False)]
        step_all(step, in_memory, 10)  # warm-up
        pipeline, bound, per_sample = [], [], []
        for r in range(args.repeats):  # interleaved so that machine noise hits all alike
            iterator.set_epoch(r + 1)
            pipeline.append(step_all(step, iterator, args.steps))
            bound.append(step_all(step, in_memory, args.steps))
            if args.per_sample:
                per_sample.append(step_all(step, per_sample_batches(data, args.batch_size, args.workers),
                                           args.steps))
        iterator.set_epoch(0)
        loading = load_only(iterator, args.steps)
        loading_per_sample = (load_only(per_sample_batches(data, args.batch_size, args.workers), args.steps)
                              if args.per_sample else 0.0)
    p, m = statistics.median(pipeline), statistics.median(bound)
    print(f"machine: {os.cpu_count()} cores, torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"{platform.machine()}")
    print(f"MMoE, 40 fields (33 sparse + 7 dense), embedding 16, batch {args.batch_size}, "
          f"{args.steps} steps x {args.repeats} repeats (medians)")
    print(f"pipeline (memmap + BatchIterator, prefetch {args.prefetch}): {p:,.0f} samples/s")
    print(f"model-bound (batches in memory):                    {m:,.0f} samples/s")
    print(f"ratio pipeline / model-bound: {p / m:.3f}")
    print(f"loading alone (no model step): pipeline {loading:,.0f} samples/s", end="")
    print(f", per-sample {loading_per_sample:,.0f} samples/s" if per_sample else "")
    if per_sample:
        q = statistics.median(per_sample)
        print(f"per-sample Dataset + DataLoader ({args.workers} workers): {q:,.0f} samples/s "
              f"(ratio to model-bound {q / m:.3f}; mtrec's pipeline is {p / q:.1f}x faster)")


if __name__ == "__main__":
    main()
