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
    complete.json            written last: every file above with its size in bytes

Columns of one kind are stored as one 2-D block so that a batch is one fancy-index per block, and a
row's fields are contiguous on disk (one read per row when the data does not fit in memory).
The whole directory is written atomically: a temporary sibling is filled, then renamed. ``complete.json``
is what makes a directory a prepared dataset: loading refuses a directory without it (an interrupted
write, or a directory that is not ours), a missing file, and a column block whose size differs from the
one it lists (truncated or replaced). Writing over an existing directory is allowed only over a prepared
dataset, and only when asked (:func:`check_replaceable`): a directory holding anything else is never
deleted.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from mtrec.errors import UserError
from mtrec.features.encoders import ENCODERS_FILE, FeatureEncoders
from mtrec.features.schema import DatasetSchema, SchemaError
from mtrec.io import (
    PathError,
    atomic_replace_dir,
    atomic_write_bytes,
    check_output_dir,
    check_own_dir,
    is_inside,
    json_text,
)
from mtrec.resources import check_disk

SPLITS = ("train", "valid", "test")
MARKER = "complete.json"
MARKER_FORMAT = "mtrec-prepared-dataset"
_CHECK_ROWS = 1 << 18  # rows per chunk of the label and id checks (bounded memory)
# the files a prepared dataset may hold (relative paths): anything else in a directory makes it not ours
_OURS = re.compile(r"^(schema\.json|encoders\.json|prepare\.json|vocabularies\.json|complete\.json|"
                   r"(sparse|dense|labels|oracle|seq__.+)\.npy|splits/(train|valid|test)\.npy)$")


class DatasetError(UserError, ValueError):
    """A prepared dataset that is missing, incomplete or inconsistent with its schema."""


def seal(directory: Path) -> None:
    """Write ``complete.json`` (every file of the dataset directory with its size): the last write of a
    prepared dataset, which makes it loadable."""
    files = {str(p.relative_to(directory)): p.stat().st_size for p in sorted(directory.rglob("*"))
             if p.is_file() and p.name != MARKER}
    text = json_text({"format": MARKER_FORMAT, "version": 1, "files": files}, indent=1) + "\n"
    (directory / MARKER).write_text(text)


