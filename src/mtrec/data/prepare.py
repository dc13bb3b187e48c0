"""Raw files + dataset config -> a prepared dataset directory (the library behind ``mtrec prepare``).

Two streaming passes over the raw chunks keep memory bounded whatever the file size:

1. **fit**: assign each row its split, check labels, count each embedding table's values and accumulate
   each dense feature's moments, on the **train** rows only;
2. **write**: encode every kept row with the fitted :class:`FeatureEncoders` (the same ``encode`` used at
   serving time) into memory-mapped ``.npy`` blocks, written in place at their row offsets.

Memory holds one chunk, the vocabulary counters and (for the ``permutation`` split) one byte per row.
The output is a function of the input alone: re-running gives identical bytes, whatever the chunk size
(moments are summed over fixed blocks of rows, vocabularies ordered by count then value).
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from tqdm.auto import tqdm

from mtrec.data.config import DatasetConfig, DatasetConfigError, SplitConfig, TaskConfig, load_dataset_config
from mtrec.data.dataset import SPLITS, DatasetWriter, PreparedDataset, check_replaceable
from mtrec.data.label_stats import ValueSummary
from mtrec.data.readers import Chunk, ColumnLayout, DataFormatError, iter_chunks, read_layout, resolve_paths
from mtrec.features.encoders import (
    DenseTransform,
    EncodingError,
    FeatureEncoders,
    SequenceFormat,
    canonical_strings,
    parse_numbers,
    sequence_tokens,
    signed_log1p,
    value_counts,
)
from mtrec.features.schema import DatasetSchema, DenseFeature, SequenceFeature, SparseFeature, TaskSpec
from mtrec.features.vocab import Vocabulary
from mtrec.io import atomic_replace_dir, json_text
from mtrec.locks import locked_directory
from mtrec.resources import check_memory

PREPARE_FILE = "prepare.json"
DROPPED = -1
_UNIFORM_BLOCK = 1 << 16  # rows per seeded block of the random split (chunk-size independent)
_MOMENT_BLOCK = 1 << 16  # rows per block of the dense moment sums (chunk-size independent)
_SEQUENCE_CELL_BYTES = 24  # memory per (row, position) of a history while a chunk is encoded (ids, positions, masks)


# ---- input files ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class InputFile:
    path: Path
    split: str | None  # the split of every row (``files`` split), or None (assigned per row)
    parts: tuple[tuple[str, float, float], ...] = ()  # (split, from, to) of a file divided between splits
    seed: int = 0  # the seed of a divided file's row permutation


def input_files(config: DatasetConfig, raw: str | Path | None = None) -> list[InputFile]:
    """The raw files to read, in order. ``raw`` replaces ``source.path`` (for a ``files`` split: the
    directory its file names are relative to). A file divided between splits is read once."""
    specs = (str(raw),) if raw is not None else config.source.path
    if config.split.kind == "files":
        base = Path(specs[0]) if specs else None
        if base is not None and not base.is_dir():
            raise DatasetConfigError(f"{config.origin}: with split kind 'files', the source path (or --raw) "
                                     f"must be the directory of the split files; {base} is not a directory")
        files: list[InputFile] = []
        for split in SPLITS:
            if split not in config.split.files:
                continue
            paths = resolve_paths(config.split.files[split], base)
            if split not in config.split.parts:
                files.extend(InputFile(p, split) for p in paths)
            elif all(f.path != paths[0] for f in files):
                seed, parts = config.split.file_parts(config.split.parts[split].file)
                files.append(InputFile(paths[0], None, parts, seed))
        return files
    if not specs:
        raise DatasetConfigError(f"{config.origin}: no raw data: set source.path or pass --raw")
    return [InputFile(p, None) for p in resolve_paths(specs)]


# ---- split assignment ----------------------------------------------------------------------------------
def _uniform(seed: int, start: int, n: int) -> np.ndarray:
    """Seeded uniforms for global rows ``[start, start + n)``: row r's draw depends only on (seed, r)."""
    first, last = start // _UNIFORM_BLOCK, (start + n - 1) // _UNIFORM_BLOCK if n else start // _UNIFORM_BLOCK
    draws = np.concatenate([np.random.default_rng([seed, b]).random(_UNIFORM_BLOCK)
                            for b in range(first, last + 1)])
    offset = start - first * _UNIFORM_BLOCK
    return draws[offset : offset + n]


