"""Feature encoders: raw values -> the id and float blocks a model reads.

``FeatureEncoders`` holds what ``prepare`` fitted on the training split: one :class:`Vocabulary` per
embedding table (features that share a table share its vocabulary), each dense feature's transform, and
how each behaviour sequence is written in the raw data. ``prepare`` encodes every raw chunk with
:meth:`FeatureEncoders.encode` and saves the encoders as ``encoders.json`` in the prepared dataset, so the
same code turns a request's raw values into model input at serving time.

Raw values are compared as canonical text: strings as given (whitespace-trimmed when ``strip``),
integers as decimal digits, integral floats as integers (``3.0`` -> ``"3"``), other floats in shortest
round-trip form, booleans as ``true``/``false``; a missing value (None, NaN, null) of a sparse feature is
the empty string, a category of its own. Ids: 0 = padding, 1 = out-of-vocabulary (unseen in training),
known values from 2 (see :mod:`mtrec.features.vocab`).

Dense transform (per feature): ``x -> sign(x) * log(1 + |x|)`` if ``log1p``, then ``(x - mean) / std``;
a missing value (None, NaN, empty, or one of ``missing_values``) becomes ``fill`` (default 0, the training
mean after standardisation).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from itertools import repeat
from operator import is_
from pathlib import Path
from typing import Annotated, Any, Literal, TypeAlias

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

from mtrec.features.schema import OOV_ID, DatasetSchema, SequenceFeature, SparseFeature
from mtrec.features.vocab import Vocabulary
from mtrec.io import atomic_write_text, json_text, read_mapping
from mtrec.typed import ConfigModel, validate

ENCODERS_FILE = "encoders.json"
FORMAT = "mtrec-feature-encoders"
VERSION = 1

RawColumn: TypeAlias = Sequence[Any] | np.ndarray | pa.Array | pa.ChunkedArray


class EncodingError(ValueError):
    """A raw value that cannot be encoded; ``feature`` and ``row`` (0-based, within the input) say where."""

    def __init__(self, message: str, feature: str, row: int | None = None, value: Any = None) -> None:
        super().__init__(message)
        self.feature = feature
        self.row = row
        self.value = value


def not_finite(feature: str, value: Any, row: int | None = None) -> EncodingError:
    """The error for a dense value that is not a finite number (``inf``, ``1e400``)."""
    return EncodingError(f"dense feature {feature!r}: {value!r} is not a finite number", feature, row, value)


def out_of_range(feature: str, value: Any, row: int | None = None) -> EncodingError:
    """The error for a dense value that is not finite as float32 once transformed."""
    return EncodingError(f"dense feature {feature!r}: {value!r} is out of range for the model (not finite as "
                         f"float32 after the feature's transform)", feature, row, value)


# ---- canonical raw text ----------------------------------------------------------------------------
def _canonical_item(value: Any) -> str | None:
    """One Python value -> canonical text (None for missing); the slow path for mixed-type input."""
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, bool | np.bool_):
        return "true" if value else "false"
    if isinstance(value, int | np.integer):
        return str(int(value))
    if isinstance(value, float | np.floating):
        if math.isnan(value):
            return None
        return str(pc.cast(pa.array([float(value)]), pa.string())[0].as_py())
    return str(value)


def to_arrow(values: RawColumn) -> pa.Array:
    """Any 1-D column (list, NumPy array, Arrow array) as one Arrow array; NaN becomes null."""
    if isinstance(values, pa.ChunkedArray):
        return values.combine_chunks()
    if isinstance(values, pa.Array):
        return values
    if isinstance(values, np.ndarray) and values.ndim != 1:
        raise ValueError(f"expected a 1-D column, got an array of shape {values.shape}")
    try:
        return pa.array(values, from_pandas=True)
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError):
        return pa.array([_canonical_item(v) for v in values], type=pa.string())


def canonical_strings(values: RawColumn, strip: bool = False) -> pa.Array:
    """A column as canonical text (``pa.string()``, null where missing); see the module docstring."""
    arr = to_arrow(values)
    kind = arr.type
    if pa.types.is_dictionary(kind):
        arr = arr.dictionary_decode()
        kind = arr.type
    if pa.types.is_null(kind):
        return pa.nulls(len(arr), pa.string())
    if pa.types.is_floating(kind):
        arr = pc.if_else(pc.is_nan(arr), pa.scalar(None, kind), arr)
    if pa.types.is_large_string(kind):
        arr = arr.cast(pa.string())
    elif not pa.types.is_string(kind):
        try:
            arr = pc.cast(arr, pa.string())
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            arr = pa.array([_canonical_item(v) for v in arr.to_pylist()], type=pa.string())
    if strip:
        arr = pc.utf8_trim_whitespace(arr)
    return arr


def value_counts(tokens: pa.Array) -> Counter[str]:
    """Occurrences of each canonical value (missing counted as the empty string)."""
    counts = pc.value_counts(pc.fill_null(tokens, ""))
    return Counter(dict(zip(counts.field("values").to_pylist(), counts.field("counts").to_pylist(),
                            strict=True)))


def lookup(vocab: Vocabulary, tokens: pa.Array) -> np.ndarray:
    """Canonical values ``[N]`` -> ids ``[N]`` (int32); missing is the empty string, unseen is OOV.

    Hash-encodes the column in Arrow, then looks up each distinct value once (one C-level dictionary pass)."""
    encoded = pc.dictionary_encode(pc.fill_null(tokens, ""))
    distinct = encoded.dictionary.to_pylist()
    ids = np.fromiter(map(vocab.index.get, distinct, repeat(OOV_ID)), dtype=np.int32, count=len(distinct))
    return ids[encoded.indices.to_numpy(zero_copy_only=False)]


def lookup_objects(vocab: Vocabulary, values: list[Any], strip: bool = False) -> np.ndarray:
    """Raw values as a Python list ``[N]`` (a request's JSON values) -> ids ``[N]`` (int32), as :func:`lookup`
    gives for their canonical text: one C-level dictionary pass over the values as given; only the misses
    (non-string values, untrimmed strings, unseen values) are made canonical one by one and looked up again.
    For a few hundred values this is several times faster than the Arrow kernels' fixed cost."""
    index = vocab.index
    ids = np.fromiter(map(index.get, values, repeat(-1)), dtype=np.int32, count=len(values))
    if not len(ids) or ids.min() >= 0:
        return ids
    for i in np.flatnonzero(ids < 0).tolist():
        text = _canonical_item(values[i])
        if text is not None and strip:
            text = text.strip()
        ids[i] = index.get(text or "", OOV_ID)
    return ids


def _raw_value(column: RawColumn, row: int) -> Any:
    """The raw value at ``row`` of a column, as a Python value (for an error message)."""
    value = column[row]
    return value.as_py() if isinstance(value, pa.Scalar) else value


# ---- dense -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DenseTransform:
    """How one dense feature's raw value becomes its model input (see the module docstring)."""

    log1p: bool = False
    mean: float = 0.0
    std: float = 1.0
    fill: float = 0.0

    def transform(self, raw: np.ndarray) -> np.ndarray:
        """Parsed values ``[N]`` (float64, NaN = missing) -> model input ``[N]`` (float32)."""
        x = signed_log1p(raw) if self.log1p else raw
        x = (x - self.mean) / self.std
        return np.where(np.isnan(x), self.fill, x).astype(np.float32)

    def inverse(self, x: np.ndarray) -> np.ndarray:
        """Model inputs ``[N]`` -> raw values ``[N]`` (float64) that :meth:`transform` maps back to them."""
        raw = x * self.std + self.mean
        return np.sign(raw) * np.expm1(np.abs(raw)) if self.log1p else raw


def signed_log1p(x: np.ndarray) -> np.ndarray:
    """``sign(x) * log(1 + |x|)``: log1p that keeps the sign of negative values."""
    return np.sign(x) * np.log1p(np.abs(x))


def _first_unparsed(text: pa.Array) -> int:
    """The first row of ``text`` that Arrow cannot read as a number (one exists), found by halving: the
    rows Arrow refuses (``" 5.0 "``, ``1_000``, non-ASCII digits) are not all the ones Python refuses."""
    start, length = 0, len(text)
    while length > 1:
        half = length // 2
        try:
            pc.cast(text.slice(start, half), pa.float64())
            start, length = start + half, length - half
        except pa.ArrowInvalid:
            length = half
    return start


def parse_numbers(values: RawColumn, missing_values: Iterable[str] = (), feature: str = "",
                  strip: bool = True) -> np.ndarray:
    """A raw column -> float64 ``[N]`` with NaN where missing (None, NaN, empty, or a missing token).

    Raises EncodingError naming the first value that is not a number, or not a finite one (``inf``,
    ``1e400``: list such a token in ``missing_values`` to read it as missing)."""
    arr = to_arrow(values)
    if pa.types.is_dictionary(arr.type):
        arr = arr.dictionary_decode()
    values_before = arr
    if pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type):
        text = pc.utf8_trim_whitespace(arr.cast(pa.string())) if strip else arr.cast(pa.string())
        missing = pc.or_(pc.equal(text, ""), pc.is_in(text, value_set=pa.array(list(missing_values),
                                                                                 pa.string())))
        text = pc.if_else(missing, pa.scalar(None, pa.string()), text)
        try:
            arr = pc.cast(text, pa.float64())
        except pa.ArrowInvalid:
            row = _first_unparsed(text)
            v = text[row].as_py()
            raise EncodingError(f"dense feature {feature!r}: {v!r} is not a number", feature, row, v) from None
    elif pa.types.is_null(arr.type):
        return np.full(len(arr), np.nan)
    else:
        try:
            arr = pc.cast(arr, pa.float64())
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            raise EncodingError(f"dense feature {feature!r}: values of type {arr.type} are not numbers",
                                feature) from None
    values = np.asarray(arr.to_numpy(zero_copy_only=False), dtype=np.float64)
    infinite = np.flatnonzero(np.isinf(values))
    if infinite.size:
        row = int(infinite[0])
        raw = values_before[row].as_py() if isinstance(values_before, pa.Array) else values[row]
        raise not_finite(feature, raw, row)
    return values