def check_replaceable(directory: str | Path, overwrite: bool, inputs: tuple[Path, ...] = ()) -> Path:
    """May a prepared dataset be written to ``directory``? Its absolute path if so, else DatasetError.

    Yes for a new or empty directory; for a prepared dataset only with ``overwrite``; never for a file, a
    directory holding anything a prepared dataset does not (naming it), or one that holds an input."""
    try:
        out = check_output_dir(directory, "prepared dataset directory")
        for path in inputs:
            if is_inside(path, out):
                raise PathError(f"input {path} is inside the output directory {out}: writing the dataset "
                                f"would replace it; choose another --out")
        check_own_dir(out, _OURS, "a prepared dataset")
    except PathError as exc:
        raise DatasetError(str(exc)) from None
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise DatasetError(f"output directory {out} already holds a prepared dataset: pass --overwrite "
                           f"to replace it")
    return out


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

    def split_size(self, split: str, fraction: float = 1.0) -> int:
        """How many rows :meth:`split_rows` gives for ``split`` and ``fraction``."""
        size = int(self.splits[split].shape[0])
        return size if fraction >= 1.0 else max(1, round(fraction * size))

    def split_rows(self, split: str, fraction: float = 1.0) -> np.ndarray:
        """The row indices (int64 [n]) of ``split``; with ``fraction`` < 1 a fixed subset of
        ``max(1, round(fraction * n))`` of them, drawn by ``numpy.random.default_rng(0)`` and kept in split
        order, so every run with the same fraction trains on the same rows."""
        rows = self.splits[split]
        if fraction >= 1.0:
            return rows
        keep = self.split_size(split, fraction)
        return np.sort(rows[np.random.default_rng(0).choice(len(rows), size=keep, replace=False)])

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
            if idx.ndim != 1 or not np.issubdtype(idx.dtype, np.integer):
                raise DatasetError(f"split {split!r}{where} is not a list of row indices "
                                   f"(an array of {idx.dtype} with shape {idx.shape})")
            if idx.size == 0:
                raise DatasetError(f"split {split!r} is empty{where}")
            if idx.min() < 0 or idx.max() >= n:
                raise DatasetError(f"split {split!r}{where} has row indices outside [0, {n})")

    def check_ids(self) -> None:
        """Raise DatasetError naming the column, row and value of an id outside ``[0, vocab_size)``
        (``schema.json`` and the id blocks disagree; checked in chunks: bounded memory)."""
        where = f" in {self.path}" if self.path else ""
        blocks: list[tuple[str, np.ndarray, list[tuple[str, int]]]] = [
            ("sparse.npy", self.sparse, [(f.name, f.vocab_size) for f in self.schema.sparse])]
        blocks += [(f"seq__{s.name}.npy", self.sequences[s.name], [(s.name, s.vocab_size)] * s.max_len)
                   for s in self.schema.sequences]
        for file, block, fields in blocks:
            if not fields or not np.issubdtype(block.dtype, np.integer):
                if fields:
                    raise DatasetError(f"{file}{where} holds {block.dtype} values; ids must be integers")
                continue
            sizes = np.array([size for _, size in fields])  # [F]
            for start in range(0, self.num_rows, _CHECK_ROWS):
                chunk = np.asarray(block[start : start + _CHECK_ROWS])  # [n, F]
                if chunk.min(initial=0) >= 0 and (chunk.max(axis=0, initial=0) < sizes).all():
                    continue
                row, col = np.argwhere((chunk < 0) | (chunk >= sizes))[0]
                name, size = fields[col]
                raise DatasetError(f"{file}{where}: feature {name!r} has id {int(chunk[row, col])} at row "
                                   f"{start + row}, outside [0, {size}) (its vocab_size in schema.json); the "
                                   f"data and schema.json do not match")

    def check_labels(self) -> None:
        """Raise DatasetError if a binary task's label is not 0 or 1, or a regression task's is not finite
        (checked in chunks: bounded memory)."""
        binary = np.array([t.is_binary for t in self.schema.tasks])
        for start in range(0, self.num_rows, _CHECK_ROWS):
            chunk = np.asarray(self.labels[start : start + _CHECK_ROWS])
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

    def save(self, directory: str | Path, overwrite: bool = False) -> None:
        """Write the dataset directory atomically with :class:`DatasetWriter` (see the module docstring for
        the layout); an existing prepared dataset there is replaced only with ``overwrite`` (see
        :func:`check_replaceable`)."""
        out = check_replaceable(directory, overwrite)
        self.check_labels()
        self.check_ids()
        sizes = {split: self.split_size(split) for split in SPLITS}

        def build(tmp: Path) -> None:
            writer = DatasetWriter(tmp, self.schema, self.num_rows, sizes, oracle=self.oracle is not None)
            for start in range(0, self.num_rows, _CHECK_ROWS):
                rows = slice(start, start + _CHECK_ROWS)
                writer.write_rows(start, self.sparse[rows], self.dense[rows],
                                  {name: block[rows] for name, block in self.sequences.items()}, self.labels[rows],
                                  None if self.oracle is None else self.oracle[rows])
            for split, idx in self.splits.items():
                writer.add_split_rows(split, np.asarray(idx))
            writer.finish(self.encoders)

        atomic_replace_dir(out, build)

    @classmethod
    def load(cls, directory: str | Path, mmap: bool = True) -> PreparedDataset:
        """Open a prepared dataset; column blocks are memory-mapped unless ``mmap=False``.

        Raises DatasetError naming what is wrong: no such directory, an incomplete one (no
        ``complete.json``), a damaged file, blocks that disagree with ``schema.json``, a label that is
        not 0/1 or an id outside its vocabulary."""
        directory = Path(directory)
        if not directory.is_dir():
            raise DatasetError(f"prepared dataset directory not found: {directory}")
        sizes = _check_complete(directory)
        try:
            schema = DatasetSchema.load(directory / "schema.json")
        except SchemaError as exc:
            raise DatasetError(f"{directory}: {exc}") from exc
        mode: Literal["r"] | None = "r" if mmap else None

        def block(name: str, required: bool = True, eager: bool = False) -> np.ndarray | None:
            path = directory / name
            if not path.exists():
                if required:
                    raise DatasetError(f"{directory}: missing column file {name}")
                return None
            if name not in sizes:
                raise DatasetError(f"{path} is not one of the files {MARKER} lists: prepare the dataset again")
            try:
                return np.load(path, mmap_mode=None if eager else mode, allow_pickle=False)
            except (ValueError, EOFError, OSError) as exc:
                raise DatasetError(f"{path}: not a readable .npy array ({exc})") from None

        def required(name: str, eager: bool = False) -> np.ndarray:
            arr = block(name, eager=eager)
            assert arr is not None
            return arr

        dataset = cls(
            schema=schema,
            sparse=required("sparse.npy"),
            dense=required("dense.npy"),
            sequences={s.name: required(f"seq__{s.name}.npy") for s in schema.sequences},
            labels=required("labels.npy"),
            splits={split: required(f"splits/{split}.npy", eager=True) for split in SPLITS},
            oracle=block("oracle.npy", required=False),
            path=directory,
        )
        dataset.check_labels()
        dataset.check_ids()
        return dataset


