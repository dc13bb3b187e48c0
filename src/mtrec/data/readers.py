"""Raw tabular files -> column chunks (Arrow tables of raw text), streamed with bounded memory.

CSV (any one-character separator, with or without a header, gzip/bz2 by file extension) is read with
``pyarrow.csv.open_csv``, a streaming reader; Parquet with ``ParquetFile.iter_batches``. Every CSV
column is read as text, exactly as written (optionally whitespace-trimmed), so values mean the same at
preparation and at serving time. Chunks have exactly ``chunk_rows`` rows (the last one fewer), whatever
the underlying block sizes. A header name repeated W times (a sequence written one column per position)
becomes the W physical columns ``name[0] .. name[W-1]``, grouped under ``name``.

Errors name the file and the line: a row with the wrong number of fields, an unreadable file.
"""

from __future__ import annotations

import csv
import glob
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from mtrec.data.config import SourceConfig
from mtrec.data.dataset import DatasetError

PARQUET_SUFFIXES = (".parquet", ".pq")
_BLOCK_BYTES = 1 << 20  # the streaming reader reads ahead a few dozen blocks: keep them small


class DataFormatError(DatasetError):
    """Raw data that does not match its config; the message names the file, the row and the column."""


@dataclass(frozen=True)
class ColumnLayout:
    """A file's columns. ``columns``: logical names in file order (a repeated name once); ``names``: the
    physical, unique names; ``groups``: each repeated name -> its physical columns."""

    columns: tuple[str, ...]
    names: tuple[str, ...]
    groups: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def physical(self, column: str) -> list[str]:
        return list(self.groups.get(column, (column,)))


@dataclass
class Chunk:
    """Consecutive rows of one file: ``table`` holds the requested physical columns as text."""

    table: pa.Table
    path: Path
    first_row: int  # 0-based data row (header excluded) of the chunk's first row within its file
    header: bool
    csv: bool

    @property
    def num_rows(self) -> int:
        return int(self.table.num_rows)

    def where(self, row: int) -> str:
        """``file, line L`` (CSV; 1-based, header counted) or ``file, row R`` (Parquet; 0-based)."""
        data_row = self.first_row + row
        if self.csv:
            return f"{self.path}, line {data_row + 1 + int(self.header)}"
        return f"{self.path}, row {data_row}"


def file_format(path: Path, configured: str) -> str:
    if configured != "auto":
        return configured
    return "parquet" if path.suffix.lower() in PARQUET_SUFFIXES else "csv"


def resolve_paths(specs: tuple[str, ...] | list[str], base: Path | None = None) -> list[Path]:
    """Files named by ``specs``: a file, every file of a directory (sorted), or a glob pattern (sorted).
    Relative specs are taken from ``base`` (default: the current directory)."""
    paths: list[Path] = []
    for spec in specs:
        p = Path(spec) if base is None or Path(spec).is_absolute() else base / spec
        if any(ch in spec for ch in "*?["):
            matches = sorted(Path(m) for m in glob.glob(str(p)) if Path(m).is_file())
            if not matches:
                raise DataFormatError(f"no file matches {str(p)!r}")
            paths.extend(matches)
        elif p.is_dir():
            files = sorted(f for f in p.iterdir() if f.is_file() and not f.name.startswith("."))
            if not files:
                raise DataFormatError(f"directory {p} holds no file")
            paths.extend(files)
        elif p.is_file():
            paths.append(p)
        else:
            raise DataFormatError(f"raw data file not found: {p}")
    return paths


def _first_line(path: Path) -> str:
    """The first line of a (possibly compressed) text file, without its line ending."""
    try:
        with pa.input_stream(str(path), compression="detect") as stream:
            data = b""
            while b"\n" not in data:
                block = stream.read(1 << 16)
                if not block:
                    break
                data += block
    except (OSError, pa.ArrowException) as exc:
        raise DataFormatError(f"{path}: cannot read ({exc})") from exc
    line = data.split(b"\n", 1)[0].rstrip(b"\r")
    try:
        return line.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataFormatError(f"{path}, line 1: not UTF-8 text ({exc}); is it a CSV file?") from None


def _unique(names: list[str]) -> ColumnLayout:
    counts: dict[str, int] = {}
    for n in names:
        counts[n] = counts.get(n, 0) + 1
    seen: dict[str, int] = {}
    physical: list[str] = []
    groups: dict[str, list[str]] = {}
    for n in names:
        if counts[n] == 1:
            physical.append(n)
            continue
        i = seen.get(n, 0)
        seen[n] = i + 1
        physical.append(f"{n}[{i}]")
        groups.setdefault(n, []).append(f"{n}[{i}]")
    logical = list(dict.fromkeys(names))
    return ColumnLayout(tuple(logical), tuple(physical), {k: tuple(v) for k, v in groups.items()})


