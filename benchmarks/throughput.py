"""Train throughput of MMoE on Census-shaped data: with the data pipeline vs model-bound.

Census-shaped: 40 fields (33 categorical with Census-like vocabularies, 7 dense), embedding 16,
batch 1024, two tasks. The pipeline figure reads a prepared dataset from disk (memory-mapped) through
``BatchIterator`` (seeded shuffle, one gather per block, background prefetch); the model-bound figure steps
the same model on batches already built in memory. Their ratio is the pipeline's cost (target >= 0.9).

    python benchmarks/throughput.py [--rows 200000] [--steps 150] [--repeats 5] [--prefetch 2]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from mtrec.data.batches import Batch, BatchIterator
from mtrec.data.dataset import PreparedDataset
from mtrec.features.schema import DatasetSchema, DenseFeature, SparseFeature, TaskSpec
from mtrec.models import MultiTaskModel, create_model
from mtrec.objectives.weighting import create_weighting


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


def step_all(model: MultiTaskModel, batches: list[Batch] | BatchIterator, steps: int) -> float:
    """Train steps over the first ``steps`` batches; returns samples per second."""
    weighting = create_weighting("fixed", model.task_names)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, foreach=True)
    samples, start = 0, time.perf_counter()
    for i, batch in enumerate(batches):
        if i == steps:
            break
        loss = weighting.combine(model.losses(model(batch), batch), model)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        samples += len(batch)
    return samples / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=400_000)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--prefetch", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    with tempfile.TemporaryDirectory() as tmp:
        census_shaped(args.rows).save(Path(tmp) / "data")
        data = PreparedDataset.load(Path(tmp) / "data")  # memory-mapped
        torch.manual_seed(0)
        model = create_model("mmoe", data.schema, embedding_dim=16)
        iterator = BatchIterator(data, "train", args.batch_size, shuffle=True, seed=0, prefetch=args.prefetch)
        in_memory = [b for b, _ in zip(iterator, range(args.steps), strict=False)]
        step_all(model, in_memory, 10)  # warm-up
        pipeline, bound = [], []
        for r in range(args.repeats):  # interleaved so that machine noise hits both alike
            iterator.set_epoch(r + 1)
            pipeline.append(step_all(model, iterator, args.steps))
            bound.append(step_all(model, in_memory, args.steps))
    p, m = statistics.median(pipeline), statistics.median(bound)
    print(f"machine: {os.cpu_count()} cores, torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"{platform.machine()}")
    print(f"MMoE, 40 fields (33 sparse + 7 dense), embedding 16, batch {args.batch_size}, "
          f"{args.steps} steps x {args.repeats} repeats (medians)")
    print(f"pipeline (memmap + BatchIterator, prefetch {args.prefetch}): {p:,.0f} samples/s")
    print(f"model-bound (batches in memory):                    {m:,.0f} samples/s")
    print(f"ratio pipeline / model-bound: {p / m:.3f}")


if __name__ == "__main__":
    main()
