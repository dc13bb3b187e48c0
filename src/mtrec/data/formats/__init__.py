"""Known raw formats: a raw file that is not a table of rows (an event log), turned into rows by its own
module, registered here by name as models are (``source: {format: NAME, options: {...}}``).

A format reads its file as headerless text with fixed columns (:attr:`RawFormat.log_columns`, read by
the generic CSV reader in blocks of :attr:`RawFormat.block_rows` lines) and builds the training rows
from those blocks (:attr:`RawFormat.rows`): tables of text columns :attr:`RawFormat.columns` plus
:data:`LINE`, the log line each row comes from, so that errors about a row name its line. Everything
else (the dataset config, the split, the encoders) treats the rows like those of any CSV file. The
generic config and readers name no format: they ask :func:`raw_format`.

Adding a format: a module here that calls :func:`register_format` with its :class:`RawFormat`, imported
at the end of this file.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from mtrec.typed import ConfigModel

LINE = "_line"  # the log line of each built row (for messages); not a data column


@dataclass(frozen=True)
class LogBlock:
    """Consecutive lines of a log read as text: ``table`` (columns :attr:`RawFormat.log_columns`), their
    1-based ``lines`` ``[n]``, and ``where(i)``, which names row i's file and line in an error."""

    table: pa.Table
    lines: np.ndarray
    where: Callable[[int], str]


@dataclass(frozen=True)
class RawFormat:
    """A registered raw format (see the module docstring). ``rows(blocks, options, path)`` yields tables of
    :attr:`columns` (text) and :data:`LINE`; ``options`` is an instance of :attr:`options`."""

    name: str
    options: type[ConfigModel]
    log_columns: tuple[str, ...]
    columns: tuple[str, ...]
    rows: Callable[[Iterable[LogBlock], ConfigModel, str], Iterator[pa.Table]]
    separator: str = ","
    block_rows: int = 1 << 16


_FORMATS: dict[str, RawFormat] = {}


def register_format(raw: RawFormat) -> RawFormat:
    """Make ``raw`` readable as ``source.format: raw.name``."""
    if raw.name in _FORMATS:
        raise ValueError(f"raw format {raw.name!r} is registered twice")
    _FORMATS[raw.name] = raw
    return raw


def raw_format(name: str) -> RawFormat | None:
    """The registered format ``name``; None for the tabular ones (``auto``, ``csv``, ``parquet``)."""
    return _FORMATS.get(name)


def format_names() -> tuple[str, ...]:
    """The registered formats' names, sorted."""
    return tuple(sorted(_FORMATS))


from mtrec.data.formats import userbehavior  # noqa: E402  (registers itself)

__all__ = ["LINE", "LogBlock", "RawFormat", "format_names", "raw_format", "register_format", "userbehavior"]