_NUMBER_TYPES = frozenset({float, int, type(None)})


def numbers(values: RawColumn, missing_values: Iterable[str] = (), feature: str = "", strip: bool = True
            ) -> np.ndarray:
    """:func:`parse_numbers`, with a Python list of numbers and None (a request's JSON values) converted
    directly instead of through Arrow."""
    if isinstance(values, list) and set(map(type, values)) <= _NUMBER_TYPES:
        try:
            raw = np.array(values, dtype=np.float64)
        except OverflowError:  # an integer beyond float64: parse_numbers names it
            return parse_numbers(values, missing_values, feature, strip)
        infinite = np.flatnonzero(np.isinf(raw))
        if infinite.size:
            row = int(infinite[0])
            raise not_finite(feature, values[row], row)
        return raw
    return parse_numbers(values, missing_values, feature, strip)


# ---- sequences ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SequenceFormat:
    """How a behaviour history is written in the raw data.

    A history is a list of raw tokens per row: a list (or a row of a 2-D array) as given, or a string
    split on ``separator`` (without a separator a string is one token). Tokens in ``pad_values`` and
    empty tokens are dropped; ``keep`` says which ``max_len`` tokens remain when a history is longer
    (``first`` or ``last``); the kept tokens are left-aligned and the rest padded with id 0.
    """

    separator: str | None = None
    pad_values: tuple[str, ...] = ()
    keep: str = "first"

    def __post_init__(self) -> None:
        if self.keep not in ("first", "last"):
            raise ValueError(f"sequence keep must be 'first' or 'last', got {self.keep!r}")
        if self.separator == "":
            raise ValueError("sequence separator must not be empty")


