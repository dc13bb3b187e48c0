"""Dataset configs: a YAML file that says how raw CSV/Parquet columns become a prepared dataset.

The format is documented with a complete example in ``docs/datasets.md``. :func:`load_dataset_config`
parses and validates a file with pydantic (each section a frozen strict model, see :mod:`mtrec.typed`;
an error is one line naming the file and the key); what needs the raw columns (unknown names, columns
without a role, glob patterns) is checked by :meth:`DatasetConfig.resolve` once the reader has seen the
header.
"""

from __future__ import annotations

import difflib
import fnmatch
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Annotated, Any, Literal, Self

import numpy as np
from pydantic import (
    AfterValidator,
    BeforeValidator,
    ConfigDict,
    Field,
    SerializeAsAny,
    ValidationError,
    field_validator,
    model_validator,
)

from mtrec.data.dataset import SPLITS, DatasetError
from mtrec.data.formats import format_names, raw_format
from mtrec.features.schema import TASK_LOSSES
from mtrec.io import read_mapping
from mtrec.typed import STRICT, ConfigModel, Count, NonNegative, error_line, short_repr, validate


class DatasetConfigError(DatasetError):
    """A dataset config that cannot be used; the message names the file and the key."""


# ---- value types ----------------------------------------------------------------------------------------
def _suggest(name: str, options: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(options), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _strings(value: Any) -> tuple[str, ...]:
    """A string, a number or a list of them -> a tuple of strings (YAML reads ``2024`` as a number)."""
    if value is None:
        return ()
    scalar = (str, int, float)
    if isinstance(value, scalar) and not isinstance(value, bool):
        return (str(value),)
    if isinstance(value, list | tuple) and all(isinstance(v, scalar) and not isinstance(v, bool) for v in value):
        return tuple(str(v) for v in value)
    raise ValueError(f"expected a string or a list of strings, got {short_repr(value)}")


def _one_character(value: str) -> str:
    if len(value) != 1:
        raise ValueError(f"must be one character, got {value!r}")
    return value


def _non_empty(value: str) -> str:
    if not value:
        raise ValueError("must be a non-empty string")
    return value


Strings = Annotated[tuple[str, ...], BeforeValidator(_strings)]
OneCharacter = Annotated[str, AfterValidator(_one_character)]
NonEmpty = Annotated[str, AfterValidator(_non_empty)]
GLOB = "*?["
FLOAT32_MAX = float(np.finfo(np.float32).max)


class Section(ConfigModel):
    """A frozen, strict config section (see :mod:`mtrec.typed`)."""

    model_config = ConfigDict(**STRICT, frozen=True)


class NamedSection(Section):
    """A section with a ``name`` from which other keys default (:meth:`defaults`)."""

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        if not isinstance(value, Mapping) or "name" not in value:
            return value
        return cls.defaults(dict(value))

    @classmethod
    def defaults(cls, entry: dict[str, Any]) -> dict[str, Any]:
        """The entry as written -> with the keys that default from its name filled in."""
        return entry


# ---- the config sections -------------------------------------------------------------------------------
TABULAR = ("auto", "csv", "parquet")


def _one_group(pattern: str) -> str:
    try:
        compiled = re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"not a valid regular expression ({exc}): {pattern!r}") from None
    if compiled.groups < 1:
        raise ValueError(f"needs a group '(...)' whose match is the column's value: {pattern!r}")
    return pattern


class PathColumn(Section):
    """A column whose value comes from each file's path, not from the file: the first group of
    ``re.search(pattern, path)`` (the path as read, with ``/`` separators) is its value on every row of
    that file. A file where the pattern finds no match (or an empty one) is an error."""

    name: NonEmpty
    pattern: Annotated[str, AfterValidator(_one_group)]


