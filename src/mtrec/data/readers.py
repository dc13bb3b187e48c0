"""Raw tabular files -> column chunks (Arrow tables of raw text), streamed with bounded memory.

CSV (any one-character separator, with or without a header, gzip/bz2 by file extension) is read with
``pyarrow.csv.open_csv``, a streaming reader; Parquet with ``ParquetFile.iter_batches``. Every CSV
column is read as text, exactly as written (optionally whitespace-trimmed), so values mean the same at
preparation and at serving time. Chunks have exactly ``chunk_rows`` rows (the last one fewer), whatever
the underlying block sizes. A header name repeated W times (a sequence written one column per position)
becomes the W physical columns ``name[0] .. name[W-1]``, grouped under ``name``.

Files as common tools write them read as expected: a UTF-8 byte-order mark (Excel) is skipped; in a
directory, hidden files and Hadoop/Spark markers (``.part-0.crc``, ``_SUCCESS``) are not data.

``source.path_column`` adds a column that is not in the file: its value on every row of a file is read
from the file's path (a country named by the file's directory, say).

A known raw format that is not a table of rows (an event log, :mod:`mtrec.data.formats`) is read as
headerless text, turned into rows by its format's module and streamed the same way; its rows' errors
name the log line a row comes from.

Errors name the file and the physical line (a record spanning lines, blank lines and the header are
counted as a text editor counts them): a row with the wrong number of fields, a quoted field that is
never closed (which would swallow the rest of the file), an unreadable file.
"""

from __future__ import annotations

import csv
import glob
import io
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from mtrec.data.dataset import DatasetError
from mtrec.data.formats import LINE, LogBlock, RawFormat, raw_format

if TYPE_CHECKING:
    from mtrec.data.config import SourceConfig

PARQUET_SUFFIXES = (".parquet", ".pq")
# the streaming reader reads ahead a few dozen blocks: keep them small; a record longer than a block is read
# again from its row with the next size
_BLOCK_SIZES = (1 << 20, 1 << 24)


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
    source: SourceConfig
    csv: bool
    lines: np.ndarray | None = None  # rows built from a log: the log line each row comes from ``[n]``

    @property
    def num_rows(self) -> int:
        return int(self.table.num_rows)

    def slice(self, start: int, rows: int) -> Chunk:
        """Rows ``start`` to ``start + rows`` of this chunk, as a chunk whose errors name the same lines."""
        lines = None if self.lines is None else self.lines[start : start + rows]
        return replace(self, table=self.table.slice(start, rows), first_row=self.first_row + start, lines=lines)

    def row(self, row: int) -> Chunk:
        """Row ``row`` as a chunk without columns (holding no data): what names its place in an error later."""
        one = self.slice(row, 1)
        return replace(one, table=one.table.select([]))

    def where(self, row: int) -> str:
        """``file, line L`` (CSV; 1-based physical line; a row built from a log: its event's line) or
        ``file, row R`` (Parquet; 0-based)."""
        data_row = self.first_row + row
        if self.lines is not None:
            return f"{self.path}, line {int(self.lines[row])}"
        if self.csv:
            return f"{self.path}, line {physical_line(self.path, self.source, data_row)}"
        return f"{self.path}, row {data_row}"


def _text_stream(path: Path) -> io.TextIOWrapper:
    """A (possibly compressed) file as text, newlines untranslated, for Python's csv module."""
    stream = pa.input_stream(str(path), compression="detect")
    return io.TextIOWrapper(stream, encoding="utf-8-sig", errors="replace", newline="")


def _reader(text: io.TextIOWrapper, source: SourceConfig, strict: bool = False) -> Iterator[list[str]]:
    csv.field_size_limit(sys.maxsize)
    options = ({"quotechar": source.quote} if source.quote else {"quoting": csv.QUOTE_NONE})
    return csv.reader(text, delimiter=source.separator, strict=strict, **options)


def physical_line(path: Path, source: SourceConfig, data_row: int) -> int:
    """The 1-based line of ``path`` on which data record ``data_row`` (0-based, header excluded) starts,
    found by reading the file with Python's csv module (slow: for error messages only)."""
    index = data_row + int(source.header)
    try:
        with _text_stream(path) as text:
            reader, start, i = _reader(text, source), 1, 0
            for fields in reader:
                if fields:  # blank lines are no records
                    if i == index:
                        return start
                    i += 1
                start = reader.line_num + 1  # type: ignore[attr-defined]
    except (csv.Error, OSError, pa.ArrowException):
        pass
    return index + 1  # the record number: right for files without multi-line records or blank lines