def _token_list(value: Any, fmt: SequenceFormat) -> list[str | None] | None:
    """One history given as a Python value (a list of tokens, a separator-joined string, None) -> its raw
    tokens as text (None if missing); for columns that mix lists, strings and token types."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    tokens = (value.split(fmt.separator) if fmt.separator is not None else [value]) if isinstance(value, str) \
        else value
    return [_canonical_item(t) for t in tokens]


def _as_list_array(values: RawColumn | np.ndarray, fmt: SequenceFormat, strip: bool) -> pa.Array:
    """Each row's raw tokens as an Arrow list array ``[N] of list<string>``."""
    if isinstance(values, np.ndarray) and values.ndim == 2:
        n, width = values.shape
        flat = canonical_strings(values.reshape(-1), strip)  # [N*W] row-major
        return pa.FixedSizeListArray.from_arrays(flat, width) if n else pa.array([], pa.list_(pa.string()))
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if isinstance(values, pa.Array) and (pa.types.is_list(values.type) or
                                         pa.types.is_fixed_size_list(values.type) or
                                         pa.types.is_large_list(values.type)):
        arr: pa.Array = values
    elif not isinstance(values, pa.Array) and any(isinstance(v, list | tuple | np.ndarray) for v in values):
        try:
            arr = pa.array(values, from_pandas=True)
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError):
            arr = pa.array([_token_list(v, fmt) for v in values], type=pa.list_(pa.string()))
    else:
        arr = to_arrow(values)
    if not (pa.types.is_list(arr.type) or pa.types.is_fixed_size_list(arr.type) or
            pa.types.is_large_list(arr.type)):
        text = canonical_strings(arr, strip)
        if fmt.separator is None:
            return pa.ListArray.from_arrays(pa.array(np.arange(len(text) + 1, dtype=np.int32)), text)
        return pc.split_pattern(text, fmt.separator)
    return arr