class SourceConfig(Section):
    """Where the raw rows are and how to read them.

    ``path`` lists files, directories (every file inside, sorted) or glob patterns; relative paths are
    taken from the current directory. For ``split: {kind: files}`` it is the directory the split files
    are in. ``path_column`` adds a column read from each file's path (:class:`PathColumn`).
    ``separator`` is one character (for ``", "`` use ``","`` with ``strip: true``). ``format`` is
    ``auto`` (by file extension), ``csv``, ``parquet`` or a known raw format (:mod:`mtrec.data.formats`),
    whose module turns its file into rows with ``options`` (defaults where absent); no tabular format
    takes options.
    """

    path: Strings = ()
    format: str = "auto"
    separator: OneCharacter = ","
    header: bool = True
    columns: Strings = ()
    quote: OneCharacter | None = '"'
    strip: bool = False
    missing_values: Strings = ()
    chunk_rows: Count = 262_144
    path_column: PathColumn | None = None
    options: SerializeAsAny[ConfigModel] | None = None

    @model_validator(mode="before")
    @classmethod
    def _format_options(cls, value: Any) -> Any:
        """Check ``format``; validate ``options`` with the known format's options type (its defaults if absent)."""
        if not isinstance(value, Mapping) or not isinstance(value.get("format", "auto"), str):
            return value
        entry, name = dict(value), value.get("format", "auto")
        known = raw_format(name)
        if known is None and name not in TABULAR:
            choices = [*TABULAR, *format_names()]
            raise ValueError(f"format: must be one of {choices}, got {name!r}{_suggest(name, choices)}")
        if known is None:
            if entry.get("options") is not None:
                raise ValueError(f"options: only a known raw format ({', '.join(format_names())}) takes options; "
                                 f"format {name!r} is read by the keys of 'source'")
            return entry
        given = entry.get("options")
        if not isinstance(given, known.options):
            try:
                entry["options"] = known.options.model_validate({} if given is None else given)
            except ValidationError as exc:
                raise ValueError(error_line(exc, prefix="options", cls=known.options)) from None
        return entry


def _feature_entry(value: Any) -> Any:
    """A sparse/dense list entry: a column name (or glob pattern), or a mapping; the column defaults to
    the name, a name with ``*?[`` is a pattern."""
    entry = {"name": value} if isinstance(value, str | int) and not isinstance(value, bool) else value
    if not isinstance(entry, Mapping):
        return entry
    entry = dict(entry)
    if "name" in entry:
        entry["name"] = str(entry["name"])
        if any(ch in entry["name"] for ch in GLOB):
            if "pattern" in entry or "column" in entry:
                raise ValueError("a pattern entry takes no 'column'")
            entry["pattern"] = entry.pop("name")
    if "pattern" in entry:
        if "column" in entry:
            raise ValueError("a pattern entry takes no 'name'/'column'")
        entry.setdefault("name", "")
        entry.setdefault("column", "")
    elif "name" not in entry:
        raise ValueError("missing required key 'name' (or 'pattern')")
    else:
        entry.setdefault("column", entry["name"])
    return entry


class FeatureEntry(Section):
    """What sparse and dense entries share: one raw column, or a glob ``pattern`` over the columns left
    without a role (expanded by :meth:`DatasetConfig.resolve`; ``name`` and ``column`` are then empty)."""

    name: str
    column: str
    pattern: str | None = Field(default=None, exclude=True)

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        return _feature_entry(value)

    def on_column(self, column: str) -> Self:
        """This pattern's options on one matching column."""
        return self.model_copy(update={"name": column, "column": column, "pattern": None})


class SparseConfig(FeatureEntry):
    """A categorical feature read from one raw column; ``table`` shares an embedding table (and its
    vocabulary) with features naming the same table."""

    table: str = ""
    min_count: Count | None = None

    @property
    def table_name(self) -> str:
        return self.table or self.name


def _float32(value: float) -> float:
    if abs(value) > FLOAT32_MAX:
        raise ValueError(f"must be within float32's range (|value| <= {FLOAT32_MAX:.3g}), got {value:g}")
    return value


class DenseConfig(FeatureEntry):
    """A numeric feature: optional signed log1p, then standardisation with train mean/std; missing
    values become ``fill`` (after the transform, so a float32 value; 0 = the train mean when standardised)."""

    log1p: bool = False
    standardize: bool = True
    fill: Annotated[float, AfterValidator(_float32)] = 0.0


