"""Batches and the vectorized batch iterator.

A batch is gathered with one fancy-index per column block (nanoGPT's ``get_batch``): no per-sample
``Dataset.__getitem__`` and no collate of rows. Each epoch draws a seeded permutation of the split's row
indices; every row appears exactly once per epoch. A background thread can build the next batches while
the model steps on the current one.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch

from mtrec.data.dataset import PreparedDataset
from mtrec.features.schema import DatasetSchema


@dataclass
class Batch:
    """One batch of B rows, every per-task entry keyed by task name.

    sparse:    int64   [B, F_sparse]   ids in schema order
    dense:     float32 [B, F_dense]
    sequences: name -> int64 [B, L]    0 = padding
    labels:    task -> float32 [B]     0/1
    masks:     task -> float32 [B]     1 where the task's label is observed (all ones unless observed_after)
    """

    sparse: torch.Tensor
    dense: torch.Tensor
    sequences: dict[str, torch.Tensor] = field(default_factory=dict)
    labels: dict[str, torch.Tensor] = field(default_factory=dict)
    masks: dict[str, torch.Tensor] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.sparse.shape[0] if self.sparse.numel() else self.dense.shape[0])

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        def move(t: torch.Tensor) -> torch.Tensor:
            return t.to(device, non_blocking=non_blocking)

        return Batch(
            sparse=move(self.sparse),
            dense=move(self.dense),
            sequences={k: move(v) for k, v in self.sequences.items()},
            labels={k: move(v) for k, v in self.labels.items()},
            masks={k: move(v) for k, v in self.masks.items()},
        )

    def pin_memory(self) -> Batch:
        return Batch(
            sparse=self.sparse.pin_memory(),
            dense=self.dense.pin_memory(),
            sequences={k: v.pin_memory() for k, v in self.sequences.items()},
            labels={k: v.pin_memory() for k, v in self.labels.items()},
            masks={k: v.pin_memory() for k, v in self.masks.items()},
        )


def label_masks(schema: DatasetSchema, labels: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-task observation masks from the label block ``[B, T]``: a task observed after another is
    observed where that task's label is 1; other tasks everywhere."""
    ones = torch.ones(labels.shape[0], dtype=labels.dtype)
    position = {t.name: i for i, t in enumerate(schema.tasks)}
    return {
        t.name: labels[:, position[t.observed_after]] if t.observed_after else ones for t in schema.tasks
    }


def gather_batch(dataset: PreparedDataset, rows: np.ndarray) -> Batch:
    """Build a Batch from row indices ``[B]``: one fancy-index per column block."""
    rows = np.sort(rows)  # sorted rows read memory-mapped files front to back
    schema = dataset.schema
    labels = torch.from_numpy(np.asarray(dataset.labels[rows], dtype=np.float32))
    return Batch(
        sparse=torch.from_numpy(dataset.sparse[rows].astype(np.int64)),
        dense=torch.from_numpy(np.asarray(dataset.dense[rows], dtype=np.float32)),
        sequences={
            name: torch.from_numpy(block[rows].astype(np.int64)) for name, block in dataset.sequences.items()
        },
        labels={t.name: labels[:, i] for i, t in enumerate(schema.tasks)},
        masks=label_masks(schema, labels),
    )


class BatchIterator:
    """Iterate over one split in batches; call :meth:`set_epoch` before each epoch.

    With ``shuffle`` the rows are permuted by a generator seeded with ``(seed, epoch)``, so runs repeat.
    ``rank``/``world_size`` give each distributed process a disjoint shard of every epoch's permutation.
    ``prefetch`` > 0 builds that many batches ahead in a background thread.
    """

    def __init__(
        self,
        dataset: PreparedDataset,
        split: str,
        batch_size: int,
        shuffle: bool = False,
        seed: int = 0,
        prefetch: int = 2,
        drop_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if split not in dataset.splits:
            raise KeyError(f"unknown split {split!r}; the dataset has {sorted(dataset.splits)}")
        self.dataset = dataset
        self.indices = np.asarray(dataset.splits[split], dtype=np.int64)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.prefetch = prefetch
        self.drop_last = drop_last
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def epoch_rows(self) -> np.ndarray:
        """This process's row indices for the current epoch, in visiting order."""
        rows = self.indices
        if self.shuffle:
            rows = np.random.default_rng([self.seed, self.epoch]).permutation(rows)
        return rows[self.rank :: self.world_size]

    def __len__(self) -> int:
        n = len(self.epoch_rows())
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def _row_batches(self) -> Iterator[np.ndarray]:
        rows = self.epoch_rows()
        stop = len(self) * self.batch_size
        for start in range(0, min(stop, len(rows)), self.batch_size):
            yield rows[start : start + self.batch_size]

    def __iter__(self) -> Iterator[Batch]:
        if self.prefetch <= 0:
            for rows in self._row_batches():
                yield gather_batch(self.dataset, rows)
            return
        yield from _prefetched((gather_batch(self.dataset, r) for r in self._row_batches()), self.prefetch)


_DONE = object()


def _prefetched(batches: Iterator[Batch], depth: int) -> Iterator[Batch]:
    """Run ``batches`` in a daemon thread, ``depth`` items ahead; re-raise its errors here."""
    q: queue.Queue[object] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in batches:
                if stop.is_set():
                    return
                q.put(item)
            q.put(_DONE)
        except BaseException as exc:
            q.put(exc)

    thread = threading.Thread(target=produce, daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            assert isinstance(item, Batch)
            yield item
    finally:
        stop.set()
        while thread.is_alive():  # unblock a producer waiting on a full queue
            try:
                q.get_nowait()
            except queue.Empty:
                thread.join(timeout=0.01)