def sequence_tokens(values: RawColumn | np.ndarray, fmt: SequenceFormat, max_len: int,
                    strip: bool = False) -> tuple[pa.Array, np.ndarray, np.ndarray, int]:
    """The tokens a history keeps: ``(tokens [T] string, rows [T], positions [T], N)``.

    ``values`` is ``[N]`` (lists, or strings to split) or a 2-D array ``[N, W]`` of raw tokens (one column
    per position). Pad and empty tokens are dropped, then at most ``max_len`` per row are kept
    (``fmt.keep``), left-aligned: ``positions`` are in ``[0, max_len)``."""
    lists = _as_list_array(values, fmt, strip)
    n = len(lists)
    flat = canonical_strings(pc.list_flatten(lists), strip)  # [T0]
    rows = np.asarray(pc.list_parent_indices(lists).to_numpy(zero_copy_only=False), dtype=np.int64)
    drop = pc.or_(pc.is_null(flat), pc.equal(flat, ""))
    if fmt.pad_values:
        drop = pc.or_(drop, pc.is_in(flat, value_set=pa.array(list(fmt.pad_values), pa.string())))
    keep = ~np.asarray(pc.fill_null(drop, True).to_numpy(zero_copy_only=False), dtype=bool)
    flat = flat.filter(pa.array(keep))
    rows = rows[keep]  # [T], non-decreasing
    lengths = np.bincount(rows, minlength=n)
    starts = np.cumsum(lengths) - lengths  # first token of each row
    position = np.arange(len(rows)) - starts[rows]  # 0-based position within the row
    if fmt.keep == "last":
        position = position - np.maximum(lengths[rows] - max_len, 0)
        kept = position >= 0
    else:
        kept = position < max_len
    return flat.filter(pa.array(kept)), rows[kept], position[kept], n


