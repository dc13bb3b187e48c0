"""The prepared-dataset format and the vectorized batch iterator."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from fakes import tiny_dataset
from mtrec.data.batches import BatchIterator, gather_batch
from mtrec.data.dataset import DatasetError, PreparedDataset
from mtrec.features.schema import DatasetSchema, SchemaError, SparseFeature, TaskSpec


def test_schema_json_round_trip(tmp_path: Path) -> None:
    schema = tiny_dataset().schema
    schema.save(tmp_path / "schema.json")
    assert DatasetSchema.load(tmp_path / "schema.json") == schema


def test_schema_rejects_inconsistencies() -> None:
    with pytest.raises(SchemaError, match="observed_after='buy' must name an earlier task"):
        DatasetSchema(sparse=(SparseFeature("u", 5),), tasks=(TaskSpec("click", observed_after="buy"),))
    with pytest.raises(SchemaError, match="repeated: \\['u'\\]"):
        DatasetSchema(sparse=(SparseFeature("u", 5), SparseFeature("u", 5)), tasks=(TaskSpec("click"),))


@pytest.mark.parametrize("prefetch", [0, 2])
def test_every_train_row_exactly_once_per_epoch(prefetch: int) -> None:
    data = tiny_dataset(rows=1000)
    it = BatchIterator(data, "train", batch_size=64, shuffle=True, seed=3, prefetch=prefetch)
    for epoch in range(2):
        it.set_epoch(epoch)
        seen = []
        for batch in it:
            # the user id column identifies a row only together with the others; track rows via dense values
            seen.append(batch.features.dense[:, 0].numpy())
        got = np.sort(np.concatenate(seen))
        want = np.sort(data.dense[data.splits["train"], 0])
        np.testing.assert_array_equal(got, want)


def test_rows_visited_match_epoch_permutation_and_batch_count() -> None:
    data = tiny_dataset(rows=500)
    it = BatchIterator(data, "train", batch_size=64, shuffle=True, seed=1, prefetch=0)
    rows = it.epoch_rows()
    assert sorted(rows.tolist()) == sorted(data.splits["train"].tolist())
    assert len(it) == len(list(it)) == -(-len(rows) // 64)


def test_shuffle_is_seeded_and_changes_per_epoch() -> None:
    data = tiny_dataset(rows=500)
    a = BatchIterator(data, "train", 32, shuffle=True, seed=7)
    b = BatchIterator(data, "train", 32, shuffle=True, seed=7)
    c = BatchIterator(data, "train", 32, shuffle=True, seed=8)
    np.testing.assert_array_equal(a.epoch_rows(), b.epoch_rows())
    assert not np.array_equal(a.epoch_rows(), c.epoch_rows())
    first = a.epoch_rows().copy()
    a.set_epoch(1)
    assert not np.array_equal(first, a.epoch_rows())


def test_shards_are_disjoint_and_cover_the_split() -> None:
    data = tiny_dataset(rows=500)
    shards = [BatchIterator(data, "train", 32, shuffle=True, seed=2, rank=r, world_size=3).epoch_rows()
              for r in range(3)]
    joined = np.concatenate(shards)
    assert len(set(joined.tolist())) == len(joined) == data.split_size("train")


def test_memmap_round_trip_gives_identical_batches(tmp_path: Path) -> None:
    data = tiny_dataset(rows=300)
    data.save(tmp_path / "d")
    loaded = PreparedDataset.load(tmp_path / "d")
    assert isinstance(loaded.sparse, np.memmap)
    rows = np.array([5, 3, 200, 17])
    a, b = gather_batch(data, rows), gather_batch(loaded, rows)
    torch.testing.assert_close(a.features.sparse, b.features.sparse)
    torch.testing.assert_close(a.features.dense, b.features.dense)
    for name in a.features.sequences:
        torch.testing.assert_close(a.features.sequences[name], b.features.sequences[name])
    for task in a.labels:
        torch.testing.assert_close(a.labels[task], b.labels[task])
        torch.testing.assert_close(a.masks[task], b.masks[task])


def test_masks_follow_observed_after() -> None:
    data = tiny_dataset(rows=300)
    batch = gather_batch(data, np.arange(300))
    torch.testing.assert_close(batch.masks["conversion"], batch.labels["click"])
    assert bool((batch.masks["click"] == 1).all())


def test_bad_labels_and_mismatched_schema_are_named(tmp_path: Path) -> None:
    data = tiny_dataset(rows=100)
    data.labels[7, 1] = 2.0
    with pytest.raises(DatasetError, match=r"task .conversion. must be 0 or 1: row 7 has 2\.0"):
        data.save(tmp_path / "bad")
    good = tiny_dataset(rows=100)
    with pytest.raises(DatasetError, match=r"'dense'.*shape \(100, 5\).*implies \(100, 2\)"):
        PreparedDataset(good.schema, good.sparse, np.zeros((100, 5), np.float32), good.sequences, good.labels,
                        good.splits)
    good.save(tmp_path / "d")
    np.save(tmp_path / "d" / "dense.npy", np.zeros((100, 5), dtype=np.float32))
    with pytest.raises(DatasetError, match=r"dense\.npy has 2,128 bytes, but 928 bytes were written"):
        PreparedDataset.load(tmp_path / "d")
    with pytest.raises(DatasetError, match="directory not found"):
        PreparedDataset.load(tmp_path / "missing")


def test_failed_save_leaves_previous_dataset_intact(tmp_path: Path) -> None:
    tiny_dataset(rows=100).save(tmp_path / "d")
    broken = tiny_dataset(rows=100)
    broken.labels[0, 0] = 5.0
    with pytest.raises(DatasetError):
        broken.save(tmp_path / "d", overwrite=True)
    assert PreparedDataset.load(tmp_path / "d").num_rows == 100
    assert [p.name for p in tmp_path.iterdir()] == ["d"]