def unclosed_quote_line(path: Path, source: SourceConfig) -> int | None:
    """The line of a record whose quoted field is never closed (it runs to the end of the file), or None."""
    try:
        with _text_stream(path) as text:
            reader, start = _reader(text, source, strict=True), 1
            try:
                for _ in reader:
                    start = reader.line_num + 1  # type: ignore[attr-defined]
            except csv.Error as exc:
                return start if "unexpected end of data" in str(exc) else None
    except (OSError, pa.ArrowException):
        pass
    return None


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
        elif p.is_dir():  # hidden files and Hadoop/Spark markers (_SUCCESS, .crc files) are not data
            files = sorted(f for f in p.iterdir() if f.is_file() and not f.name.startswith((".", "_")))
            if not files:
                raise DataFormatError(f"directory {p} holds no data file")
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
            while b"\n" not in data and b"\r" not in data:  # a line ends with LF, CR LF or CR alone
                block = stream.read(1 << 16)
                if not block:
                    break
                data += block
    except (OSError, pa.ArrowException) as exc:
        raise DataFormatError(f"{path}: cannot read ({exc})") from exc
    line = re.split(b"\r|\n", data, maxsplit=1)[0]
    try:
        return line.decode("utf-8-sig")  # a byte-order mark (Excel's UTF-8 CSV) is not part of the header
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


def path_value(path: Path, source: SourceConfig) -> str:
    """The value of the ``source.path_column`` column on every row of ``path``: the first group of its
    pattern's match in the path; DataFormatError naming the file and the key where there is none."""
    column = source.path_column
    assert column is not None
    match = re.search(column.pattern, path.as_posix())
    if match is None or not match[1]:
        raise DataFormatError(f"{path}: source.path_column: pattern {column.pattern!r} finds no value of "
                              f"column {column.name!r} in this file's path")
    return match[1]


def read_layout(path: Path, source: SourceConfig) -> ColumnLayout:
    """The columns of one raw file (:func:`_file_layout`), then the ``source.path_column`` column, if
    any, whose value the path must give."""
    layout = _file_layout(path, source)
    column = source.path_column
    if column is None:
        return layout
    if column.name in layout.columns:
        raise DataFormatError(f"{path}: source.path_column: column {column.name!r} is also in the file; give "
                              f"the column read from the path another name")
    path_value(path, source)
    return ColumnLayout((*layout.columns, column.name), (*layout.names, column.name), layout.groups)


def _file_layout(path: Path, source: SourceConfig) -> ColumnLayout:
    """The columns of one raw file: from its header, from ``source.columns``, or ``c0 .. c{n-1}``; for
    a known raw format, the columns of the rows its module builds."""
    known = raw_format(source.format)
    if known is not None:
        if not path.is_file():
            raise DataFormatError(f"raw data file not found: {path}")
        return ColumnLayout(known.columns, known.columns)
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
            hint = (" (a row index written by pandas' to_csv or R's write.csv? write without it, or name it)"
                    if not names[0] else "")
            raise DataFormatError(f"{path}, line 1: the header has an empty column name{hint}: {names}")
        return _unique(names)
    if source.columns:
        if len(source.columns) != len(fields):
            raise DataFormatError(f"{path}, line 1: {len(fields)} fields (separator {source.separator!r}) "
                                  f"but source.columns names {len(source.columns)}")
        return _unique(list(source.columns))
    return _unique([f"c{i}" for i in range(len(fields))])


def _ends_inside_quotes(batch: pa.RecordBatch | None, path: Path, source: SourceConfig) -> int | None:
    """The line of an unclosed quote when the file's last record holds a line break (cheap test first)."""
    if batch is None or not batch.num_rows or not source.quote:
        return None
    last = batch.slice(batch.num_rows - 1)
    if not any(pc.any(pc.match_substring_regex(col, "[\r\n]")).as_py() for col in last.columns):
        return None
    return unclosed_quote_line(path, source)