def _check_complete(directory: Path) -> dict[str, int]:
    """The files ``complete.json`` lists with their sizes, after checking each is there with that size."""
    marker = directory / MARKER
    if not marker.is_file():
        hint = ("a temporary directory left by an interrupted write" if directory.name.endswith(".tmp")
                else "an interrupted `prepare`, or not a prepared dataset")
        raise DatasetError(f"{directory} is not a complete prepared dataset: it has no {MARKER}, which is "
                           f"written last ({hint}); prepare it again")
    try:
        document = json.loads(marker.read_text())
        files = {str(k): int(v) for k, v in document["files"].items()}
        if document.get("format") != MARKER_FORMAT:
            raise ValueError(f"format {document.get('format')!r}")
    except (ValueError, KeyError, TypeError, AttributeError, OSError) as exc:
        raise DatasetError(f"{marker}: not a valid completeness marker ({exc}); prepare the dataset again") from None
    for name, size in files.items():  # the column blocks' sizes; the text files are checked by their parsers
        path = directory / name
        actual = path.stat().st_size if path.is_file() else None
        if actual is None or (name.endswith(".npy") and actual != size):
            state = "is missing" if actual is None else f"has {actual:,} bytes"
            raise DatasetError(f"{path} {state}, but {size:,} bytes were written: the file is damaged "
                               f"(truncated or replaced); prepare the dataset again")
    return files


def layout_bytes(schema: DatasetSchema, num_rows: int, oracle: bool = False) -> int:
    """The bytes the column blocks and split indices of ``num_rows`` rows take (headers and text files
    aside): what writing the dataset needs on disk."""
    width = len(schema.sparse) + len(schema.dense) + sum(s.max_len for s in schema.sequences)
    tasks = len(schema.tasks) * (2 if oracle else 1)
    return num_rows * (4 * (width + tasks) + 8)


