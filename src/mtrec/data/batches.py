"""Batches and the vectorized batch iterator.

A batch is gathered with one fancy-index per column block (nanoGPT's ``get_batch``): no per-sample
``Dataset.__getitem__`` and no collate of rows. Each epoch draws a seeded permutation of the split's row
indices; every row appears exactly once per epoch. A background thread can build the next batches while
the model steps on the current one.

In distributed training each optimizer step's rows are dealt to the ranks (see :class:`BatchIterator`);
a rank's batch then says, in :class:`StepShard`, how many rows and observed labels the whole step has,
so that losses can be normalised by the step's counts rather than by the rank's own.
"""

from __future__ import annotations

import dataclasses
import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch

from mtrec.data.dataset import PreparedDataset
from mtrec.features.inputs import Features, features_of
from mtrec.features.schema import DatasetSchema


@dataclass(frozen=True)
class StepShard:
    """Where a rank's batch sits in its optimizer step (distributed training only).

    ``step_rows``: real rows of the whole step over all ranks; ``step_observed``: per task, the rows of the
    whole step where the task's label is observed; ``world_size``: the number of ranks sharing the step.
    """

    world_size: int
    step_rows: int
    step_observed: dict[str, float]


@dataclass
class Batch:
    """One training batch of B rows: the model's :class:`~mtrec.features.inputs.Features` and, keyed by
    task name, what the objective needs besides them.

    features:  the model input (sparse ids, dense values, sequences)
    labels:    task -> float32 [B]     0/1 (binary tasks) or the value (regression tasks)
    masks:     task -> float32 [B]     1 where the task's label is observed (all ones unless observed_after)
    padding:   the last ``padding`` rows are copies of a real row with every mask 0 (they keep distributed
               shards equal in size and add nothing to a loss normalised by :meth:`row_weights` or masks)
    shard:     the step this batch is one rank's share of (None on a single process)
    """

    features: Features
    labels: dict[str, torch.Tensor] = field(default_factory=dict)
    masks: dict[str, torch.Tensor] = field(default_factory=dict)
    padding: int = 0
    shard: StepShard | None = None

    def __len__(self) -> int:
        return len(self.features)

    @property
    def num_real(self) -> int:
        """Rows that are data, not padding."""
        return len(self) - self.padding

    @property
    def step_rows(self) -> int:
        """Real rows of the whole optimizer step over all ranks (this batch's own on one process)."""
        return self.shard.step_rows if self.shard is not None else self.num_real

    def row_weights(self) -> torch.Tensor:
        """float32 ``[B]``: 1 for a real row, 0 for a padding row."""
        weights = torch.ones(len(self), dtype=torch.float32, device=self.features.dense.device)
        if self.padding:
            weights[len(self) - self.padding :] = 0.0
        return weights

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        return dataclasses.replace(
            self,
            features=self.features.to(device, non_blocking=non_blocking),
            labels={k: v.to(device, non_blocking=non_blocking) for k, v in self.labels.items()},
            masks={k: v.to(device, non_blocking=non_blocking) for k, v in self.masks.items()},
        )


def label_masks(
    schema: DatasetSchema, labels: torch.Tensor, real: torch.Tensor | None = None
) -> dict[str, torch.Tensor]:
    """Per-task observation masks from the label block ``[B, T]``: a task observed after another is
    observed where that task's label is 1; other tasks everywhere. ``real`` ``[B]`` (1 real, 0 padding)
    zeroes every mask on padding rows."""
    real = torch.ones(labels.shape[0], dtype=labels.dtype) if real is None else real
    position = {t.name: i for i, t in enumerate(schema.tasks)}
    return {
        t.name: labels[:, position[t.observed_after]] * real if t.observed_after else real for t in schema.tasks
    }


def gather_batch(dataset: PreparedDataset, rows: np.ndarray, padding: int = 0) -> Batch:
    """Build a Batch from row indices ``[B]``: one fancy-index per column block.

    ``padding`` > 0 appends that many copies of the first row with all masks 0 (``rows`` must not be
    empty then); the real rows come first, sorted.
    """
    rows = np.sort(rows)  # sorted rows read memory-mapped files front to back
    if padding:
        rows = np.concatenate([rows, np.repeat(rows[:1], padding)])
    schema = dataset.schema
    labels = torch.from_numpy(np.asarray(dataset.labels[rows], dtype=np.float32))
    real = torch.ones(len(rows), dtype=torch.float32)
    real[len(rows) - padding :] = 0.0
    features = features_of(
        schema,
        sparse=torch.from_numpy(dataset.sparse[rows].astype(np.int64)),
        dense=torch.from_numpy(np.asarray(dataset.dense[rows], dtype=np.float32)),
        sequences={
            name: torch.from_numpy(block[rows].astype(np.int64)) for name, block in dataset.sequences.items()
        },
    )
    return Batch(
        features=features,
        labels={t.name: labels[:, i] for i, t in enumerate(schema.tasks)},
        masks=label_masks(schema, labels, real),
        padding=padding,
    )