class SequenceConfig(NamedSection):
    """A behaviour history: one column of separated tokens, or several columns (one per position; a
    header name repeated W times names such a group). ``column`` is a shorthand for one column."""

    name: str
    columns: Strings
    max_len: Count
    behaviour: str = ""
    table: str = ""
    target: str = ""
    separator: NonEmpty | None = None
    pad_values: Strings = ()
    keep: Literal["first", "last"] = "first"
    min_count: Count | None = None

    @classmethod
    def defaults(cls, entry: dict[str, Any]) -> dict[str, Any]:
        if "column" in entry:
            if "columns" in entry:
                raise ValueError("give 'column' or 'columns', not both")
            entry["columns"] = entry.pop("column")
        entry.setdefault("columns", entry["name"])
        entry.setdefault("behaviour", entry["name"])
        return entry

    @property
    def table_name(self) -> str:
        return self.table or self.name


class LabelConfig(Section):
    """A task's label: a 0/1 column, or 1 where the column's value is one of ``positive`` (and 0 where it
    is one of ``negative``, if given; any other value is then an error)."""

    column: str
    positive: Strings = ()
    negative: Strings = ()

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.negative and not self.positive:
            raise ValueError("'negative' needs 'positive'")
        overlap = set(self.positive) & set(self.negative)
        if overlap:
            raise ValueError(f"values {sorted(overlap)} are both positive and negative")
        return self


class TaskConfig(NamedSection):
    """A task: its label, the task it is observed after, and its type. A ``regression`` task's label is a
    numeric column (``log1p``: learned as ``log(1 + value)``, predicted in the label's units), its
    ``loss`` ``mse``, ``huber`` or ``ziln``; a ``binary`` task's is 0/1 (see :class:`LabelConfig`).
    ``label`` defaults to the column named like the task; a string names the column."""

    name: str
    label: LabelConfig
    observed_after: str | None = None
    type: Literal["binary", "regression"] = "binary"
    loss: str = ""
    log1p: bool = False

    @classmethod
    def defaults(cls, entry: dict[str, Any]) -> dict[str, Any]:
        label = entry.get("label", entry["name"])
        entry["label"] = {"column": label} if isinstance(label, str) else label
        return entry

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.loss and self.loss not in TASK_LOSSES[self.type]:
            raise ValueError(f"a {self.type} task's loss is one of {list(TASK_LOSSES[self.type])}, "
                             f"got {self.loss!r}")
        if self.log1p and self.type != "regression":
            raise ValueError("log1p is only for a regression task")
        if self.log1p and self.loss == "ziln":
            raise ValueError("loss ziln models the logarithm of the value itself; drop log1p")
        if self.type == "regression" and self.label.positive:
            raise ValueError("a regression task's label is a numeric column, not positive values")
        return self