def _by_fractions(u: np.ndarray, fractions: tuple[float, ...]) -> np.ndarray:
    return np.searchsorted(np.cumsum(fractions)[:-1], u, side="right").astype(np.int8)


def _permuted_parts(n: int, seed: int, parts: list[tuple[str, int, int]]) -> np.ndarray:
    """Splits ``[n]`` (int8) of ``n`` rows permuted by ``perm = default_rng(seed).permutation(n)``: rows
    ``perm[a:b]`` go to the split of each part ``(split, a, b)``, rows in no part are DROPPED."""
    perm = np.random.default_rng(seed).permutation(n)
    table = np.full(n, DROPPED, dtype=np.int8)
    for split, a, b in parts:
        table[perm[a:b]] = SPLITS.index(split)
    return table


class SplitAssigner:
    """Each row's split: 0 train, 1 valid, 2 test, -1 dropped (outside every range of a column split, or
    in no part of a divided file)."""

    def __init__(self, split: SplitConfig, total_rows: int | None = None,
                 divided: dict[Path, int] | None = None) -> None:
        """``total_rows``: all rows (a ``permutation`` split); ``divided``: the row count of each file
        divided into parts (a ``files`` split)."""
        self.split = split
        self.table: np.ndarray | None = None
        self.divided: dict[Path, np.ndarray] = {}
        self.rows = divided or {}
        if split.kind == "permutation":
            assert total_rows is not None
            a = int(split.fractions[0] * total_rows)
            b = a + int(split.fractions[1] * total_rows)
            self.table = _permuted_parts(total_rows, split.seed,
                                         [("train", 0, a), ("valid", a, b), ("test", b, total_rows)])

    def assign(self, chunk: Chunk, start: int, file: InputFile | None) -> np.ndarray:
        """Splits ``[n]`` (int8) of a chunk of ``file`` whose first row is global row ``start``."""
        n = chunk.num_rows
        kind = self.split.kind
        if kind == "permutation":
            assert self.table is not None
            return self.table[start : start + n]
        if kind == "random":
            return _by_fractions(_uniform(self.split.seed, start, n), self.split.fractions)
        if kind == "files":
            assert file is not None
            if file.parts:
                if file.path not in self.divided:
                    rows = self.rows[file.path]
                    self.divided[file.path] = _permuted_parts(
                        rows, file.seed, [(split, int(lo * rows), int(hi * rows)) for split, lo, hi in file.parts])
                return self.divided[file.path][chunk.first_row : chunk.first_row + n]
            assert file.split is not None
            out = np.full(n, SPLITS.index(file.split), dtype=np.int8)
            if file.split == "train" and "valid" not in self.split.files:
                out[_uniform(self.split.seed, start, n) < self.split.valid_fraction] = 1
            return out
        return self._by_column(chunk)

    def _by_column(self, chunk: Chunk) -> np.ndarray:
        column = self.split.column
        text = chunk.table[column].combine_chunks()
        bounds = [b for r in self.split.ranges.values() for b in r if b is not None]
        numeric = bool(bounds) and not isinstance(bounds[0], str)
        values: Any
        if numeric:
            try:
                values = parse_numbers(text, feature=column)
            except EncodingError as exc:
                raise DataFormatError(f"{chunk.where(exc.row or 0)}, split column {column!r}: {exc.value!r} "
                                      f"is not a number (the split ranges are numbers)") from None
            missing = np.flatnonzero(np.isnan(values))
            if missing.size:
                raise DataFormatError(f"{chunk.where(int(missing[0]))}, split column {column!r}: no value")
        else:
            values = text
        out = np.full(chunk.num_rows, DROPPED, dtype=np.int8)
        for i, split in enumerate(SPLITS):
            lo, hi = (b if numeric or b is None else _typed_bound(b, values.type, chunk, f"split.{split}.{key}")
                      for b, key in zip(self.split.ranges[split], ("from", "to"), strict=True))
            inside = np.ones(chunk.num_rows, dtype=bool)
            if numeric:
                if lo is not None:
                    inside &= values >= lo
                if hi is not None:
                    inside &= values < hi
            else:
                if lo is not None:
                    inside &= np.asarray(pc.greater_equal(values, lo).to_numpy(zero_copy_only=False), bool)
                if hi is not None:
                    inside &= np.asarray(pc.less(values, hi).to_numpy(zero_copy_only=False), bool)
            out[inside] = i
        return out