def observed_counts(dataset: PreparedDataset, rows: np.ndarray) -> dict[str, float]:
    """Per task, how many of ``rows`` have the task's label observed (reads only the label block)."""
    labels = torch.from_numpy(np.asarray(dataset.labels[np.sort(rows)], dtype=np.float32))
    return {task: float(mask.sum()) for task, mask in label_masks(dataset.schema, labels).items()}


class BatchIterator:
    """Iterate over one split in batches; call :meth:`set_epoch` before each epoch.

    With ``shuffle`` the rows are permuted by a generator seeded with ``(seed, epoch)``, so runs repeat.
    ``batch_size`` is the size of one optimizer step over all processes: step ``k`` takes rows
    ``[k * batch_size, (k + 1) * batch_size)`` of the epoch's order, exactly the batch a single process
    would take. With ``world_size`` W > 1, rank r gets every W-th of those rows starting at r, so each rank's
    batch holds ``ceil(batch_size / W)`` rows; where the step's rows do not divide by W, the ranks that are
    one row short get a padding row (a copy of a real row with every mask 0, see :class:`Batch`). Every
    rank therefore runs the same number of steps with the same batch shape, and every row of the split is
    trained on exactly once per epoch across the ranks: nothing is dropped or repeated. Each distributed
    batch carries the step's counts (:class:`StepShard`).
    ``drop_last`` drops a final step smaller than ``batch_size`` (its rows are then not seen that epoch).
    ``rows`` restricts the iterator to those row indices of the split (e.g. one rank's block of a split
    to score). ``prefetch`` > 0 builds that many batches ahead in a background thread.
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
        rows: np.ndarray | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if split not in dataset.splits:
            raise KeyError(f"unknown split {split!r}; the dataset has {sorted(dataset.splits)}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")
        self.dataset = dataset
        self.indices = np.asarray(dataset.splits[split] if rows is None else rows, dtype=np.int64)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.prefetch = prefetch
        self.drop_last = drop_last
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        self.start_step = 0

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        """Select the epoch's order; iteration starts at step ``start_step`` (to resume mid-epoch)."""
        self.epoch = epoch
        self.start_step = start_step

    def order(self) -> np.ndarray:
        """All ranks' row indices for the current epoch, in visiting order."""
        if self.shuffle:
            return np.random.default_rng([self.seed, self.epoch]).permutation(self.indices)
        return self.indices

    def __len__(self) -> int:
        """Steps per epoch (the same on every rank), counting from step 0."""
        n = len(self.indices)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def _steps(self) -> Iterator[np.ndarray]:
        """Each remaining step's rows over all ranks."""
        order = self.order()
        for step in range(self.start_step, len(self)):
            yield order[step * self.batch_size : (step + 1) * self.batch_size]

    def epoch_rows(self) -> np.ndarray:
        """This rank's row indices for the current epoch (from step 0), in visiting order, no padding."""
        order, b, r, w = self.order(), self.batch_size, self.rank, self.world_size
        return np.concatenate([order[k * b : (k + 1) * b][r::w] for k in range(len(self))] or [order[:0]])

    def _shard(self, step_rows: np.ndarray) -> Batch:
        """This rank's batch of one step: its share of ``step_rows``, padded to the largest share."""
        if self.world_size == 1:
            return gather_batch(self.dataset, step_rows)
        mine = step_rows[self.rank :: self.world_size]
        share = -(-len(step_rows) // self.world_size)
        if len(mine):
            batch = gather_batch(self.dataset, mine, padding=share - len(mine))
        else:  # a step with fewer rows than ranks: this rank's batch is padding only
            batch = _all_padding(gather_batch(self.dataset, step_rows[:share]))
        batch.shard = StepShard(self.world_size, len(step_rows), observed_counts(self.dataset, step_rows))
        return batch

    def __iter__(self) -> Iterator[Batch]:
        batches = (self._shard(rows) for rows in self._steps())
        if self.prefetch <= 0:
            yield from batches
            return
        yield from _prefetched(batches, self.prefetch)


def _all_padding(batch: Batch) -> Batch:
    """The same rows, all of them padding (every mask 0)."""
    return dataclasses.replace(
        batch, masks={t: torch.zeros_like(m) for t, m in batch.masks.items()}, padding=len(batch)
    )


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