def history_rows(values: list[Any], fmt: SequenceFormat, max_len: int, vocab: Vocabulary,
                 strip: bool = False) -> np.ndarray:
    """Histories as a Python list ``[N]`` (each a list of tokens, a separator-joined string, or None) -> ids
    ``[N, max_len]`` (int32), as :func:`sequence_tokens` and :func:`lookup` give for them. A value that is
    the same object in several rows (a request's user history, repeated per candidate) is encoded once."""
    slots: dict[int, int] = {}
    order = [slots.setdefault(id(value), len(slots)) for value in values]  # [N] index of each distinct value
    if len(slots) == len(values):
        distinct = values
    else:
        first = dict(zip(order, values, strict=True))  # slot -> its value (any of the rows holding it)
        distinct = [first[k] for k in range(len(slots))]
    rows = [_history_row(value, fmt, max_len, vocab, strip) for value in distinct]
    if not rows:
        return np.zeros((0, max_len), dtype=np.int32)
    return np.stack(rows)[np.asarray(order)] if len(rows) < len(values) else np.stack(rows)


def _uniform(values: RawColumn | np.ndarray) -> bool:
    """Whether ``values`` is a Python list of more than one row holding the same object in every row."""
    return isinstance(values, list) and len(values) > 1 and all(map(is_, values, repeat(values[0])))


def _history_row(value: Any, fmt: SequenceFormat, max_len: int, vocab: Vocabulary, strip: bool) -> np.ndarray:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        tokens: list[Any] = []
    elif isinstance(value, str):
        text = value.strip() if strip else value
        tokens = text.split(fmt.separator) if fmt.separator is not None else [text]
    else:
        tokens = list(value)
    texts = [_canonical_item(t) for t in tokens]
    if strip:
        texts = [t.strip() if t is not None else None for t in texts]
    kept = [t for t in texts if t and t not in fmt.pad_values]
    kept = kept[-max_len:] if fmt.keep == "last" else kept[:max_len]
    row = np.zeros(max_len, dtype=np.int32)
    row[: len(kept)] = lookup_objects(vocab, kept)
    return row


# ---- the JSON form ---------------------------------------------------------------------------------------
FiniteNumber = Annotated[float, Field(allow_inf_nan=False)]


class _DenseSpec(ConfigModel):
    log1p: bool = False
    mean: FiniteNumber = 0.0
    std: Annotated[float, Field(gt=0.0, allow_inf_nan=False)] = 1.0
    fill: FiniteNumber = 0.0


class _SequenceSpec(ConfigModel):
    separator: Annotated[str, Field(min_length=1)] | None = None
    pad_values: list[str] = Field(default_factory=list)
    keep: Literal["first", "last"] = "first"


class EncodersFile(ConfigModel):
    """``encoders.json`` (the format is specified in docs/serving.md), checked strictly: unknown keys,
    values of another type, a non-finite number or a ``std`` <= 0 are errors."""

    format: Literal["mtrec-feature-encoders"]
    version: Literal[1]
    strip: bool = False
    missing_values: list[str] = Field(default_factory=list)
    vocabularies: dict[str, list[str]]
    dense: dict[str, _DenseSpec] = Field(default_factory=dict)
    sequences: dict[str, _SequenceSpec] = Field(default_factory=dict)