def _typed_bound(bound: str, kind: pa.DataType, chunk: Chunk, key: str) -> pa.Scalar:
    """A range bound written as text, as a value of the split column's type (a Parquet date or timestamp,
    a number) to compare with; DataFormatError naming the key where it is not one."""
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        return pa.scalar(bound, kind)
    try:
        return pa.scalar(bound).cast(kind)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise DataFormatError(f"{chunk.path}: {key} {bound!r} cannot be compared with the split column's "
                              f"{kind} values ({' '.join(str(exc).split())[:120]})") from None


def count_rows(files: list[InputFile], config: DatasetConfig, layout: ColumnLayout,
               chunk_rows: int) -> int:
    """Rows of all files (one extra streaming pass, reading a single column)."""
    first = [layout.names[0]]
    return sum(chunk.num_rows for f in files
               for chunk in iter_chunks(f.path, config.source, layout, first, chunk_rows))


# ---- column extraction ----------------------------------------------------------------------------------
def physical_columns(config: DatasetConfig, layout: ColumnLayout) -> list[str]:
    """Physical raw columns a resolved config reads, in file order."""
    wanted: set[str] = set()
    for column in config.used_columns():
        wanted.update(layout.physical(column))
    return [n for n in layout.names if n in wanted]


@dataclass(frozen=True)
class FeatureColumns:
    """Which raw column(s) each feature reads: ``single`` maps a sparse or dense feature to its column,
    ``sequences`` a sequence to its column (separated tokens) or columns (one per position)."""

    single: dict[str, str]
    sequences: dict[str, tuple[str, ...]]

    @classmethod
    def of(cls, config: DatasetConfig) -> FeatureColumns:
        return cls({f.name: f.column for f in config.single_column}, {s.name: s.columns for s in config.sequences})


def feature_columns(chunk: Chunk, columns: FeatureColumns, layout: ColumnLayout) -> dict[str, Any]:
    """A chunk's raw values keyed by feature name, as :meth:`FeatureEncoders.encode` takes them: a text
    column per sparse/dense feature; per sequence its text column, or a list array built from its
    position columns ``[n] of list<string>[W]``."""
    table = chunk.table
    for name, column in columns.single.items():
        _check_scalar(chunk, column, f"feature {name!r}", allow_list=False)
    for name, sources in columns.sequences.items():
        for column in sources:
            for p in layout.physical(column):
                _check_scalar(chunk, p, f"sequence {name!r}", allow_list=len(sources) == 1)
    out: dict[str, Any] = {name: table[column] for name, column in columns.single.items()}
    for name, sources in columns.sequences.items():
        physical = [p for c in sources for p in layout.physical(c)]
        if len(physical) == 1 and sources[0] not in layout.groups:
            out[name] = table[physical[0]]
            continue
        n, width = table.num_rows, len(physical)
        flat = pa.concat_arrays([table[p].combine_chunks() for p in physical])  # [W*n], position-major
        order = (np.arange(width)[None, :] * n + np.arange(n)[:, None]).reshape(-1)  # row-major
        out[name] = pa.FixedSizeListArray.from_arrays(flat.take(pa.array(order)), width)
    return out


def _check_scalar(chunk: Chunk, column: str, what: str, allow_list: bool) -> None:
    """Refuse a (Parquet) column of nested values where one value per row is read, naming its type."""
    kind = chunk.table.schema.field(column).type
    listed = pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind)
    nested = pa.types.is_nested(kind) and not (allow_list and listed and not pa.types.is_nested(kind.value_type))
    if nested:
        need = "a list of tokens or a text" if allow_list else "one value"
        raise DataFormatError(f"{chunk.path}, column {column!r} ({what}): holds {kind} values; {what} needs "
                              f"{need} per row")