def _csv_batches(path: Path, source: SourceConfig, layout: ColumnLayout, include: list[str]
                 ) -> Iterator[pa.RecordBatch]:
    """The file's record batches; ``include`` plus the last column, where an unclosed quote would hide."""
    invalid: list[pa_csv.InvalidRow] = []
    include = include if not layout.names or layout.names[-1] in include else [*include, layout.names[-1]]

    def on_invalid(row: pa_csv.InvalidRow) -> str:
        invalid.append(row)
        return "error"

    parse = pa_csv.ParseOptions(delimiter=source.separator, quote_char=source.quote or False,
                                invalid_row_handler=on_invalid)
    convert = pa_csv.ConvertOptions(include_columns=include, column_types={n: pa.string() for n in include},
                                    strings_can_be_null=False, quoted_strings_can_be_null=False)
    last: pa.RecordBatch | None = None
    done = 0  # data rows yielded
    try:
        for block in _BLOCK_SIZES:
            read = pa_csv.ReadOptions(column_names=list(layout.names), skip_rows=1 if source.header else 0,
                                      skip_rows_after_names=done, use_threads=False, block_size=block)
            try:
                for last in pa_csv.open_csv(str(path), read_options=read, parse_options=parse,
                                            convert_options=convert):
                    done += last.num_rows
                    yield last
                break
            except pa.ArrowInvalid as exc:
                if "straddling" not in str(exc) or invalid:
                    raise
                if block == _BLOCK_SIZES[-1]:  # a record longer than the largest block
                    raise DataFormatError(f"{path}, line {physical_line(path, source, done)}: a record longer "
                                          f"than {block >> 20} MiB (one line of text, or a quoted field that is "
                                          f"never closed); is the separator {source.separator!r} right?") from None
    except pa.ArrowInvalid as exc:
        if invalid:
            row = invalid[0]
            line = (f"line {physical_line(path, source, row.number - 1 - int(source.header))}"
                    if row.number is not None else "a line")
            hint = ("; a quoted field opened here seems never closed" if "\n" in row.text and source.quote
                    else "")
            raise DataFormatError(
                f"{path}, {line}: expected {row.expected_columns} columns (separator {source.separator!r}), "
                f"found {row.actual_columns}{hint}: {row.text[:200]!r}") from None
        if "Empty CSV file" in str(exc):
            return
        record = re.search(r"Row #(\d+)", str(exc))
        if "invalid UTF8" in str(exc):
            at = f", line {physical_line(path, source, int(record[1]) - 1 - int(source.header))}" if record else ""
            raise DataFormatError(f"{path}{at}: not UTF-8 text; save the file as UTF-8") from None
        raise DataFormatError(f"{path}: cannot read as CSV ({exc})") from None
    except OSError as exc:
        raise DataFormatError(f"{path}: cannot read ({exc})") from exc
    unclosed = _ends_inside_quotes(last, path, source)
    if unclosed is not None:
        raise DataFormatError(f"{path}, line {unclosed}: a field opened with the quote character {source.quote!r} is "
                              f"never closed, so the rest of the file would be read as one value")


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
    """Stream the physical columns ``include`` of ``path`` in chunks of ``chunk_rows`` rows; the
    ``source.path_column`` column (last in ``layout``) holds the value the path gives on every row."""
    column = source.path_column
    if column is None or column.name not in layout.names:
        yield from _file_chunks(path, source, layout, include, chunk_rows)
        return
    value = path_value(path, source)
    in_file = ColumnLayout(layout.columns[:-1], layout.names[:-1], layout.groups)
    for chunk in _file_chunks(path, source, in_file, [c for c in include if c != column.name], chunk_rows):
        if column.name in include:
            chunk = replace(chunk, table=chunk.table.append_column(
                column.name, pa.array([value] * chunk.num_rows, pa.string())))
        yield chunk


def _file_chunks(path: Path, source: SourceConfig, layout: ColumnLayout, include: list[str],
                 chunk_rows: int | None) -> Iterator[Chunk]:
    """The chunks of :func:`iter_chunks` as read from the file (``layout``: the file's own columns)."""
    chunk_rows = chunk_rows or source.chunk_rows
    known = raw_format(source.format)
    if known is not None:
        yield from _built_chunks(known, path, source, include, chunk_rows)
        return
    is_csv = file_format(path, source.format) == "csv"
    batches = (_csv_batches(path, source, layout, include) if is_csv
               else _parquet_batches(path, include, chunk_rows))
    first = 0
    for table in _rechunk(batches, chunk_rows):
        if is_csv and source.strip:
            table = pa.table({n: pc.utf8_trim_whitespace(table[n]) for n in table.column_names})
        yield Chunk(table, path, first, source, is_csv)
        first += table.num_rows


def _built_chunks(known: RawFormat, path: Path, source: SourceConfig, include: list[str], chunk_rows: int
                  ) -> Iterator[Chunk]:
    """The rows a known raw format builds from its log (streamed: blocks of lines in, chunks of rows out)."""
    log = source.model_copy(update={"format": "csv", "header": False, "columns": known.log_columns,
                                    "quote": None, "strip": False, "separator": known.separator})
    layout = ColumnLayout(known.log_columns, known.log_columns)

    def blocks() -> Iterator[LogBlock]:
        for chunk in _file_chunks(path, log, layout, list(known.log_columns), known.block_rows):
            yield LogBlock(chunk.table, chunk.first_row + 1 + np.arange(chunk.num_rows), chunk.where)

    options = source.options if source.options is not None else known.options()
    tables = known.rows(blocks(), options, str(path))
    first = 0
    for table in _rechunk((b for t in tables for b in t.to_batches()), chunk_rows):
        lines = np.asarray(table[LINE].to_numpy(), dtype=np.int64)
        yield Chunk(table.select(include), path, first, source, False, lines)
        first += table.num_rows