def read_layout(path: Path, source: SourceConfig) -> ColumnLayout:
    """The columns of one raw file: from its header, from ``source.columns``, or ``c0 .. c{n-1}``."""
    if file_format(path, source.format) == "parquet":
        try:
            names = pq.ParquetFile(str(path)).schema_arrow.names
        except (OSError, pa.ArrowException) as exc:
            raise DataFormatError(f"{path}: not a readable Parquet file ({exc})") from exc
        if len(set(names)) != len(names):
            raise DataFormatError(f"{path}: Parquet column names repeat: {names}")
        return ColumnLayout(tuple(names), tuple(names))
    line = _first_line(path)
    if not line.strip():
        raise DataFormatError(f"{path}: the file is empty (or its first line is blank)")
    if source.quote:
        fields = next(csv.reader([line], delimiter=source.separator, quotechar=source.quote))
    else:
        fields = next(csv.reader([line], delimiter=source.separator, quoting=csv.QUOTE_NONE))
    if source.header:
        names = [f.strip() for f in fields]
        if source.columns:
            raise DataFormatError(f"{path}: source.columns names the columns of a file without a header, "
                                  f"but header is true")
        if any(not n for n in names):
            raise DataFormatError(f"{path}, line 1: the header has an empty column name: {names}")
        return _unique(names)
    if source.columns:
        if len(source.columns) != len(fields):
            raise DataFormatError(f"{path}, line 1: {len(fields)} fields (separator {source.separator!r}) "
                                  f"but source.columns names {len(source.columns)}")
        return _unique(list(source.columns))
    return _unique([f"c{i}" for i in range(len(fields))])


def _csv_batches(path: Path, source: SourceConfig, layout: ColumnLayout, include: list[str]
                 ) -> Iterator[pa.RecordBatch]:
    invalid: list[pa_csv.InvalidRow] = []

    def on_invalid(row: pa_csv.InvalidRow) -> str:
        invalid.append(row)
        return "error"

    read = pa_csv.ReadOptions(column_names=list(layout.names), skip_rows=1 if source.header else 0,
                              use_threads=False, block_size=_BLOCK_BYTES)
    parse = pa_csv.ParseOptions(delimiter=source.separator, quote_char=source.quote or False,
                                invalid_row_handler=on_invalid)
    convert = pa_csv.ConvertOptions(include_columns=include, column_types={n: pa.string() for n in include},
                                    strings_can_be_null=False, quoted_strings_can_be_null=False)
    try:
        reader = pa_csv.open_csv(str(path), read_options=read, parse_options=parse, convert_options=convert)
        yield from reader
    except pa.ArrowInvalid as exc:
        if invalid:
            row = invalid[0]
            line = f"line {row.number}" if row.number is not None else "a line"
            raise DataFormatError(
                f"{path}, {line}: expected {row.expected_columns} columns (separator {source.separator!r}), "
                f"found {row.actual_columns}: {row.text[:200]!r}") from None
        if "Empty CSV file" in str(exc):
            return
        raise DataFormatError(f"{path}: cannot read as CSV ({exc})") from None
    except OSError as exc:
        raise DataFormatError(f"{path}: cannot read ({exc})") from exc


def _parquet_batches(path: Path, include: list[str], chunk_rows: int) -> Iterator[pa.RecordBatch]:
    try:
        yield from pq.ParquetFile(str(path)).iter_batches(batch_size=chunk_rows, columns=include)
    except (OSError, pa.ArrowException) as exc:
        raise DataFormatError(f"{path}: cannot read as Parquet ({exc})") from exc


def _rechunk(batches: Iterator[pa.RecordBatch], chunk_rows: int) -> Iterator[pa.Table]:
    """Regroup record batches into tables of exactly ``chunk_rows`` rows (the last one fewer)."""
    pending: list[pa.RecordBatch] = []
    count = 0
    for batch in batches:
        if batch.num_rows == 0:
            continue
        pending.append(batch)
        count += batch.num_rows
        while count >= chunk_rows:
            table = pa.Table.from_batches(pending)
            yield table.slice(0, chunk_rows)
            rest = table.slice(chunk_rows)
            pending, count = rest.to_batches(), rest.num_rows
    if count:
        yield pa.Table.from_batches(pending)


def iter_chunks(path: Path, source: SourceConfig, layout: ColumnLayout, include: list[str],
                chunk_rows: int | None = None) -> Iterator[Chunk]:
    """Stream the physical columns ``include`` of ``path`` in chunks of ``chunk_rows`` rows."""
    chunk_rows = chunk_rows or source.chunk_rows
    is_csv = file_format(path, source.format) == "csv"
    batches = (_csv_batches(path, source, layout, include) if is_csv
               else _parquet_batches(path, include, chunk_rows))
    first = 0
    for table in _rechunk(batches, chunk_rows):
        if is_csv and source.strip:
            table = pa.table({n: pc.utf8_trim_whitespace(table[n]) for n in table.column_names})
        yield Chunk(table, path, first, source.header, is_csv)
        first += table.num_rows