def _label_values(text: pa.Array) -> np.ndarray:
    """Canonical label text ``[n]`` -> float64 ``[n]``: 1 and 0 for ``1``/``0``/``1.0``/``true``/``false``
    (any case, whitespace trimmed), NaN for anything else. Each distinct value is read once."""
    encoded = pc.dictionary_encode(pc.fill_null(text, ""))

    def value(token: str) -> float:
        token = token.strip().lower()
        if token in ("true", "false"):
            return float(token == "true")
        try:
            return float(token)
        except ValueError:
            return math.nan

    distinct = np.array([value(v) for v in encoded.dictionary.to_pylist()], dtype=np.float64)
    return distinct[encoded.indices.to_numpy(zero_copy_only=False)] if len(distinct) else np.zeros(0)


def read_labels(chunk: Chunk, config: DatasetConfig, keep: np.ndarray) -> np.ndarray:
    """Labels ``[n, T]`` (float32: 0/1 for a binary task, the value for a regression task) of a chunk;
    raises DataFormatError naming the file, line and column of a value that is not a label (checked on
    the ``keep`` rows)."""
    labels = np.zeros((chunk.num_rows, len(config.tasks)), dtype=np.float32)
    for j, task in enumerate(config.tasks):
        spec = task.label
        text = canonical_strings(chunk.table[spec.column])
        if task.type == "regression":
            labels[:, j] = regression_labels(chunk, task, text, keep)
            continue
        if spec.positive:
            positive = np.asarray(pc.is_in(text, value_set=pa.array(list(spec.positive))).to_numpy(
                zero_copy_only=False), bool)
            if spec.negative:
                negative = np.asarray(pc.is_in(text, value_set=pa.array(list(spec.negative))).to_numpy(
                    zero_copy_only=False), bool)
                bad = np.flatnonzero(~(positive | negative) & keep)
                if bad.size:
                    row = int(bad[0])
                    raise DataFormatError(
                        f"{chunk.where(row)}, column {spec.column!r} (label of task {task.name!r}): value "
                        f"{text[row].as_py()!r} is neither positive {list(spec.positive)} nor negative "
                        f"{list(spec.negative)}")
            labels[:, j] = positive
            continue
        _check_scalar(chunk, spec.column, f"label of task {task.name!r}", allow_list=False)
        values = _label_values(text)
        bad = np.flatnonzero(~((values == 0) | (values == 1)) & keep)
        if bad.size:
            row = int(bad[0])
            raise DataFormatError(f"{chunk.where(row)}, column {spec.column!r} (label of task "
                                  f"{task.name!r}): labels must be 0 or 1, found {text[row].as_py()!r}; for "
                                  f"other values give the label as {{column: ..., positive: [...]}}")
        labels[:, j] = values == 1
    names = [t.name for t in config.tasks]
    for j, task in enumerate(config.tasks):
        if task.observed_after is not None:
            before = names.index(task.observed_after)
            bad = np.flatnonzero((labels[:, j] == 1) & (labels[:, before] == 0) & keep)
            if bad.size:
                raise DataFormatError(
                    f"{chunk.where(int(bad[0]))}: task {task.name!r} is 1 where {task.observed_after!r}, the "
                    f"task it is observed after, is 0 (column {task.label.column!r})")
    return labels