class _BlockFile:
    """One ``.npy`` file written front to back: the header of its final ``shape``, then rows appended in
    order. Plain writes, not a memory map: a full disk is an OSError (``No space left on device``) at
    the write, never a SIGBUS later."""

    def __init__(self, path: Path, dtype: type, shape: tuple[int, ...]) -> None:
        self.path, self.dtype, self.shape = path, np.dtype(dtype), shape
        self.rows = 0
        self.file = open(path, "wb")  # noqa: SIM115 (closed by close())
        header = {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False, "shape": shape}
        np.lib.format.write_array_header_2_0(self.file, header)

    def append(self, block: np.ndarray) -> None:
        """Rows ``[k, *shape[1:]]`` after those written."""
        if self.rows + block.shape[0] > self.shape[0]:
            raise DatasetError(f"{self.path.name}: rows up to {self.rows + block.shape[0]} written to a block "
                               f"of {self.shape[0]}")
        self.file.write(np.ascontiguousarray(block, dtype=self.dtype).tobytes())
        self.rows += block.shape[0]

    def close(self) -> None:
        self.file.close()
        if self.rows != self.shape[0]:
            raise DatasetError(f"{self.path.name}: {self.rows} rows written, {self.shape[0]} declared")


class DatasetWriter:
    """The one writer of the prepared layout: fills a dataset directory block by block, in row order,
    with bounded memory (see the module docstring for the layout).

    Each column block is a ``.npy`` file of its final shape, written front to back (:class:`_BlockFile`):
    rows with :meth:`write_rows` (at increasing offsets), split indices appended with
    :meth:`add_split_rows`; :meth:`finish` adds the encoders and the text files and seals the directory.
    Used inside :func:`mtrec.io.atomic_replace_dir` so that readers never see a half-written dataset.
    """

    def __init__(self, directory: Path, schema: DatasetSchema, num_rows: int, split_sizes: Mapping[str, int],
                 oracle: bool = False) -> None:
        self.directory = d = Path(directory)
        self.num_rows = n = num_rows
        check_disk(d, layout_bytes(schema, n, oracle), "the prepared dataset", DatasetError)
        schema.save(d / "schema.json")
        (d / "splits").mkdir(exist_ok=True)
        blocks = {"sparse": (np.int32, (n, len(schema.sparse))), "dense": (np.float32, (n, len(schema.dense))),
                  **{f"seq__{s.name}": (np.int32, (n, s.max_len)) for s in schema.sequences},
                  "labels": (np.float32, (n, len(schema.tasks))),
                  **({"oracle": (np.float32, (n, len(schema.tasks)))} if oracle else {}),
                  **{f"splits/{split}": (np.int64, (split_sizes[split],)) for split in SPLITS}}
        self.blocks = {name: _BlockFile(d / f"{name}.npy", dtype, shape) for name, (dtype, shape) in blocks.items()}

    def write_rows(self, start: int, sparse: np.ndarray, dense: np.ndarray, sequences: Mapping[str, np.ndarray],
                   labels: np.ndarray, oracle: np.ndarray | None = None) -> None:
        """Rows ``[start, start + n)``, following those written: sparse ``[n, F_sparse]``, dense
        ``[n, F_dense]``, sequences ``{name: [n, L]}``, labels ``[n, T]``, oracle ``[n, T]`` (if declared)."""
        if start != self.blocks["labels"].rows:
            raise DatasetError(f"rows written from {start}, but {self.blocks['labels'].rows} rows precede them")
        parts = {"sparse": sparse, "dense": dense, "labels": labels,
                 **{f"seq__{name}": block for name, block in sequences.items()},
                 **({"oracle": oracle} if oracle is not None else {})}
        for name, block in parts.items():
            self.blocks[name].append(block)

    def add_split_rows(self, split: str, rows: np.ndarray) -> None:
        """Append row indices ``[k]`` to a split."""
        self.blocks[f"splits/{split}"].append(rows)

    def finish(self, encoders: FeatureEncoders | None = None, texts: Mapping[str, str] | None = None) -> None:
        """Close every block (DatasetError if one was not filled to its declared size), write the
        encoders and the text files ``{name: text}`` (``prepare.json``), and seal the directory."""
        for block in self.blocks.values():
            block.close()
        if encoders is not None:
            encoders.save(self.directory / ENCODERS_FILE)
        for name, text in (texts or {}).items():
            (self.directory / name).write_text(text)
        seal(self.directory)
