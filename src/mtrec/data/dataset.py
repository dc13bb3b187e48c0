"""The prepared dataset: columnar ``.npy`` blocks, memory-mapped for training.

Layout of a prepared dataset directory::

    schema.json              the DatasetSchema
    sparse.npy               int32   [N, F_sparse]  ids, fields in schema order
    dense.npy                float32 [N, F_dense]   transformed values, fields in schema order
    seq__<name>.npy          int32   [N, L]         one per sequence feature, left-aligned, 0 = padding
    labels.npy               float32 [N, T]         0/1 per task, tasks in schema order
    oracle.npy               float32 [N, T]         (synthetic only) true probability per task
    splits/{train,valid,test}.npy  int64 [n_split]  row indices of each split
    encoders.json            (prepared from raw files, or saved synthetic data) the FeatureEncoders: vocabularies per
                             embedding table, dense transforms, sequence formats (mtrec.features.encoders)
    prepare.json             (prepared from raw files only) the dataset config used and row counts

Columns of one kind are stored as one 2-D block so that a batch is one fancy-index per block, and a
row's fields are contiguous on disk (one read per row when the data does not fit in memory).
The whole directory is written atomically: a temporary sibling is filled, then renamed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from mtrec.features.encoders import ENCODERS_FILE, FeatureEncoders
from mtrec.features.schema import DatasetSchema, SchemaError
from mtrec.io import atomic_replace_dir, atomic_write_bytes

SPLITS = ("train", "valid", "test")
_LABEL_CHECK_ROWS = 1 << 20


class DatasetError(ValueError):
    """A prepared dataset that is missing, incomplete or inconsistent with its schema."""


@dataclass
class PreparedDataset:
    """Column blocks (memory-mapped or in memory) plus the schema and split indices."""

    schema: DatasetSchema
    sparse: np.ndarray  # int32 [N, F_sparse]
    dense: np.ndarray  # float32 [N, F_dense]
    sequences: dict[str, np.ndarray]  # name -> int32 [N, L]
    labels: np.ndarray  # float32 [N, T]
    splits: dict[str, np.ndarray]  # split -> int64 [n]
    oracle: np.ndarray | None = None  # float32 [N, T]
    path: Path | None = None
    encoders: FeatureEncoders | None = None  # raw values -> ids, held in memory (synthetic data)

    def __post_init__(self) -> None:
        self.check()

    @property
    def num_rows(self) -> int:
        return int(self.labels.shape[0])

    def split_size(self, split: str) -> int:
        return int(self.splits[split].shape[0])

    # ---- consistency ---------------------------------------------------------------------------
    def check(self) -> None:
        """Raise DatasetError naming the first block that disagrees with the schema."""
        where = f" in {self.path}" if self.path else ""
        s = self.schema
        n = self.num_rows
        expected: dict[str, tuple[int, ...]] = {
            "sparse": (n, len(s.sparse)),
            "dense": (n, len(s.dense)),
            "labels": (n, len(s.tasks)),
        }
        actual: dict[str, tuple[int, ...]] = {
            "sparse": self.sparse.shape,
            "dense": self.dense.shape,
            "labels": self.labels.shape,
        }
        for seq in s.sequences:
            block = self.sequences.get(seq.name)
            if block is None:
                raise DatasetError(f"sequence feature {seq.name!r} has no column block{where}")
            expected[f"seq__{seq.name}"] = (n, seq.max_len)
            actual[f"seq__{seq.name}"] = block.shape
        if self.oracle is not None:
            expected["oracle"] = (n, len(s.tasks))
            actual["oracle"] = self.oracle.shape
        for name, shape in expected.items():
            if tuple(actual[name]) != shape:
                raise DatasetError(
                    f"column block {name!r}{where} has shape {tuple(actual[name])} but the schema "
                    f"implies {shape} (rows x fields); the data and schema.json do not match"
                )
        missing = [sp for sp in SPLITS if sp not in self.splits]
        if missing:
            raise DatasetError(f"missing split(s) {missing}{where}")
        for split, idx in self.splits.items():
            if idx.size == 0:
                raise DatasetError(f"split {split!r} is empty{where}")
            if idx.min() < 0 or idx.max() >= n:
                raise DatasetError(f"split {split!r}{where} has row indices outside [0, {n})")

    def check_labels(self) -> None:
        """Raise DatasetError if a binary task's label is not 0 or 1, or a regression task's is not finite
        (checked in chunks: bounded memory)."""
        binary = np.array([t.is_binary for t in self.schema.tasks])
        for start in range(0, self.num_rows, _LABEL_CHECK_ROWS):
            chunk = np.asarray(self.labels[start : start + _LABEL_CHECK_ROWS])
            bad = np.where(binary, (chunk != 0) & (chunk != 1), ~np.isfinite(chunk))
            if bad.any():
                row, col = np.argwhere(bad)[0]
                task = self.schema.tasks[col]
                where = f" in {self.path}" if self.path else ""
                need = "0 or 1" if task.is_binary else "finite"
                raise DatasetError(f"labels of task {task.name!r} must be {need}: row {start + row} has "
                                   f"{float(chunk[row, col])}{where}")

    # ---- files ---------------------------------------------------------------------------------
    def load_encoders(self) -> FeatureEncoders | None:
        """The dataset's encoders (in memory, else its directory's ``encoders.json``); None if it has none."""
        if self.encoders is None and self.path is not None and (self.path / ENCODERS_FILE).is_file():
            return FeatureEncoders.load(self.path / ENCODERS_FILE)
        return self.encoders

    def write_encoders(self, path: Path) -> bool:
        """Write the dataset's encoders (the in-memory ones, else its directory's ``encoders.json``) to
        ``path``; False if it has none."""
        if self.encoders is not None:
            self.encoders.save(path)
            return True
        saved = self.path / ENCODERS_FILE if self.path is not None else None
        if saved is None or not saved.is_file():
            return False
        atomic_write_bytes(path, saved.read_bytes())
        return True

    def save(self, directory: str | Path, vocabularies_json: str | None = None) -> None:
        """Write the dataset directory atomically (see the module docstring for the layout)."""
        self.check_labels()

        def build(tmp: Path) -> None:
            self.schema.save(tmp / "schema.json")
            np.save(tmp / "sparse.npy", np.ascontiguousarray(self.sparse, dtype=np.int32))
            np.save(tmp / "dense.npy", np.ascontiguousarray(self.dense, dtype=np.float32))
            for name, block in self.sequences.items():
                np.save(tmp / f"seq__{name}.npy", np.ascontiguousarray(block, dtype=np.int32))
            np.save(tmp / "labels.npy", np.ascontiguousarray(self.labels, dtype=np.float32))
            if self.oracle is not None:
                np.save(tmp / "oracle.npy", np.ascontiguousarray(self.oracle, dtype=np.float32))
            (tmp / "splits").mkdir()
            for split, idx in self.splits.items():
                np.save(tmp / "splits" / f"{split}.npy", np.asarray(idx, dtype=np.int64))
            if vocabularies_json is not None:
                (tmp / "vocabularies.json").write_text(vocabularies_json)
            if self.encoders is not None:
                self.encoders.save(tmp / ENCODERS_FILE)

        atomic_replace_dir(Path(directory), build)

    @classmethod
    def load(cls, directory: str | Path, mmap: bool = True) -> PreparedDataset:
        """Open a prepared dataset; column blocks are memory-mapped unless ``mmap=False``."""
        directory = Path(directory)
        if not directory.is_dir():
            raise DatasetError(f"prepared dataset directory not found: {directory}")
        try:
            schema = DatasetSchema.load(directory / "schema.json")
        except SchemaError as exc:
            raise DatasetError(f"{directory}: {exc}") from exc
        mode: Literal["r"] | None = "r" if mmap else None

        def block(name: str, required: bool = True) -> np.ndarray | None:
            path = directory / name
            if not path.exists():
                if required:
                    raise DatasetError(f"{directory}: missing column file {name}")
                return None
            try:
                return np.load(path, mmap_mode=mode, allow_pickle=False)
            except ValueError as exc:
                raise DatasetError(f"{path}: not a readable .npy array ({exc})") from exc

        def required(name: str) -> np.ndarray:
            arr = block(name)
            assert arr is not None
            return arr

        splits = {}
        for split in SPLITS:
            path = directory / "splits" / f"{split}.npy"
            if not path.exists():
                raise DatasetError(f"{directory}: missing split file splits/{split}.npy")
            splits[split] = np.load(path, allow_pickle=False)
        dataset = cls(
            schema=schema,
            sparse=required("sparse.npy"),
            dense=required("dense.npy"),
            sequences={s.name: required(f"seq__{s.name}.npy") for s in schema.sequences},
            labels=required("labels.npy"),
            splits=splits,
            oracle=block("oracle.npy", required=False),
            path=directory,
        )
        dataset.check_labels()
        return dataset


class DatasetWriter:
    """Fills a prepared dataset directory block by block, with bounded memory.

    Each column block is a memory-mapped ``.npy`` file (``numpy.lib.format.open_memmap``) of its final
    shape; rows are written at their offsets with :meth:`write_rows` and split indices appended with
    :meth:`add_split_rows`. Used inside :func:`mtrec.io.atomic_replace_dir` so that readers never see a
    half-written dataset.
    """

    def __init__(self, directory: Path, schema: DatasetSchema, num_rows: int, split_sizes: Mapping[str, int]
                 ) -> None:
        self.directory = d = Path(directory)
        self.schema = schema
        self.num_rows = n = num_rows
        schema.save(d / "schema.json")

        def block(name: str, dtype: type, shape: tuple[int, ...]) -> np.memmap:
            return np.lib.format.open_memmap(d / name, mode="w+", dtype=dtype, shape=shape)

        self.sparse = block("sparse.npy", np.int32, (n, len(schema.sparse)))
        self.dense = block("dense.npy", np.float32, (n, len(schema.dense)))
        self.sequences = {
            s.name: block(f"seq__{s.name}.npy", np.int32, (n, s.max_len)) for s in schema.sequences
        }
        self.labels = block("labels.npy", np.float32, (n, len(schema.tasks)))
        (d / "splits").mkdir(exist_ok=True)
        self.splits = {
            split: block(f"splits/{split}.npy", np.int64, (split_sizes[split],)) for split in SPLITS
        }
        self._split_fill = dict.fromkeys(SPLITS, 0)

    def write_rows(self, start: int, sparse: np.ndarray, dense: np.ndarray,
                   sequences: Mapping[str, np.ndarray], labels: np.ndarray) -> None:
        """Rows ``[start, start + n)``: sparse ``[n, F_sparse]``, dense ``[n, F_dense]``, sequences
        ``{name: [n, L]}``, labels ``[n, T]``."""
        stop = start + labels.shape[0]
        if stop > self.num_rows:
            raise DatasetError(f"rows up to {stop} written to a dataset of {self.num_rows} rows")
        self.sparse[start:stop] = sparse
        self.dense[start:stop] = dense
        for name, block in sequences.items():
            self.sequences[name][start:stop] = block
        self.labels[start:stop] = labels

    def add_split_rows(self, split: str, rows: np.ndarray) -> None:
        """Append row indices ``[k]`` to a split."""
        at = self._split_fill[split]
        self.splits[split][at : at + rows.shape[0]] = rows
        self._split_fill[split] = at + rows.shape[0]

    def close(self) -> None:
        """Flush every block; raise DatasetError if a split was not filled to its declared size."""
        for split, array in self.splits.items():
            if self._split_fill[split] != array.shape[0]:
                raise DatasetError(f"split {split!r}: {self._split_fill[split]} row indices written, "
                                   f"{array.shape[0]} declared")
        blocks = [self.sparse, self.dense, self.labels, *self.sequences.values(), *self.splits.values()]
        for block in blocks:
            block.flush()
        del self.sparse, self.dense, self.labels, self.sequences, self.splits
