"""Batch scoring of a raw file (the library behind ``mtrec predict``): streamed in chunks, written atomically.

The input is a CSV (with a header) or Parquet file with one column per feature of the model's schema,
named as in ``schema.json``, holding raw values as in the data the model was prepared from; a sequence
feature is a string joined by its separator (CSV) or a list column (Parquet). Other columns are ignored
unless named by ``keep``, which copies them to the output (ids to join the scores back on, say). CSV values
are read as text, exactly as written, so that ``"007"`` stays ``"007"``.

The output (CSV, or Parquet if the name ends in ``.parquet``/``.pq``) has the kept columns, then one
probability column per task, row for row in input order. It is written to a temporary file and renamed
when complete (:func:`mtrec.io.atomic_write`): a failed or interrupted run leaves no partial output.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from mtrec.data.dataset import DatasetError
from mtrec.features.encoders import EncodingError
from mtrec.io import atomic_write
from mtrec.serving.predictor import Predictor

PARQUET_SUFFIXES = (".parquet", ".pq")
DEFAULT_CHUNK_ROWS = 65_536


class ScoringInputError(DatasetError):
    """An input file that cannot be scored; the message names the file, the line and the column."""


def is_parquet(path: Path) -> bool:
    return path.suffix.lower() in PARQUET_SUFFIXES


def input_columns(path: Path, separator: str = ",") -> list[str]:
    """The column names of a CSV header or a Parquet schema."""
    try:
        if is_parquet(path):
            return list(pq.ParquetFile(str(path)).schema_arrow.names)
        read = pa_csv.ReadOptions(block_size=1 << 20, use_threads=False)
        reader = pa_csv.open_csv(str(path), read_options=read, parse_options=pa_csv.ParseOptions(delimiter=separator))
        return list(reader.schema.names)
    except FileNotFoundError:
        raise ScoringInputError(f"input file not found: {path}") from None
    except (OSError, pa.ArrowException) as exc:
        raise ScoringInputError(f"{path}: not a readable {'Parquet' if is_parquet(path) else 'CSV'} file "
                                f"({exc})") from exc


def count_rows(path: Path) -> int | None:
    """Data rows of a Parquet file (from its metadata) or a CSV file (lines after the header; for the
    progress bar only, so a quoted field spanning lines may make it approximate)."""
    if is_parquet(path):
        return int(pq.ParquetFile(str(path)).metadata.num_rows)
    lines, last = 0, b"\n"
    with open(path, "rb") as fh:
        while block := fh.read(1 << 24):
            lines += block.count(b"\n")
            last = block[-1:]
    return max(lines + (last != b"\n") - 1, 0)


def iter_chunks(path: Path, columns: Sequence[str], chunk_rows: int, separator: str = ",") -> Iterator[pa.Table]:
    """The named columns of ``path`` in tables of about ``chunk_rows`` rows (CSV columns as text)."""
    try:
        if is_parquet(path):
            for batch in pq.ParquetFile(str(path)).iter_batches(batch_size=chunk_rows, columns=list(columns)):
                yield pa.Table.from_batches([batch])
            return
        # block_size bounds the rows per record batch (about 100 bytes a row), so memory stays flat
        read = pa_csv.ReadOptions(block_size=max(chunk_rows * 100, 1 << 16), use_threads=False)
        convert = pa_csv.ConvertOptions(include_columns=list(columns), column_types=dict.fromkeys(columns, pa.string()),
                                        strings_can_be_null=False, quoted_strings_can_be_null=False)
        reader = pa_csv.open_csv(str(path), read_options=read, convert_options=convert,
                                 parse_options=pa_csv.ParseOptions(delimiter=separator))
        for batch in reader:
            if batch.num_rows:
                yield pa.Table.from_batches([batch])
    except pa.ArrowInvalid as exc:
        raise ScoringInputError(f"{path}: cannot be read ({exc})") from exc


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
    progress: bool = True,
) -> ScoringResult:
    """Score every row of ``source`` and write ``out`` (see the module docstring)."""
    source, out = Path(source), Path(out)
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
    available = input_columns(source, separator)
    features = predictor.feature_names
    missing = [c for c in [*features, *keep] if c not in available]
    if missing:
        raise ScoringInputError(f"{source}: missing column(s) {missing}; the model needs one column per feature "
                                f"{features} (raw values){' plus the --keep columns' if keep else ''}; "
                                f"the file has {available}")
    clash = sorted(set(keep) & set(predictor.task_names))
    if clash:
        raise ScoringInputError(f"--keep column(s) {clash} have the names of the output's task columns")
    wanted = list(dict.fromkeys([*features, *keep]))
    kept_types = {f.name: f.type for f in pq.ParquetFile(str(source)).schema_arrow} if is_parquet(source) else {}
    out_schema = pa.schema([*(pa.field(k, kept_types.get(k, pa.string())) for k in keep),
                            *(pa.field(t, pa.float32()) for t in predictor.task_names)])
    start = time.perf_counter()
    rows = 0

    def write(tmp: Path) -> None:
        nonlocal rows
        writer = _writer(tmp, out_schema, is_parquet(out))  # tmp's name ends in .tmp
        bar = tqdm(total=count_rows(source), unit="rows", unit_scale=True, desc="scoring", disable=not progress)
        try:
            for table in iter_chunks(source, wanted, chunk_rows, separator):
                columns = {name: table.column(name) for name in features}
                try:
                    probs = predictor.predict(columns)
                except EncodingError as exc:
                    where = _where(source, rows + (exc.row or 0)) if exc.row is not None else str(source)
                    raise ScoringInputError(f"{where}, column {exc.feature!r}: {exc}") from exc
                except ValueError as exc:
                    raise ScoringInputError(f"{source}, rows {rows + 1}-{rows + table.num_rows}: {exc}") from exc
                arrays = [table.column(k) for k in keep] + [pa.array(probs[t], pa.float32())
                                                            for t in predictor.task_names]
                writer.write_table(pa.Table.from_arrays(arrays, schema=out_schema))
                rows += table.num_rows
                bar.update(table.num_rows)
        finally:
            bar.close()
            writer.close()

    atomic_write(out, write)
    return ScoringResult(rows, time.perf_counter() - start, out)


def _where(path: Path, row: int) -> str:
    """A 0-based data row as ``file, line N`` (CSV, header counted) or ``file, row N`` (Parquet)."""
    return f"{path}, row {row}" if is_parquet(path) else f"{path}, line {row + 2}"

