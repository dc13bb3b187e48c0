"""Dataset configs: a YAML file that says how raw CSV/Parquet columns become a prepared dataset.

The format is documented with a complete example in ``docs/datasets.md``. :func:`load_dataset_config`
parses and validates a file into frozen dataclasses (errors name the file and the key); what needs the
raw columns (unknown names, columns without a role, glob patterns) is checked by :meth:`DatasetConfig.resolve`
once the reader has seen the header.
"""

from __future__ import annotations

import difflib
import fnmatch
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from pydantic import model_validator

from mtrec.data.dataset import SPLITS, DatasetError
from mtrec.data.userbehavior import UserBehaviorOptions
from mtrec.features.schema import TASK_LOSSES
from mtrec.io import read_mapping
from mtrec.typed import ConfigModel, validate

SPLIT_KINDS = ("random", "permutation", "column", "files")
FORMATS = ("auto", "csv", "parquet", "userbehavior")


class DatasetConfigError(DatasetError):
    """A dataset config that cannot be used; the message names the file and the key."""


# ---- small parsing helpers ---------------------------------------------------------------------------
def _suggest(name: str, options: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(options), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _mapping(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise DatasetConfigError(f"{where}: expected a mapping, got {type(value).__name__} {value!r}")
    return dict(value)


def _check_keys(data: Mapping[str, Any], where: str, allowed: Iterable[str], required: Iterable[str] = ()
                ) -> None:
    allowed = set(allowed)
    for key in data:
        if key not in allowed:
            raise DatasetConfigError(f"{where}: unknown key {key!r}{_suggest(str(key), allowed)}; "
                                     f"allowed: {sorted(allowed)}")
    for key in required:
        if key not in data:
            raise DatasetConfigError(f"{where}: missing required key {key!r}")


def _str_list(value: Any, where: str) -> tuple[str, ...]:
    """A string or a list of scalars -> tuple of strings."""
    if value is None:
        return ()
    if isinstance(value, str | int | float) and not isinstance(value, bool):
        return (str(value),)
    if isinstance(value, list | tuple) and all(isinstance(v, str | int | float) for v in value):
        return tuple(str(v) for v in value)
    raise DatasetConfigError(f"{where}: expected a string or a list of strings, got {value!r}")


def _typed(value: Any, kind: type | tuple[type, ...], where: str) -> Any:
    if isinstance(value, bool) and kind in (int, float, (int, float)):
        raise DatasetConfigError(f"{where}: expected a number, got {value!r}")
    if not isinstance(value, kind):
        name = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise DatasetConfigError(f"{where}: expected {name}, got {value!r}")
    return value


# ---- the config dataclasses ----------------------------------------------------------------------------
@dataclass(frozen=True)
class SourceConfig:
    """Where the raw rows are and how to read them.

    ``path`` lists files, directories (every file inside, sorted) or glob patterns; relative paths are
    taken from the current directory. For ``split: {kind: files}`` it is the directory the split files
    are in.
    """

    path: tuple[str, ...] = ()
    format: str = "auto"  # auto | csv | parquet | userbehavior (the Taobao UserBehavior event log)
    separator: str = ","
    header: bool = True
    columns: tuple[str, ...] = ()
    quote: str | None = '"'
    strip: bool = False
    missing_values: tuple[str, ...] = ()
    chunk_rows: int = 262_144
    options: dict[str, Any] = field(default_factory=dict)  # a known log format's reader options


@dataclass(frozen=True)
class SparseConfig:
    """A categorical feature read from one raw column; ``table`` shares an embedding table (and its
    vocabulary) with features naming the same table."""

    name: str
    column: str
    table: str = ""
    min_count: int | None = None

    @property
    def table_name(self) -> str:
        return self.table or self.name


@dataclass(frozen=True)
class DenseConfig:
    """A numeric feature: optional signed log1p, then standardisation with train mean/std; missing
    values become ``fill`` (after the transform; 0 = the train mean when standardised)."""

    name: str
    column: str
    log1p: bool = False
    standardize: bool = True
    fill: float = 0.0


@dataclass(frozen=True)
class SequenceConfig:
    """A behaviour history: one column of separated tokens, or several columns (one per position; a
    header name repeated W times names such a group)."""

    name: str
    columns: tuple[str, ...]
    max_len: int
    behaviour: str = ""
    table: str = ""
    target: str = ""
    separator: str | None = None
    pad_values: tuple[str, ...] = ()
    keep: str = "first"
    min_count: int | None = None

    @property
    def table_name(self) -> str:
        return self.table or self.name


@dataclass(frozen=True)
class LabelConfig:
    """A task's label: a 0/1 column, or 1 where the column's value is one of ``positive`` (and 0 where it
    is one of ``negative``, if given; any other value is then an error)."""

    column: str
    positive: tuple[str, ...] = ()
    negative: tuple[str, ...] = ()


@dataclass(frozen=True)
class TaskConfig:
    """A task: its label, the task it is observed after, and its type. A ``regression`` task's label is a
    numeric column (``log1p``: learned and predicted as ``log(1 + value)``), its ``loss`` ``mse`` or
    ``huber``; a ``binary`` task's is 0/1 (see :class:`LabelConfig`)."""

    name: str
    label: LabelConfig
    observed_after: str | None = None
    type: str = "binary"
    loss: str = ""
    log1p: bool = False


class FilePart(ConfigModel):
    """A part of one file's rows, as a ``files`` split names it instead of a whole file: with the file's
    ``n`` rows permuted by ``numpy.random.default_rng(seed).permutation(n)``, the rows
    ``perm[int(part[0] n) : int(part[1] n)]``."""

    file: str
    seed: int = 0
    part: list[float]

    @model_validator(mode="after")
    def _check_part(self) -> FilePart:
        if len(self.part) != 2 or not 0.0 <= self.part[0] < self.part[1] <= 1.0:
            raise ValueError(f"part: expected [from, to] with 0 <= from < to <= 1, got {self.part}")
        return self


@dataclass(frozen=True)
class SplitConfig:
    """How rows are divided into train / valid / test.

    random:      each row independently with probabilities ``fractions`` (seeded; chunk-independent)
    permutation: ``default_rng(seed).permutation(n)``; its first ``int(f0 n)`` rows train, the next
                 ``int(f1 n)`` valid, the rest test (the BENCHMARKS.md protocol)
    column:      by ranges ``[from, to)`` of one column's values (dates, days); rows in no range dropped
    files:       given files per split; without a valid file, ``valid_fraction`` of train rows (seeded);
                 a split may take a part of a file (:class:`FilePart`, in ``parts``) instead, so that
                 one file is divided between splits (the Census standard protocol halves its test file)
    """

    kind: str
    seed: int = 0
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
    column: str = ""
    ranges: dict[str, tuple[Any, Any]] = field(default_factory=dict)
    files: dict[str, tuple[str, ...]] = field(default_factory=dict)
    valid_fraction: float = 0.1
    parts: dict[str, FilePart] = field(default_factory=dict)

    def file_parts(self, file: str) -> tuple[int, tuple[tuple[str, float, float], ...]]:
        """``(seed, ((split, from, to), ...))`` of the splits that take a part of ``file``."""
        named = [(split, p) for split, p in self.parts.items() if p.file == file]
        return named[0][1].seed, tuple((split, p.part[0], p.part[1]) for split, p in named)


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
    patterns: dict[str, tuple[dict[str, Any], ...]] = field(default_factory=dict)
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
                matches = [c for c in available if fnmatch.fnmatchcase(c, entry["pattern"])
                           and c not in taken and c not in groups]
                if not matches:
                    raise DatasetConfigError(f"{self.origin}: features.{kind} pattern {entry['pattern']!r} "
                                             f"matches no column of {where} (columns: {available})")
                options = {k: v for k, v in entry.items() if k != "pattern"}
                for c in matches:
                    taken.add(c)
                    extra[kind].append(SparseConfig(c, c, **options) if kind == "sparse"
                                       else DenseConfig(c, c, **options))
        if extra["sparse"] or extra["dense"]:
            expanded = replace(self, sparse=(*self.sparse, *extra["sparse"]),
                               dense=(*self.dense, *extra["dense"]), patterns={})
            _check_features(expanded)
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


# ---- parsing -------------------------------------------------------------------------------------------
def _parse_source(data: Any, where: str, origin: str) -> SourceConfig:
    d = _mapping(data, where)
    _check_keys(d, where, [f for f in SourceConfig.__dataclass_fields__])
    fmt = str(d.get("format", "auto"))
    if fmt not in FORMATS:
        raise DatasetConfigError(f"{where}.format: {fmt!r} is not one of {list(FORMATS)}")
    separator = str(d.get("separator", ","))
    if len(separator) != 1:
        raise DatasetConfigError(f"{where}.separator: must be one character, got {separator!r} "
                                 f"(for ', ' use ',' with 'strip: true')")
    quote = d.get("quote", '"')
    if quote is not None and (not isinstance(quote, str) or len(quote) != 1):
        raise DatasetConfigError(f"{where}.quote: must be one character or null, got {quote!r}")
    chunk_rows = _typed(d.get("chunk_rows", SourceConfig.chunk_rows), int, f"{where}.chunk_rows")
    if chunk_rows < 1:
        raise DatasetConfigError(f"{where}.chunk_rows: must be >= 1, got {chunk_rows}")
    columns = _str_list(d.get("columns"), f"{where}.columns")
    options = _mapping(d.get("options"), f"{where}.options")
    if fmt == "userbehavior":
        validate(UserBehaviorOptions, options, origin, DatasetConfigError, prefix="source.options")
    elif options:
        raise DatasetConfigError(f"{where}.options: only a known log format (format: userbehavior) takes "
                                 f"options; format {fmt!r} is read by the keys of 'source'")
    return SourceConfig(
        path=_str_list(d.get("path"), f"{where}.path"),
        format=fmt,
        separator=separator,
        header=bool(_typed(d.get("header", True), bool, f"{where}.header")),
        columns=columns,
        quote=quote,
        strip=bool(_typed(d.get("strip", False), bool, f"{where}.strip")),
        missing_values=_str_list(d.get("missing_values"), f"{where}.missing_values"),
        chunk_rows=chunk_rows,
        options=options,
    )


def _min_count(d: Mapping[str, Any], where: str) -> int | None:
    if d.get("min_count") is None:
        return None
    value = _typed(d["min_count"], int, f"{where}.min_count")
    if value < 1:
        raise DatasetConfigError(f"{where}.min_count: must be >= 1, got {value}")
    return int(value)


_SPARSE_KEYS = ("name", "column", "table", "min_count")
_DENSE_KEYS = ("name", "column", "log1p", "standardize", "fill")


def _parse_feature_list(items: Any, kind: str, where: str) -> tuple[list[Any], list[dict[str, Any]]]:
    """Sparse or dense entries: a column name, a glob pattern, or a mapping. Returns (features, patterns)."""
    if items is None:
        return [], []
    if not isinstance(items, list):
        raise DatasetConfigError(f"{where}: expected a list, got {type(items).__name__}")
    keys = _SPARSE_KEYS if kind == "sparse" else _DENSE_KEYS
    features: list[Any] = []
    patterns: list[dict[str, Any]] = []
    for i, item in enumerate(items):
        at = f"{where}[{i}]"
        entry: dict[str, Any] = {"name": item} if isinstance(item, str | int) else _mapping(item, at)
        _check_keys(entry, at, (*keys, "pattern"))
        name = entry.get("name")
        if isinstance(name, str) and any(ch in name for ch in "*?["):
            entry = {"pattern": name, **{k: v for k, v in entry.items() if k != "name"}}
        options: dict[str, Any] = {}
        if kind == "sparse":
            if "table" in entry:
                options["table"] = str(entry["table"])
            options["min_count"] = _min_count(entry, at)
        else:
            options["log1p"] = bool(_typed(entry.get("log1p", False), bool, f"{at}.log1p"))
            options["standardize"] = bool(_typed(entry.get("standardize", True), bool, f"{at}.standardize"))
            options["fill"] = float(_typed(entry.get("fill", 0.0), (int, float), f"{at}.fill"))
        if "pattern" in entry:
            if "name" in entry or "column" in entry:
                raise DatasetConfigError(f"{at}: a pattern entry takes no 'name'/'column'")
            patterns.append({"pattern": str(entry["pattern"]), **options})
            continue
        if "name" not in entry:
            raise DatasetConfigError(f"{at}: missing required key 'name' (or 'pattern')")
        name = str(entry["name"])
        column = str(entry.get("column", name))
        features.append(SparseConfig(name, column, **options) if kind == "sparse"
                        else DenseConfig(name, column, **options))
    return features, patterns


def _parse_sequences(items: Any, where: str) -> list[SequenceConfig]:
    if items is None:
        return []
    if not isinstance(items, list):
        raise DatasetConfigError(f"{where}: expected a list, got {type(items).__name__}")
    result = []
    for i, item in enumerate(items):
        at = f"{where}[{i}]"
        d = _mapping(item, at)
        _check_keys(d, at, ("name", "column", "columns", "max_len", "behaviour", "table", "target",
                            "separator", "pad_values", "keep", "min_count"), required=("name", "max_len"))
        if "column" in d and "columns" in d:
            raise DatasetConfigError(f"{at}: give 'column' or 'columns', not both")
        name = str(d["name"])
        columns = _str_list(d.get("columns", d.get("column", name)), f"{at}.columns")
        max_len = _typed(d["max_len"], int, f"{at}.max_len")
        if max_len < 1:
            raise DatasetConfigError(f"{at}.max_len: must be >= 1, got {max_len}")
        keep = str(d.get("keep", "first"))
        if keep not in ("first", "last"):
            raise DatasetConfigError(f"{at}.keep: must be 'first' or 'last', got {keep!r}")
        separator = d.get("separator")
        if separator is not None and (not isinstance(separator, str) or separator == ""):
            raise DatasetConfigError(f"{at}.separator: must be a non-empty string, got {separator!r}")
        result.append(SequenceConfig(
            name=name, columns=columns, max_len=max_len, behaviour=str(d.get("behaviour", name)),
            table=str(d.get("table", "")), target=str(d.get("target", "")), separator=separator,
            pad_values=_str_list(d.get("pad_values"), f"{at}.pad_values"), keep=keep,
            min_count=_min_count(d, at)))
    return result


def _parse_tasks(items: Any, where: str) -> list[TaskConfig]:
    if not isinstance(items, list) or not items:
        raise DatasetConfigError(f"{where}: expected a non-empty list of tasks")
    tasks = []
    for i, item in enumerate(items):
        at = f"{where}[{i}]"
        d = _mapping(item, at)
        _check_keys(d, at, ("name", "label", "observed_after", "type", "loss", "log1p"), required=("name",))
        name = str(d["name"])
        label = d.get("label", name)
        if isinstance(label, str):
            spec = LabelConfig(label)
        else:
            ld = _mapping(label, f"{at}.label")
            _check_keys(ld, f"{at}.label", ("column", "positive", "negative"), required=("column",))
            spec = LabelConfig(str(ld["column"]), _str_list(ld.get("positive"), f"{at}.label.positive"),
                               _str_list(ld.get("negative"), f"{at}.label.negative"))
            if spec.negative and not spec.positive:
                raise DatasetConfigError(f"{at}.label: 'negative' needs 'positive'")
            overlap = set(spec.positive) & set(spec.negative)
            if overlap:
                raise DatasetConfigError(f"{at}.label: values {sorted(overlap)} are both positive and "
                                         f"negative")
        after = d.get("observed_after")
        kind, loss, log1p = str(d.get("type", "binary")), str(d.get("loss", "")), d.get("log1p", False)
        if kind not in TASK_LOSSES:
            raise DatasetConfigError(f"{at}.type: expected one of {sorted(TASK_LOSSES)}, got {kind!r}")
        if loss and loss not in TASK_LOSSES[kind]:
            raise DatasetConfigError(f"{at}.loss: a {kind} task's loss is one of {list(TASK_LOSSES[kind])}, "
                                     f"got {loss!r}")
        if not isinstance(log1p, bool) or (log1p and kind != "regression"):
            raise DatasetConfigError(f"{at}.log1p: true or false, and only for a regression task")
        if kind == "regression" and spec.positive:
            raise DatasetConfigError(f"{at}.label: a regression task's label is a numeric column, not positive "
                                     "values")
        tasks.append(TaskConfig(name, spec, None if after is None else str(after), kind, loss, log1p))
    return tasks


def _parse_split(data: Any, where: str, origin: str) -> SplitConfig:
    d = _mapping(data, where)
    if "kind" not in d:
        raise DatasetConfigError(f"{where}: missing required key 'kind' (one of {list(SPLIT_KINDS)})")
    kind = str(d["kind"])
    if kind not in SPLIT_KINDS:
        raise DatasetConfigError(f"{where}.kind: {kind!r} is not one of {list(SPLIT_KINDS)}"
                                 f"{_suggest(kind, SPLIT_KINDS)}")
    allowed = {"random": ("kind", "seed", "fractions"), "permutation": ("kind", "seed", "fractions"),
               "column": ("kind", "column", "train", "valid", "test"),
               "files": ("kind", "train", "valid", "test", "valid_fraction", "seed")}[kind]
    _check_keys(d, where, allowed)
    seed = int(_typed(d.get("seed", 0), int, f"{where}.seed"))
    if kind in ("random", "permutation"):
        fractions = d.get("fractions", [0.8, 0.1, 0.1])
        numbers = isinstance(fractions, list) and all(
            isinstance(f, int | float) and not isinstance(f, bool) and f > 0 for f in fractions)
        if not numbers or len(fractions) != 3 or not math.isclose(sum(fractions), 1.0, abs_tol=1e-9):
            raise DatasetConfigError(f"{where}.fractions: expected three positive numbers [train, valid, "
                                     f"test] summing to 1, got {fractions!r}")
        return SplitConfig(kind, seed=seed, fractions=(float(fractions[0]), float(fractions[1]),
                                                       float(fractions[2])))
    if kind == "column":
        if "column" not in d:
            raise DatasetConfigError(f"{where}: missing required key 'column'")
        ranges: dict[str, tuple[Any, Any]] = {}
        for split in SPLITS:
            r = _mapping(d.get(split), f"{where}.{split}")
            if split not in d:
                raise DatasetConfigError(f"{where}: missing required key {split!r} (a range {{from, to}})")
            _check_keys(r, f"{where}.{split}", ("from", "to"))
            ranges[split] = (r.get("from"), r.get("to"))
        _check_ranges(ranges, where)
        return SplitConfig(kind, column=str(d["column"]), ranges=ranges)
    files: dict[str, tuple[str, ...]] = {}
    parts: dict[str, FilePart] = {}
    for split in SPLITS:
        if isinstance(d.get(split), Mapping):
            parts[split] = validate(FilePart, d[split], origin, DatasetConfigError, prefix=f"split.{split}")
            files[split] = (parts[split].file,)
        elif split in d:
            files[split] = _str_list(d[split], f"{where}.{split}")
    for split in ("train", "test"):
        if split not in files:
            raise DatasetConfigError(f"{where}: missing required key {split!r} (its file or files, or "
                                     f"{{file, seed, part}})")
    _check_parts(parts, files, where)
    valid_fraction = float(_typed(d.get("valid_fraction", 0.1), (int, float), f"{where}.valid_fraction"))
    if "valid" not in files and not 0 < valid_fraction < 1:
        raise DatasetConfigError(f"{where}.valid_fraction: must be in (0, 1), got {valid_fraction}")
    return SplitConfig(kind, seed=seed, files=files, valid_fraction=valid_fraction, parts=parts)


def _check_parts(parts: dict[str, FilePart], files: dict[str, tuple[str, ...]], where: str) -> None:
    """Parts of one file share its seed and do not overlap; a divided file is named by parts only."""
    items = list(parts.items())
    for i, (split, p) in enumerate(items):
        for other, q in items[i + 1:]:
            if q.file != p.file:
                continue
            if q.seed != p.seed:
                raise DatasetConfigError(f"{where}.{other}.seed: parts of {p.file!r} must share one seed "
                                         f"(one permutation of its rows); {split!r} has {p.seed}, {other!r} "
                                         f"{q.seed}")
            if p.part[0] < q.part[1] and q.part[0] < p.part[1]:
                raise DatasetConfigError(f"{where}: parts of {p.file!r} for {split!r} {p.part} and {other!r} "
                                         f"{q.part} overlap (parts are [from, to))")
        whole = [s for s, names in files.items() if s not in parts and p.file in names]
        if whole:
            raise DatasetConfigError(f"{where}.{whole[0]}: {p.file!r} is named whole here but divided into "
                                     f"parts for {split!r}: a row would fall in two splits")


def _check_ranges(ranges: dict[str, tuple[Any, Any]], where: str) -> None:
    """Bounds are all numbers or all strings, each range non-empty, and no two ranges overlap."""
    bounds = [b for r in ranges.values() for b in r if b is not None]
    numeric = [isinstance(b, int | float) and not isinstance(b, bool) for b in bounds]
    if bounds and not (all(numeric) or all(isinstance(b, str) for b in bounds)):
        raise DatasetConfigError(f"{where}: range bounds must be all numbers or all strings (quote dates), "
                                 f"got {bounds}")
    for split, (lo, hi) in ranges.items():
        if lo is not None and hi is not None and not lo < hi:
            raise DatasetConfigError(f"{where}.{split}: empty range: from {lo!r} is not below to {hi!r}")
    items = list(ranges.items())
    for i, (a, (alo, ahi)) in enumerate(items):
        for b, (blo, bhi) in items[i + 1:]:
            lo_ok = alo is None or bhi is None or alo < bhi
            hi_ok = blo is None or ahi is None or blo < ahi
            if lo_ok and hi_ok:
                raise DatasetConfigError(f"{where}: ranges of {a!r} and {b!r} overlap (ranges are "
                                         f"[from, to))")


def _check_features(config: DatasetConfig) -> None:
    where = config.origin
    names = config.feature_names
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise DatasetConfigError(f"{where}: feature names must be unique; repeated: {repeated}")
    sparse_names = {f.name for f in config.sparse}
    for s in config.sequences:
        if s.target and s.target not in sparse_names:
            raise DatasetConfigError(f"{where}: sequence {s.name!r}: target {s.target!r} is not a sparse "
                                     f"feature{_suggest(s.target, sparse_names)}")
    for table in {f.table_name for f in config.embedded}:
        counts = {f.min_count for f in config.embedded
                  if f.table_name == table and f.min_count is not None}
        if len(counts) > 1:
            raise DatasetConfigError(f"{where}: features sharing table {table!r} give different min_count "
                                     f"{sorted(counts)}")
    if config.user_id is not None and config.user_id not in sparse_names:
        raise DatasetConfigError(f"{where}: user_id {config.user_id!r} must name a sparse feature"
                                 f"{_suggest(config.user_id, sparse_names)}")
    task_names = [t.name for t in config.tasks]
    if len(set(task_names)) != len(task_names):
        raise DatasetConfigError(f"{where}: task names must be unique; got {task_names}")
    for i, t in enumerate(config.tasks):
        if t.observed_after is not None and t.observed_after not in task_names[:i]:
            raise DatasetConfigError(f"{where}: task {t.name!r}: observed_after {t.observed_after!r} must "
                                     f"name an earlier task (tasks in order: {task_names})")


def parse_dataset_config(data: Mapping[str, Any], origin: str = "dataset config") -> DatasetConfig:
    """Validate a config mapping (as read from YAML) into a DatasetConfig."""
    data = _mapping(data, origin)
    _check_keys(data, origin, ("name", "source", "features", "tasks", "split", "user_id", "ignore",
                               "min_count"), required=("source", "tasks", "split"))
    features = _mapping(data.get("features"), f"{origin}: features")
    _check_keys(features, f"{origin}: features", ("sparse", "dense", "sequences"))
    at = f"{origin}: features"
    sparse, sparse_patterns = _parse_feature_list(features.get("sparse"), "sparse", f"{at}.sparse")
    dense, dense_patterns = _parse_feature_list(features.get("dense"), "dense", f"{at}.dense")
    sequences = _parse_sequences(features.get("sequences"), f"{origin}: features.sequences")
    if not (sparse or dense or sequences or sparse_patterns or dense_patterns):
        raise DatasetConfigError(f"{origin}: 'features' lists no sparse, dense or sequence feature")
    min_count = int(_typed(data.get("min_count", 1), int, f"{origin}: min_count"))
    if min_count < 1:
        raise DatasetConfigError(f"{origin}: min_count must be >= 1, got {min_count}")
    user_id = data.get("user_id")
    config = DatasetConfig(
        name=str(data.get("name") or Path(origin).stem),
        source=_parse_source(data.get("source"), f"{origin}: source", origin),
        tasks=tuple(_parse_tasks(data.get("tasks"), f"{origin}: tasks")),
        split=_parse_split(data.get("split"), f"{origin}: split", origin),
        sparse=tuple(sparse),
        dense=tuple(dense),
        sequences=tuple(sequences),
        user_id=None if user_id is None else str(user_id),
        ignore=_str_list(data.get("ignore"), f"{origin}: ignore"),
        min_count=min_count,
        patterns={k: tuple(v) for k, v in (("sparse", sparse_patterns), ("dense", dense_patterns)) if v},
        origin=origin,
        raw=dict(data),
    )
    _check_features(config)
    return config


def load_dataset_config(path: str | Path) -> DatasetConfig:
    """Read and validate a dataset config file (YAML)."""
    data = read_mapping(path, "dataset config", DatasetConfigError)
    return parse_dataset_config(data, origin=str(path))