def _bound(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError(f"a range bound is a number or a string (quote dates), got {value!r}")
    return value


Bound = Annotated[int | float | str | None, BeforeValidator(_bound)]


class Range(Section):
    """``[from, to)`` of a column's values; an open end is ``null`` or absent."""

    lower: Bound = Field(default=None, alias="from")
    upper: Bound = Field(default=None, alias="to")


class FilePart(Section):
    """A part of one file's rows, as a ``files`` split names it instead of a whole file: with the file's
    ``n`` rows permuted by ``numpy.random.default_rng(seed).permutation(n)``, the rows
    ``perm[int(part[0] n) : int(part[1] n)]``."""

    file: str
    seed: NonNegative = 0
    part: tuple[float, float]

    @model_validator(mode="before")
    @classmethod
    def _pair(cls, value: Any) -> Any:
        if isinstance(value, Mapping) and isinstance(value.get("part"), list) and len(value["part"]) == 2:
            return {**value, "part": tuple(value["part"])}  # YAML gives a list; strict mode takes a tuple
        return value

    @model_validator(mode="after")
    def _check_part(self) -> Self:
        if not 0.0 <= self.part[0] < self.part[1] <= 1.0:
            raise ValueError(f"part: expected [from, to] with 0 <= from < to <= 1, got {list(self.part)}")
        return self


_SPLIT_KEYS = {"random": ("kind", "seed", "fractions"), "permutation": ("kind", "seed", "fractions"),
               "column": ("kind", "column", "train", "valid", "test"),
               "files": ("kind", "train", "valid", "test", "valid_fraction", "seed")}


class SplitConfig(Section):
    """How rows are divided into train / valid / test.

    random:      each row independently with probabilities ``fractions`` (seeded; chunk-independent)
    permutation: ``default_rng(seed).permutation(n)``; its first ``int(f0 n)`` rows train, the next
                 ``int(f1 n)`` valid, the rest test (the BENCHMARKS.md protocol)
    column:      by ranges ``[from, to)`` of one column's values (dates, days); rows in no range dropped
    files:       given files per split; without a valid file, ``valid_fraction`` of train rows (seeded);
                 a split may take a part of a file (:class:`FilePart`, in ``parts``) instead, so that
                 one file is divided between splits (the Census standard protocol halves its test file)

    In the YAML the ranges (``column``) or files (``files``) are given under ``train``/``valid``/``test``.
    """

    kind: Literal["random", "permutation", "column", "files"]
    seed: NonNegative = 0
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
    column: str = ""
    ranges: dict[str, tuple[Any, Any]] = Field(default_factory=dict)
    files: dict[str, tuple[str, ...]] = Field(default_factory=dict)
    valid_fraction: Annotated[float, Field(gt=0, lt=1)] = 0.1
    parts: dict[str, FilePart] = Field(default_factory=dict)

    def file_parts(self, file: str) -> tuple[int, tuple[tuple[str, float, float], ...]]:
        """``(seed, ((split, from, to), ...))`` of the splits that take a part of ``file``."""
        named = [(split, p) for split, p in self.parts.items() if p.file == file]
        return named[0][1].seed, tuple((split, p.part[0], p.part[1]) for split, p in named)

    @model_validator(mode="before")
    @classmethod
    def _by_split(cls, value: Any) -> Any:
        """Check the keys the kind takes; move ``train``/``valid``/``test`` to ``ranges`` or ``files`` (and
        ``parts``); the values are checked by the fields and :meth:`_consistent`."""
        if not isinstance(value, Mapping) or value.get("kind") not in _SPLIT_KEYS:
            return value
        entry, kind = dict(value), value["kind"]
        allowed = _SPLIT_KEYS[kind]
        for key in entry:
            if key not in allowed:
                raise ValueError(f"a {kind} split takes no key {key!r}{_suggest(str(key), allowed)}; "
                                 f"allowed: {list(allowed)}")
        required = ("column", *SPLITS) if kind == "column" else ("train", "test") if kind == "files" else ()
        missing = [key for key in required if key not in entry]
        if missing:
            hint = {"column": " (a range {from, to})", "files": " (its file or files, or {file, seed, part})"}
            raise ValueError(f"missing required key {missing[0]!r}" + (hint[kind] if missing[0] in SPLITS else ""))
        if kind == "column":
            ranges = {split: Range.model_validate(entry.pop(split) or {}) for split in SPLITS}
            entry["ranges"] = {split: (r.lower, r.upper) for split, r in ranges.items()}
        if kind == "files":
            given = {split: entry.pop(split) for split in SPLITS if split in entry}
            entry["parts"] = {split: _file_part(g, split) for split, g in given.items() if isinstance(g, Mapping)}
            entry["files"] = {split: (entry["parts"][split].file,) if split in entry["parts"] else _strings(g)
                              for split, g in given.items()}
        return entry

    @field_validator("fractions", mode="before")
    @classmethod
    def _three_fractions(cls, value: Any) -> Any:
        numbers = isinstance(value, list | tuple) and all(
            isinstance(f, int | float) and not isinstance(f, bool) and f > 0 for f in value)
        if not numbers or len(value) != 3 or not math.isclose(sum(value), 1.0, abs_tol=1e-9):
            raise ValueError(f"fractions: expected three positive numbers [train, valid, test] summing to "
                             f"1, got {value!r}")
        return tuple(float(f) for f in value)

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        _check_ranges(self.ranges)
        _check_parts(self.parts, self.files)
        return self


def _file_part(value: Mapping[str, Any], split: str) -> FilePart:
    try:
        return FilePart.model_validate(value)
    except ValidationError as exc:
        raise ValueError(error_line(exc, prefix=split, cls=FilePart)) from None


def _check_parts(parts: dict[str, FilePart], files: dict[str, tuple[str, ...]]) -> None:
    """Parts of one file share its seed and do not overlap; a divided file is named by parts only."""
    items = list(parts.items())
    for i, (split, p) in enumerate(items):
        for other, q in items[i + 1:]:
            if q.file != p.file:
                continue
            if q.seed != p.seed:
                raise ValueError(f"{other}.seed: parts of {p.file!r} must share one seed (one permutation of "
                                 f"its rows); {split!r} has {p.seed}, {other!r} {q.seed}")
            if p.part[0] < q.part[1] and q.part[0] < p.part[1]:
                raise ValueError(f"parts of {p.file!r} for {split!r} {list(p.part)} and {other!r} "
                                 f"{list(q.part)} overlap (parts are [from, to))")
        whole = [s for s, names in files.items() if s not in parts and p.file in names]
        if whole:
            raise ValueError(f"{whole[0]}: {p.file!r} is named whole here but divided into parts for "
                             f"{split!r}: a row would fall in two splits")


def _check_ranges(ranges: dict[str, tuple[Any, Any]]) -> None:
    """Bounds are all numbers or all strings, each range non-empty, and no two ranges overlap."""
    bounds = [b for r in ranges.values() for b in r if b is not None]
    numeric = [isinstance(b, int | float) for b in bounds]
    if bounds and not (all(numeric) or all(isinstance(b, str) for b in bounds)):
        raise ValueError(f"range bounds must be all numbers or all strings (quote dates), got {bounds}")
    for split, (lo, hi) in ranges.items():
        if lo is not None and hi is not None and not lo < hi:
            raise ValueError(f"{split}: empty range: from {lo!r} is not below to {hi!r}")
    items = list(ranges.items())
    for i, (a, (alo, ahi)) in enumerate(items):
        for b, (blo, bhi) in items[i + 1:]:
            lo_ok = alo is None or bhi is None or alo < bhi
            hi_ok = blo is None or ahi is None or blo < ahi
            if lo_ok and hi_ok:
                raise ValueError(f"ranges of {a!r} and {b!r} overlap (ranges are [from, to))")


class FeaturesFile(Section):
    """The ``features`` section as written (or expanded, :meth:`DatasetConfig.resolve`): names unique, a
    sequence's target a sparse feature, features sharing a table agreeing on its ``min_count``."""

    sparse: list[SparseConfig] = Field(default_factory=list)
    dense: list[DenseConfig] = Field(default_factory=list)
    sequences: list[SequenceConfig] = Field(default_factory=list)

    @property
    def sparse_names(self) -> set[str]:
        return {f.name for f in self.sparse if f.pattern is None}

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        named = [f for f in (*self.sparse, *self.dense) if f.pattern is None]
        names = [f.name for f in named] + [s.name for s in self.sequences]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"feature names must be unique; repeated: {repeated}")
        for s in self.sequences:
            if s.target and s.target not in self.sparse_names:
                raise ValueError(f"sequence {s.name!r}: target {s.target!r} is not a sparse feature"
                                 f"{_suggest(s.target, self.sparse_names)}")
        embedded: list[SparseConfig | SequenceConfig] = [*(f for f in self.sparse if f.pattern is None),
                                                         *self.sequences]
        for table in {f.table_name for f in embedded}:
            counts = {f.min_count for f in embedded if f.table_name == table and f.min_count is not None}
            if len(counts) > 1:
                raise ValueError(f"features sharing table {table!r} give different min_count {sorted(counts)}")
        return self


