"""Batch scoring of a raw file (the library behind ``mtrec predict``): streamed in chunks, written atomically.

The input is a CSV or Parquet file of raw values, as in the data the model was prepared from, read with
the same streaming readers as ``mtrec prepare`` (:mod:`mtrec.data.readers`: CSV values as text, exactly as
written). Its layout is either

- one column per feature, named as in the run's ``schema.json`` (a CSV with a header; a sequence is a
  string joined by its separator, or a list column in Parquet), or
- the raw layout of a dataset config (``dataset_config``): its source options (header or column names,
  separator, quoting, trimming) and each feature's raw column(s), including histories written one
  column per position; label columns may be absent.

Other columns are ignored unless named by ``keep``, which copies them to the output (ids to join the
scores back on, say). The output (CSV, or Parquet if the name ends in ``.parquet``/``.pq``) has the kept
columns, then one probability column per task, row for row in input order. It is written to a temporary
file and renamed when complete (:func:`mtrec.io.atomic_write`): a failed run leaves no partial output.
The model scores one chunk in a second thread while the next is read and encoded (ONNX Runtime and the
Arrow readers release the GIL), so reading and encoding cost little beside the model. The first
chunk is scored in slices of the predictor's batch size, then twice that, ... (:func:`ramp`): the model
starts once the first slice is encoded instead of the whole first chunk, and encoding each slice takes
less time than scoring the one before.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from mtrec.data.config import DatasetConfig, SourceConfig, load_dataset_config
from mtrec.data.dataset import DatasetError
from mtrec.data.prepare import FeatureColumns, feature_columns
from mtrec.data.readers import Chunk, ColumnLayout, file_format, iter_chunks, read_layout
from mtrec.features.encoders import EncodingError
from mtrec.features.schema import DatasetSchema
from mtrec.io import PathError, atomic_write, check_output_file
from mtrec.serving.predictor import Predictor

PARQUET_SUFFIXES = (".parquet", ".pq")
DEFAULT_CHUNK_ROWS = 65_536


class ScoringInputError(DatasetError):
    """An input file that cannot be scored; the message names the file, the line and the column."""


def is_parquet(path: Path) -> bool:
    return path.suffix.lower() in PARQUET_SUFFIXES


def input_columns(schema: DatasetSchema, dataset_config: DatasetConfig | None = None) -> FeatureColumns:
    """Where each feature of ``schema`` is in the input: the dataset config's columns, or (without one) one
    column per feature, named after it (as are a config's pattern features)."""
    single = {f.name: f.column for f in dataset_config.single_column} if dataset_config else {}
    sequences = {s.name: s.columns for s in dataset_config.sequences} if dataset_config else {}
    named = [f.name for f in schema.sparse] + [f.name for f in schema.dense]
    return FeatureColumns({name: single.get(name, name) for name in named},
                          {s.name: sequences.get(s.name, (s.name,)) for s in schema.sequences})


def input_source(dataset_config: DatasetConfig | None = None, separator: str = ",") -> SourceConfig:
    """How to read the input: the dataset config's source options (any file format), or a CSV with a header
    and ``separator``."""
    if dataset_config is None:
        return SourceConfig(separator=separator)
    return dataset_config.source.model_copy(update={"format": "auto"})


def count_rows(path: Path, header: bool) -> int | None:
    """Data rows of a Parquet file (from its metadata) or an uncompressed CSV file (lines, for the progress
    bar only: a quoted field spanning lines makes it approximate); None for a compressed CSV."""
    if is_parquet(path):
        return int(pq.ParquetFile(str(path)).metadata.num_rows)
    if path.suffix.lower() in (".gz", ".bz2", ".zst", ".lz4"):
        return None
    lines, last = 0, b"\n"
    with open(path, "rb") as fh:
        while block := fh.read(1 << 24):
            lines += block.count(b"\n")
            last = block[-1:]
    return max(lines + (last != b"\n") - int(header), 0)


def _check_columns(path: Path, layout: ColumnLayout, features: FeatureColumns, keep: Sequence[str],
                   with_config: bool) -> None:
    have = set(layout.columns)
    missing = {name: [column] for name, column in features.single.items() if column not in have}
    missing.update({name: [c for c in columns if c not in have] for name, columns in features.sequences.items()
                    if any(c not in have for c in columns)})
    if missing:
        wanted = "; ".join(f"feature {name!r} reads {cols}" for name, cols in missing.items())
        hint = ("as the dataset config says" if with_config else
                "one column per feature, named as in schema.json (or pass the dataset config for the raw layout)")
        raise ScoringInputError(f"{path}: missing column(s) for {wanted}; the input needs {hint}; "
                                f"its columns: {list(layout.columns)}")
    twice = sorted({k for k in keep if keep.count(k) > 1})
    if twice:
        raise ScoringInputError(f"--keep {twice[0]!r} given twice: each output column is named once")
    absent = [k for k in keep if k not in layout.names]
    if absent:
        raise ScoringInputError(f"{path}: --keep column(s) {absent} not found; its columns: {list(layout.columns)}")


def check_paths(source: Path, out: Path) -> Path:
    """The output path (absolute) if ``source`` can be read and ``out`` written without touching it."""
    if not source.is_file():
        raise ScoringInputError(f"input file not found: {source}" if not source.exists()
                                else f"input {source} is not a file")
    try:
        target = check_output_file(out, "output file")
    except PathError as exc:
        raise ScoringInputError(str(exc)) from None
    if (target.exists() and target.samefile(source)) or target == source.resolve():
        raise ScoringInputError(f"--out {out} is the input file: scoring would overwrite it; choose another name")
    return target


def ramp(chunks: Iterable[Chunk], first_rows: int) -> Iterator[Chunk]:
    """``chunks`` with the first one cut into slices of ``first_rows``, ``2 * first_rows``, ... rows, the last
    slice taking the rest when less than twice its size would be left after it (the same rows in the same
    order)."""
    for i, chunk in enumerate(chunks):
        if i:
            yield chunk
            continue
        start, rows = 0, first_rows
        while start < chunk.num_rows:
            left = chunk.num_rows - start
            take = left if left < 3 * rows else rows
            yield chunk.slice(start, take)
            start, rows = start + take, rows * 2


@dataclass
class ScoringResult:
    rows: int
    seconds: float
    out: Path

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else float("inf")


def _writer(tmp: Path, schema: pa.Schema, parquet: bool) -> pq.ParquetWriter | pa_csv.CSVWriter:
    return pq.ParquetWriter(str(tmp), schema) if parquet else pa_csv.CSVWriter(str(tmp), schema)


def score_file(
    predictor: Predictor,
    source: str | Path,
    out: str | Path,
    keep: Sequence[str] = (),
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    separator: str = ",",
    dataset_config: str | Path | DatasetConfig | None = None,
    progress: bool = True,
) -> ScoringResult:
    """Score every row of ``source`` and write ``out`` (see the module docstring)."""
    source = Path(source)
    if chunk_rows < 1:
        raise ScoringInputError(f"chunk_rows must be >= 1, got {chunk_rows}")
    out = check_paths(source, Path(out))
    if isinstance(dataset_config, str | Path):
        dataset_config = load_dataset_config(dataset_config)
    features = input_columns(predictor.schema, dataset_config)
    reading = input_source(dataset_config, separator)
    layout = read_layout(source, reading)
    _check_columns(source, layout, features, keep, dataset_config is not None)
    clash = sorted(set(keep) & set(predictor.task_names))
    if clash:
        raise ScoringInputError(f"--keep column(s) {clash} have the names of the output's task columns")
    wanted = {p for column in features.single.values() for p in layout.physical(column)}
    wanted |= {p for columns in features.sequences.values() for c in columns for p in layout.physical(c)}
    include = [n for n in layout.names if n in wanted | set(keep)]  # file order
    parquet_in = file_format(source, reading.format) == "parquet"
    kept_types = {f.name: f.type for f in pq.ParquetFile(str(source)).schema_arrow} if parquet_in else {}
    out_schema = pa.schema([*(pa.field(k, kept_types.get(k, pa.string())) for k in keep),
                            *(pa.field(t, pa.float32()) for t in predictor.task_names)])
    start = time.perf_counter()
    rows = 0

    def encode(chunk: Chunk) -> dict[str, np.ndarray]:
        try:
            return predictor.encode(feature_columns(chunk, features, layout))
        except EncodingError as exc:
            where = chunk.where(exc.row) if exc.row is not None else str(source)
            column = features.single.get(exc.feature) or ", ".join(features.sequences.get(exc.feature, ()))
            raise ScoringInputError(f"{where}, column {column!r}: {exc}") from exc
        except DatasetError:  # a column of the wrong kind (DataFormatError): it names the file and column
            raise
        except ValueError as exc:
            raise ScoringInputError(f"{chunk.where(0)} (chunk of {chunk.num_rows} rows): {exc}") from exc

    def write(tmp: Path) -> None:
        writer = _writer(tmp, out_schema, is_parquet(out))  # tmp's name ends in .tmp
        bar = tqdm(unit="rows", unit_scale=True, desc="scoring", disable=None if progress else True)
        if not bar.disable:  # hidden when not on a terminal (a batch job), which then reads the file once
            bar.total = count_rows(source, reading.header and not parquet_in)
            bar.refresh()

        def emit(chunk: Chunk, scored: Future[dict[str, np.ndarray]]) -> None:
            nonlocal rows
            probs = scored.result()
            arrays = [chunk.table.column(k) for k in keep] + [pa.array(probs[t], pa.float32())
                                                              for t in predictor.task_names]
            writer.write_table(pa.Table.from_arrays(arrays, schema=out_schema))
            rows += chunk.num_rows
            bar.update(chunk.num_rows)

        # the model scores chunk k in the pool's thread while this one reads and encodes chunk k + 1
        try:
            with ThreadPoolExecutor(1, thread_name_prefix="mtrec-scoring") as pool:
                pending: tuple[Chunk, Future[dict[str, np.ndarray]]] | None = None
                for chunk in ramp(iter_chunks(source, reading, layout, include, chunk_rows),
                                  predictor.batch_size):
                    scoring = (chunk, pool.submit(predictor.score, encode(chunk)))
                    if pending is not None:
                        emit(*pending)
                    pending = scoring
                if pending is not None:
                    emit(*pending)
        finally:
            bar.close()
            writer.close()

    atomic_write(out, write)
    return ScoringResult(rows, time.perf_counter() - start, out)