# ---- the encoders --------------------------------------------------------------------------------------
@dataclass
class FeatureEncoders:
    """Fitted raw-value encoders for every feature of a schema.

    vocabularies:   table name -> Vocabulary (features sharing an embedding table share it)
    dense:          dense feature name -> DenseTransform
    sequences:      sequence feature name -> SequenceFormat
    missing_values: raw tokens that mean "missing" for dense features (besides empty / null / NaN)
    strip:          trim whitespace around raw strings (as prepare did)
    """

    vocabularies: dict[str, Vocabulary] = field(default_factory=dict)
    dense: dict[str, DenseTransform] = field(default_factory=dict)
    sequences: dict[str, SequenceFormat] = field(default_factory=dict)
    missing_values: tuple[str, ...] = ()
    strip: bool = False
    _checked: DatasetSchema | None = field(default=None, init=False, repr=False, compare=False)

    # ---- checks -----------------------------------------------------------------------------------
    def check(self, schema: DatasetSchema) -> None:
        """Raise ValueError if the schema has a feature these encoders cannot encode (checked once per
        schema object: encoding a request checks it each time)."""
        if schema is self._checked:
            return
        self._check(schema)
        self._checked = schema

    def _check(self, schema: DatasetSchema) -> None:
        embedded: list[SparseFeature | SequenceFeature] = [*schema.sparse, *schema.sequences]
        sizes = schema.table_sizes()
        for f in embedded:
            if f.table_name not in self.vocabularies:
                raise ValueError(f"no vocabulary for feature {f.name!r} (table {f.table_name!r})")
            vocab = self.vocabularies[f.table_name]
            if vocab.size > sizes[f.table_name]:  # its last ids would index past the embedding table
                raise ValueError(f"vocabulary {f.table_name!r} has {len(vocab.index)} values (ids up to "
                                 f"{vocab.size - 1}), more than the schema's vocab_size {sizes[f.table_name]} "
                                 f"for feature {f.name!r}")
        for d in schema.dense:
            if d.name not in self.dense:
                raise ValueError(f"no transform for dense feature {d.name!r}")
        for s in schema.sequences:
            if s.name not in self.sequences:
                raise ValueError(f"no sequence format for sequence feature {s.name!r}")

    # ---- encoding ---------------------------------------------------------------------------------
    def encode(
        self, columns: Mapping[str, RawColumn | np.ndarray], schema: DatasetSchema
    ) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
        """Raw values keyed by feature name -> ``(sparse, dense, sequences)``.

        columns:   feature name -> N raw values (strings or numbers as in the raw file). A sequence
                   feature takes N lists of raw tokens, N strings joined by its separator, or a 2-D
                   array ``[N, W]`` (one column per position). Extra keys are ignored. An Arrow or NumPy
                   column goes through Arrow's kernels (a file's chunk); a Python list (a request's
                   values) through dictionary lookups, faster for a few hundred values; both give the
                   same result.
        returns:   sparse int32 ``[N, F_sparse]`` (schema order), dense float32 ``[N, F_dense]``,
                   ``{sequence name: int32 [N, max_len]}`` (left-aligned, 0 = padding).
        Raises ValueError naming a missing column, columns of unequal length, or (EncodingError, with its
        row) a dense value that is not a number, or one that overflows float32 once transformed.
        """
        self.check(schema)
        needed = schema.feature_names
        absent = [name for name in needed if name not in columns]
        if absent:
            raise ValueError(f"missing input column(s) {absent}; the schema needs {needed}")
        lengths = {name: len(columns[name]) for name in needed}
        n = next(iter(lengths.values()), 0)
        if any(v != n for v in lengths.values()):
            raise ValueError(f"input columns have different lengths: {lengths}")
        # a list holding one object in every row (a request's user feature) is encoded once, then broadcast
        columns = {name: columns[name][:1] if _uniform(columns[name]) else columns[name] for name in needed}
        sparse = np.zeros((n, len(schema.sparse)), dtype=np.int32)  # [N, F_sparse]
        for j, f in enumerate(schema.sparse):
            values, vocab = columns[f.name], self.vocabularies[f.table_name]
            sparse[:, j] = lookup_objects(vocab, values, self.strip) if isinstance(values, list) else \
                lookup(vocab, canonical_strings(values, self.strip))
        dense = np.zeros((n, len(schema.dense)), dtype=np.float32)  # [N, F_dense]
        for j, d in enumerate(schema.dense):
            raw = numbers(columns[d.name], self.missing_values, d.name, self.strip)
            with np.errstate(over="ignore", invalid="ignore"):  # overflow is reported below, naming the value
                dense[:, j] = self.dense[d.name].transform(raw)
            if not np.isfinite(dense[:, j]).all():  # a finite raw value can overflow float32 once transformed
                row = int(np.flatnonzero(~np.isfinite(dense[:, j]))[0])
                raise out_of_range(d.name, _raw_value(columns[d.name], row), row)
        sequences: dict[str, np.ndarray] = {}
        for s in schema.sequences:
            values, fmt, vocab = columns[s.name], self.sequences[s.name], self.vocabularies[s.table_name]
            if isinstance(values, list):
                rows = history_rows(values, fmt, s.max_len, vocab, self.strip)  # [N or 1, L]
                sequences[s.name] = np.repeat(rows, n, axis=0) if len(rows) < n else rows
                continue
            tokens, rows, positions, _ = sequence_tokens(values, fmt, s.max_len, self.strip)
            block = np.zeros((n, s.max_len), dtype=np.int32)  # [N, L]
            block[rows, positions] = lookup(vocab, tokens)
            sequences[s.name] = block
        return sparse, dense, sequences

    def decode(
        self, sparse: np.ndarray, dense: np.ndarray, sequences: Mapping[str, np.ndarray], schema: DatasetSchema
    ) -> dict[str, list[Any]]:
        """Encoded rows -> raw values keyed by feature name (what :meth:`encode` turns back into these rows).

        sparse ``[N, F_sparse]``, dense ``[N, F_dense]``, ``{sequence name: [N, L]}`` as :meth:`encode` returns
        them. Categorical values come back as their raw text (the OOV id, which has none, as None), dense
        values through the inverse transform (float64, so encoding them again gives the same float32),
        histories as strings joined by their separator (``|`` without one)."""
        self.check(schema)

        def texts(table: str) -> np.ndarray:  # id -> raw text [vocab size], object
            return np.array([None, None, *self.vocabularies[table].to_list()], dtype=object)

        columns: dict[str, list[Any]] = {}
        for j, f in enumerate(schema.sparse):
            columns[f.name] = texts(f.table_name)[np.asarray(sparse[:, j])].tolist()
        for j, d in enumerate(schema.dense):
            columns[d.name] = self.dense[d.name].inverse(np.asarray(dense[:, j], dtype=np.float64)).tolist()
        for s in schema.sequences:
            names, separator = texts(s.table_name), self.sequences[s.name].separator or "|"
            columns[s.name] = [separator.join(names[row[row > 1]]) for row in np.asarray(sequences[s.name])]
        return columns

    # ---- JSON -------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": VERSION,
            "strip": self.strip,
            "missing_values": list(self.missing_values),
            "vocabularies": {table: v.to_list() for table, v in sorted(self.vocabularies.items())},
            "dense": {name: asdict(t) for name, t in self.dense.items()},
            "sequences": {name: {**asdict(s), "pad_values": list(s.pad_values)}
                          for name, s in self.sequences.items()},
        }

    def to_json(self) -> str:
        return json_text(self.to_dict(), indent=1, ensure_ascii=False) + "\n"

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "") -> FeatureEncoders:
        """Encoders from their JSON form, every field checked (:class:`EncodersFile`); ValueError naming the
        first key that is wrong (prefixed with ``where``, the file)."""
        if not isinstance(data, Mapping) or data.get("format") != FORMAT:
            found = data.get("format") if isinstance(data, Mapping) else type(data).__name__
            raise ValueError(f"{where + ': ' if where else ''}not a feature-encoders description (format {found!r})")
        if data.get("version") != VERSION:
            raise ValueError(f"{where + ': ' if where else ''}feature encoders version {data.get('version')!r} is not "
                             f"supported (this mtrec reads version {VERSION})")
        spec = validate(EncodersFile, data, where, ValueError)
        return cls(
            vocabularies={t: Vocabulary.from_list(v) for t, v in spec.vocabularies.items()},
            dense={name: DenseTransform(t.log1p, t.mean, t.std, t.fill) for name, t in spec.dense.items()},
            sequences={name: SequenceFormat(s.separator, tuple(s.pad_values), s.keep)
                       for name, s in spec.sequences.items()},
            missing_values=tuple(spec.missing_values),
            strip=spec.strip,
        )

    def save(self, path: str | Path) -> None:
        """Write ``encoders.json`` atomically."""
        atomic_write_text(Path(path), self.to_json())

    @classmethod
    def load(cls, path: str | Path) -> FeatureEncoders:
        data = read_mapping(path, "feature encoders file", max_bytes=None)  # vocabularies can be large
        return cls.from_dict(data, where=str(path))