class DatasetFile(Section):
    """A dataset config file as written (validated; :func:`parse_dataset_config` builds the
    :class:`DatasetConfig` from it)."""

    name: str | None = None
    source: SourceConfig
    features: FeaturesFile = Field(default_factory=FeaturesFile)
    tasks: Annotated[list[TaskConfig], Field(min_length=1)]
    split: SplitConfig
    user_id: str | None = None
    scenario: str | None = None
    ignore: Strings = ()
    min_count: Count = 1

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        features = self.features
        if not (features.sparse or features.dense or features.sequences):
            raise ValueError("'features' lists no sparse, dense or sequence feature")
        if self.user_id is not None and self.user_id not in features.sparse_names:
            raise ValueError(f"user_id: user_id {self.user_id!r} must name a sparse feature"
                             f"{_suggest(self.user_id, features.sparse_names)}")
        if self.scenario is not None and self.scenario not in features.sparse_names:
            raise ValueError(f"scenario: scenario {self.scenario!r} must name a sparse feature (its values are "
                             f"the scenarios){_suggest(self.scenario, features.sparse_names)}")
        names = [t.name for t in self.tasks]
        if len(set(names)) != len(names):
            raise ValueError(f"tasks: task names must be unique; got {names}")
        for i, t in enumerate(self.tasks):
            if t.observed_after is not None and t.observed_after not in names[:i]:
                raise ValueError(f"tasks[{i}].observed_after: task {t.name!r}: observed_after "
                                 f"{t.observed_after!r} must name an earlier task (tasks in order: {names})")
        return self