def regression_labels(chunk: Chunk, task: TaskConfig, text: pa.ChunkedArray, keep: np.ndarray) -> np.ndarray:
    """A regression task's values ``[n]`` (``log1p``-transformed if the task says so): finite numbers, at
    least 0 for ``log1p`` and the ``ziln`` loss; a DataFormatError names the first other value (on the
    ``keep`` rows)."""
    column = task.label.column
    try:
        values = parse_numbers(text, feature=column)
    except EncodingError as exc:
        where = chunk.where(exc.row) if exc.row is not None else str(chunk.path)
        raise DataFormatError(f"{where}, column {column!r} (label of regression task {task.name!r}): "
                              f"not a number: {exc}") from None
    nonnegative = task.log1p or task.loss == "ziln"
    bad = np.flatnonzero(~(np.isfinite(values) & ((values >= 0) | (not nonnegative))) & keep)
    if bad.size:
        row = int(bad[0])
        need = f"a finite number >= 0 ({'log1p' if task.log1p else 'ziln'})" if nonnegative else "a finite number"
        raise DataFormatError(f"{chunk.where(row)}, column {column!r} (label of regression task {task.name!r}): "
                              f"expected {need}, found {text[row].as_py()!r}")
    return np.log1p(values) if task.log1p else values


# ---- pass 1: fit ---------------------------------------------------------------------------------------
class BlockMoments:
    """Per-column count, sum and sum of squares of a stream of rows ``[n, F]``, NaN skipped.

    Sums are taken over fixed blocks of rows in stream order, so the floats do not depend on how the
    stream was chunked."""

    def __init__(self, width: int, block: int = _MOMENT_BLOCK) -> None:
        self.block = block
        self.pending: list[np.ndarray] = []
        self.pending_rows = 0
        self.count = np.zeros(width, dtype=np.int64)
        self.total = np.zeros(width, dtype=np.float64)
        self.squares = np.zeros(width, dtype=np.float64)

    def add(self, rows: np.ndarray) -> None:
        if rows.shape[0] == 0:
            return
        self.pending.append(rows)
        self.pending_rows += rows.shape[0]
        if self.pending_rows >= self.block:
            stacked = np.concatenate(self.pending)
            full = (stacked.shape[0] // self.block) * self.block
            for start in range(0, full, self.block):
                self._fold(stacked[start : start + self.block])
            self.pending = [stacked[full:]]
            self.pending_rows = stacked.shape[0] - full

    def _fold(self, block: np.ndarray) -> None:
        self.count += (~np.isnan(block)).sum(axis=0)
        with np.errstate(over="ignore"):  # inf sums: values too large to standardise, refused by the caller
            self.total += np.nansum(block, axis=0)
            self.squares += np.nansum(block * block, axis=0)

    def finish(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(count, mean, std)`` per column; mean 0 / std 1 where a column has no value."""
        if self.pending_rows:
            self._fold(np.concatenate(self.pending))
            self.pending, self.pending_rows = [], 0
        count = np.maximum(self.count, 1)
        with np.errstate(over="ignore", invalid="ignore"):  # values too large to square: std inf (refused later)
            mean = np.where(self.count > 0, self.total / count, 0.0)
            var = np.maximum(self.squares / count - mean * mean, 0.0)
            std = np.where(np.isfinite(var), np.sqrt(var), np.inf)
        return self.count, mean, np.where(std > 1e-12, std, 1.0)


@dataclass
class FitState:
    counters: dict[str, Counter[str]]
    moments: BlockMoments
    split_rows: np.ndarray  # [3]
    positives: np.ndarray  # [3, T] (binary tasks)
    dropped: int = 0
    largest: dict[str, tuple[float, Chunk]] = field(default_factory=dict)  # dense feature -> (|value|, its row)
    values: dict[str, list[ValueSummary]] = field(default_factory=dict)  # value task -> one per split


def _fit_chunk(state: FitState, chunk: Chunk, splits: np.ndarray, config: DatasetConfig,
               layout: ColumnLayout) -> None:
    keep = splits >= 0
    labels = read_labels(chunk, config, keep)
    for i in range(len(SPLITS)):
        in_split = splits == i
        state.split_rows[i] += int(in_split.sum())
        state.positives[i] += labels[in_split].sum(axis=0).astype(np.int64)
        for j, task in enumerate(config.tasks):
            if task.type == "regression":
                values = labels[in_split, j]
                summaries = state.values.setdefault(task.name, [ValueSummary(k) for k in range(len(SPLITS))])
                summaries[i].add(np.expm1(values) if task.log1p else values)
    state.dropped += int((~keep).sum())
    train = splits == 0
    if not train.any():
        return
    columns = feature_columns(chunk, FeatureColumns.of(config), layout)
    mask = pa.array(train)
    strip = config.source.strip
    for f in config.sparse:
        tokens = canonical_strings(columns[f.name], strip).filter(mask)
        state.counters[f.table_name].update(value_counts(tokens))
    for s in config.sequences:
        tokens, rows, _, _ = sequence_tokens(columns[s.name], _sequence_format(s.separator, s.pad_values,
                                                                               s.keep), s.max_len, strip)
        state.counters[s.table_name].update(value_counts(tokens.filter(pa.array(train[rows]))))
    if config.dense:
        rows = np.flatnonzero(train)
        block = np.empty((rows.shape[0], len(config.dense)), dtype=np.float64)
        for j, d in enumerate(config.dense):
            raw = _parse_dense(chunk, columns[d.name], d.name, d.column, config)[train]
            block[:, j] = signed_log1p(raw) if d.log1p else raw
            if np.isfinite(raw).any():
                at = int(np.nanargmax(np.abs(raw)))
                if d.name not in state.largest or abs(raw[at]) > state.largest[d.name][0]:
                    state.largest[d.name] = (abs(float(raw[at])), chunk.row(int(rows[at])))
        state.moments.add(block)


def _sequence_format(separator: str | None, pad_values: tuple[str, ...], keep: str) -> SequenceFormat:
    return SequenceFormat(separator=separator, pad_values=pad_values, keep=keep)


def _parse_dense(chunk: Chunk, values: Any, feature: str, column: str, config: DatasetConfig) -> np.ndarray:
    try:
        return parse_numbers(values, config.source.missing_values, feature, config.source.strip)
    except EncodingError as exc:
        if exc.row is None:  # the column's type, not one value
            raise DataFormatError(f"{chunk.path}, column {column!r}: {exc}") from None
        raise DataFormatError(f"{chunk.where(exc.row)}, column {column!r}: {exc}; to read such a token as "
                              f"missing, list it under source.missing_values") from None


def build_encoders(config: DatasetConfig, state: FitState) -> FeatureEncoders:
    """Vocabularies (train counts, min_count) and dense transforms (train moments) from pass 1."""
    vocabularies = {table: Vocabulary.fit(counts, config.table_min_count(table))
                    for table, counts in sorted(state.counters.items())}
    _, mean, std = state.moments.finish()
    for j, d in enumerate(config.dense):
        if d.standardize and not (math.isfinite(mean[j]) and math.isfinite(std[j])):
            value, row = state.largest[d.name]
            raise DataFormatError(f"{row.where(0)}, column {d.column!r}: dense feature {d.name!r}: values as large as "
                                  f"{value:g} are too large to standardise (train mean {mean[j]:g}, std "
                                  f"{std[j]:g}); give it 'log1p: true' or 'standardize: false'")
    dense = {
        d.name: DenseTransform(log1p=d.log1p, mean=float(mean[j]) if d.standardize else 0.0,
                               std=float(std[j]) if d.standardize else 1.0, fill=d.fill)
        for j, d in enumerate(config.dense)
    }
    sequences = {s.name: _sequence_format(s.separator, s.pad_values, s.keep) for s in config.sequences}
    return FeatureEncoders(vocabularies, dense, sequences, config.source.missing_values, config.source.strip)


def build_schema(config: DatasetConfig, encoders: FeatureEncoders) -> DatasetSchema:
    sizes = {table: v.size for table, v in encoders.vocabularies.items()}
    return DatasetSchema(
        sparse=tuple(SparseFeature(f.name, sizes[f.table_name], f.table) for f in config.sparse),
        dense=tuple(DenseFeature(d.name) for d in config.dense),
        sequences=tuple(
            SequenceFeature(s.name, sizes[s.table_name], s.max_len, s.behaviour, s.table, s.target)
            for s in config.sequences),
        tasks=tuple(TaskSpec(t.name, t.observed_after, t.type, t.loss, "log1p" if t.log1p else "")
                    for t in config.tasks),
        user_id=config.user_id,
        scenario=config.scenario,
        metadata={"dataset": config.name, "prepared_from": "raw files (mtrec prepare)"},
    )


# ---- the two passes ------------------------------------------------------------------------------------
def _chunks(files: list[InputFile], config: DatasetConfig, layout: ColumnLayout, include: list[str],
            chunk_rows: int) -> Iterator[tuple[Chunk, int, InputFile]]:
    """Every chunk of every file with its first global row index and its file."""
    start = 0
    for f in files:
        for chunk in iter_chunks(f.path, config.source, layout, include, chunk_rows):
            yield chunk, start, f
            start += chunk.num_rows


def prepare_dataset(
    config: DatasetConfig | str | Path,
    out_dir: str | Path,
    raw: str | Path | None = None,
    chunk_rows: int | None = None,
    progress: bool = True,
    log: Callable[[str], None] = tqdm.write,
    overwrite: bool = False,
) -> PreparedDataset:
    """Prepare ``config``'s raw files (or ``raw``) into ``out_dir`` and open the result.

    ``out_dir`` must be new or empty, or (with ``overwrite``) an earlier prepared dataset, and hold no
    input (:func:`mtrec.data.dataset.check_replaceable`). Raises DatasetConfigError for a config that
    does not fit the files, DataFormatError naming the file, line and column of bad raw data, and
    DatasetError for an empty split or an output directory that may not be written (or that another
    process is writing: ``out_dir`` is locked while it is prepared, :mod:`mtrec.locks`)."""
    config_file = None if isinstance(config, DatasetConfig) else Path(config)
    if not isinstance(config, DatasetConfig):
        config = load_dataset_config(config)
    files = input_files(config, raw)
    inputs = (*(f.path for f in files), *([config_file] if config_file else []))
    out = check_replaceable(out_dir, overwrite, inputs)
    with locked_directory(out, "prepared dataset directory"):
        check_replaceable(out, overwrite, inputs)  # again, under the lock: another process may have written it
        return _prepare(config, files, out, chunk_rows or config.source.chunk_rows, progress, log)


def _prepare(config: DatasetConfig, files: list[InputFile], out: Path, chunk_rows: int, progress: bool,
             log: Callable[[str], None]) -> PreparedDataset:
    """The two passes of :func:`prepare_dataset` into the checked and locked directory ``out``."""
    layout = read_layout(files[0].path, config.source)
    for f in files[1:]:
        other = read_layout(f.path, config.source)
        if other.names != layout.names:
            raise DataFormatError(f"{f.path} has columns {list(other.columns)}, but {files[0].path} has "
                                  f"{list(layout.columns)}: all raw files of a dataset need the same columns")
    resolved = config.resolve(list(layout.columns), layout.groups, where=str(files[0].path))
    for i, s in enumerate(resolved.sequences):
        check_memory(chunk_rows * s.max_len * _SEQUENCE_CELL_BYTES, f"{config.origin}: features.sequences[{i}]"
                     f".max_len {s.max_len:,} (chunks of {chunk_rows:,} rows)", DatasetConfigError)
    include = physical_columns(resolved, layout)
    total = count_rows(files, resolved, layout, chunk_rows) if resolved.split.kind == "permutation" else None
    divided = {f.path: count_rows([f], resolved, layout, chunk_rows) for f in files if f.parts}
    assigner = SplitAssigner(resolved.split, total, divided)

    # pass 1: fit on train rows
    tables = list(dict.fromkeys(f.table_name for f in resolved.embedded))
    state = FitState({t: Counter() for t in tables}, BlockMoments(len(resolved.dense)),
                     np.zeros(len(SPLITS), np.int64), np.zeros((len(SPLITS), len(resolved.tasks)), np.int64))
    with tqdm(total=total, unit="rows", desc="prepare 1/2 fit", disable=not progress or None) as bar:
        for chunk, start, file in _chunks(files, resolved, layout, include, chunk_rows):
            _fit_chunk(state, chunk, assigner.assign(chunk, start, file), resolved, layout)
            bar.update(chunk.num_rows)
    where = ", ".join(str(f.path) for f in files)
    for i, split in enumerate(SPLITS):
        if state.split_rows[i] == 0:
            raise DataFormatError(f"split {split!r} is empty: no row of {where} falls in it "
                                  f"(split: {resolved.raw.get('split')})")
    encoders = build_encoders(resolved, state)
    schema = build_schema(resolved, encoders)
    num_rows = int(state.split_rows.sum())

    # pass 2: encode and write
    def write(tmp: Path) -> None:
        sizes = {split: int(n) for split, n in zip(SPLITS, state.split_rows, strict=True)}
        writer = DatasetWriter(tmp, schema, num_rows, sizes)
        offset = 0
        with tqdm(total=num_rows, unit="rows", desc="prepare 2/2 write", disable=not progress or None) as bar:
            for chunk, start, file in _chunks(files, resolved, layout, include, chunk_rows):
                splits = assigner.assign(chunk, start, file)
                keep = splits >= 0
                columns = feature_columns(chunk, FeatureColumns.of(resolved), layout)
                try:
                    sparse, dense, sequences = encoders.encode(columns, schema)
                except EncodingError as exc:  # pass 1 parsed only chunks with train rows
                    where = chunk.where(exc.row) if exc.row is not None else str(chunk.path)
                    column = {f.name: f.column for f in resolved.single_column}.get(exc.feature)
                    raise DataFormatError(f"{where}{f', column {column!r}' if column else ''}: {exc}") from None
                labels = read_labels(chunk, resolved, keep)
                if not keep.all():  # rows outside every range of a column split
                    sparse, dense, labels, splits = sparse[keep], dense[keep], labels[keep], splits[keep]
                    sequences = {name: block[keep] for name, block in sequences.items()}
                writer.write_rows(offset, sparse, dense, sequences, labels)
                for i, split in enumerate(SPLITS):
                    writer.add_split_rows(split, offset + np.flatnonzero(splits == i))
                offset += labels.shape[0]
                bar.update(labels.shape[0])
        writer.finish(encoders, {PREPARE_FILE: json_text(_provenance(resolved, files, state), indent=2,
                                                          default=str) + "\n"})

    atomic_replace_dir(out, write)
    counts = ", ".join(f"{s} {int(n):,}" for s, n in zip(SPLITS, state.split_rows, strict=True))
    log(f"prepared {resolved.name}: {num_rows:,} rows ({counts}) -> {out}")
    return PreparedDataset.load(out)


def file_records(files: list[InputFile]) -> list[dict[str, Any]]:
    """The input files as ``prepare.json`` records them (path, split, and the parts of a divided file): what
    a prepared copy is compared with to tell whether it is current."""
    return [{"path": str(f.path), "split": f.split,
             **({"parts": [list(p) for p in f.parts], "seed": f.seed} if f.parts else {})} for f in files]


def is_current(directory: Path, config: DatasetConfig, raw: str | Path | None = None) -> bool:
    """Whether ``directory`` holds ``config``'s files prepared with the same config (``prepare.json`` records
    both): a prepared copy that need not be prepared again."""
    stamp = directory / PREPARE_FILE
    if not stamp.is_file():
        return False
    try:
        done = json.loads(stamp.read_text())
    except (OSError, ValueError):
        return False
    wanted = {"config": json.loads(json_text(config.raw, default=str)), "files": file_records(input_files(config, raw))}
    return isinstance(done, dict) and {"config": done.get("config"), "files": done.get("files")} == wanted


def _provenance(config: DatasetConfig, files: list[InputFile], state: FitState) -> dict[str, Any]:
    return {
        "dataset": config.name,
        "config": config.raw,
        "files": file_records(files),
        "rows": {s: int(n) for s, n in zip(SPLITS, state.split_rows, strict=True)},
        "dropped_rows": state.dropped,
        "positives": {t.name: {s: int(state.positives[i, j]) for i, s in enumerate(SPLITS)}
                      for j, t in enumerate(config.tasks) if t.type == "binary"},
        "values": {task: {s: summary.to_dict() for s, summary in zip(SPLITS, summaries, strict=True)}
                   for task, summaries in state.values.items()},
    }