@dataclass(frozen=True)
class DatasetConfig:
    """A whole dataset config (see ``docs/datasets.md``)."""

    name: str
    source: SourceConfig
    tasks: tuple[TaskConfig, ...]
    split: SplitConfig
    sparse: tuple[SparseConfig, ...] = ()
    dense: tuple[DenseConfig, ...] = ()
    sequences: tuple[SequenceConfig, ...] = ()
    user_id: str | None = None
    ignore: tuple[str, ...] = ()
    min_count: int = 1
    scenario: str | None = None
    patterns: dict[str, tuple[SparseConfig | DenseConfig, ...]] = field(default_factory=dict)
    origin: str = "dataset config"
    raw: dict[str, Any] = field(default_factory=dict, compare=False)

    # ---- derived --------------------------------------------------------------------------------
    @property
    def feature_names(self) -> list[str]:
        return [f.name for f in self.single_column] + [s.name for s in self.sequences]

    @property
    def single_column(self) -> list[SparseConfig | DenseConfig]:
        """Sparse then dense features (one raw column each)."""
        return [*self.sparse, *self.dense]

    @property
    def embedded(self) -> list[SparseConfig | SequenceConfig]:
        """Features that index an embedding table: sparse then sequences."""
        return [*self.sparse, *self.sequences]

    def label_columns(self) -> dict[str, str]:
        """Raw column -> the task it labels."""
        return {t.label.column: t.name for t in self.tasks}

    def used_columns(self) -> set[str]:
        """Raw column names (or repeated-name groups) this config reads."""
        used = {f.column for f in self.single_column}
        for s in self.sequences:
            used.update(s.columns)
        used.update(t.label.column for t in self.tasks)
        if self.split.kind == "column":
            used.add(self.split.column)
        return used

    def table_min_count(self, table: str) -> int:
        """The min_count of a table's vocabulary (features sharing a table must agree)."""
        values = {f.min_count for f in self.embedded
                  if f.table_name == table and f.min_count is not None}
        return values.pop() if values else self.min_count

    # ---- resolution against the raw columns -----------------------------------------------------
    def resolve(self, columns: list[str], groups: Mapping[str, Sequence[str]], where: str) -> DatasetConfig:
        """Expand glob patterns over the raw ``columns`` and check every name against them.

        ``columns`` are the raw column names in file order, a repeated header name appearing once;
        ``groups`` maps each repeated name to its position columns. Raises DatasetConfigError naming an
        unknown column (with the closest match) or a raw column that has no role."""
        expanded = self
        available = list(columns)
        taken = self.used_columns() | set(self.ignore)  # a pattern matches only columns without a role
        extra: dict[str, list[Any]] = {"sparse": [], "dense": []}
        for kind, entries in self.patterns.items():
            for entry in entries:
                matches = [c for c in available if fnmatch.fnmatchcase(c, str(entry.pattern))
                           and c not in taken and c not in groups]
                if not matches:
                    raise DatasetConfigError(f"{self.origin}: features.{kind} pattern {entry.pattern!r} "
                                             f"matches no column of {where} (columns: {available})")
                for c in matches:
                    taken.add(c)
                    extra[kind].append(entry.on_column(c))
        if extra["sparse"] or extra["dense"]:
            expanded = replace(self, sparse=(*self.sparse, *extra["sparse"]),
                               dense=(*self.dense, *extra["dense"]), patterns={})
            validate(FeaturesFile, {"sparse": list(expanded.sparse), "dense": list(expanded.dense),
                                    "sequences": list(expanded.sequences)}, self.origin, DatasetConfigError,
                     prefix="features")
        known = set(available)
        for name in sorted(expanded.used_columns() | set(expanded.ignore)):
            if name not in known:
                raise DatasetConfigError(f"{self.origin}: unknown column {name!r} in {where}"
                                         f"{_suggest(name, available)}; its columns: {available}")
        for s in expanded.sequences:
            if len(s.columns) == 1 and s.columns[0] not in groups and s.separator is None:
                raise DatasetConfigError(
                    f"{self.origin}: sequence {s.name!r} reads the single column {s.columns[0]!r}: give its "
                    f"token 'separator', or name a repeated header (one column per position) or a list")
        for f in expanded.single_column:
            if f.column in groups:
                raise DatasetConfigError(f"{self.origin}: feature {f.name!r}: column {f.column!r} appears "
                                         f"{len(groups[f.column])} times in {where}; only a sequence can "
                                         f"read a repeated column")
        both = sorted(expanded.used_columns() & set(expanded.ignore))
        if both:
            raise DatasetConfigError(f"{self.origin}: column(s) {both} are listed under 'ignore:' but also used")
        features = {f.column: f.name for f in expanded.single_column}
        for s in expanded.sequences:
            features.update({c: s.name for c in s.columns})
        for column, task in expanded.label_columns().items():
            if column in features:
                raise DatasetConfigError(f"{self.origin}: column {column!r} is the label of task {task!r} "
                                         f"and also feature {features[column]!r}: that leaks the label")
        unused = [c for c in available if c not in expanded.used_columns() and c not in expanded.ignore]
        if unused:
            raise DatasetConfigError(f"{self.origin}: column(s) {unused} of {where} have no role: list them "
                                     f"under 'ignore:' or as features")
        return expanded


def parse_dataset_config(data: Any, origin: str = "dataset config") -> DatasetConfig:
    """Validate a config mapping (as read from YAML) into a DatasetConfig."""
    parsed = validate(DatasetFile, data, origin, DatasetConfigError)
    features = parsed.features
    patterns = {kind: tuple(e for e in entries if e.pattern is not None)
                for kind, entries in (("sparse", features.sparse), ("dense", features.dense))}
    return DatasetConfig(
        name=parsed.name or Path(origin).stem,
        source=parsed.source,
        tasks=tuple(parsed.tasks),
        split=parsed.split,
        sparse=tuple(f for f in features.sparse if f.pattern is None),
        dense=tuple(f for f in features.dense if f.pattern is None),
        sequences=tuple(features.sequences),
        user_id=parsed.user_id,
        scenario=parsed.scenario,
        ignore=parsed.ignore,
        min_count=parsed.min_count,
        patterns={kind: entries for kind, entries in patterns.items() if entries},
        origin=origin,
        raw=dict(data),
    )


def load_dataset_config(path: str | Path) -> DatasetConfig:
    """Read and validate a dataset config file (YAML)."""
    data = read_mapping(path, "dataset config", DatasetConfigError)
    return parse_dataset_config(data, origin=str(path))
