"""The feature schema: the single source of truth for what a dataset holds and what a model reads.

Frozen dataclasses describe sparse, dense and sequence features and the tasks. Models are built from a
schema and never read data files; the schema is saved beside every prepared dataset and every checkpoint
as JSON (``schema.json``).

Id conventions for every sparse and sequence feature: 0 is padding, 1 is out-of-vocabulary, real values
start at 2; ``vocab_size`` counts all ids including those two.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from mtrec.errors import UserError
from mtrec.io import atomic_write_text, json_text, read_mapping

PADDING_ID = 0
OOV_ID = 1
FIRST_ID = 2  # the first id of a known value
SCHEMA_KEYS = frozenset({"sparse", "dense", "sequences", "tasks", "user_id", "scenario", "metadata"})  # to_dict's keys


class SchemaError(UserError, ValueError):
    """A schema that is inconsistent, or a JSON file that does not describe one."""


@dataclass(frozen=True)
class SparseFeature:
    """A categorical field: one id per row in ``[0, vocab_size)``.

    ``table`` names the embedding table; features with the same ``table`` share it (the target item and
    the items of a behaviour sequence, for example). By default each feature has its own table.
    """

    name: str
    vocab_size: int
    table: str = ""

    @property
    def table_name(self) -> str:
        return self.table or self.name


@dataclass(frozen=True)
class DenseFeature:
    """A numeric field: one float per row, already transformed (standardised, log) at preparation."""

    name: str


@dataclass(frozen=True)
class SequenceFeature:
    """A behaviour history: ``max_len`` ids per row, left-aligned, padded with 0.

    ``behaviour`` names the behaviour type (click, cart, buy...); ``table`` names the embedding table the
    ids index, usually the table of a target-item sparse feature (so histories and candidates share
    embeddings); ``target`` names the sparse feature the history is compared with by target attention.
    """

    name: str
    vocab_size: int
    max_len: int
    behaviour: str
    table: str = ""
    target: str = ""

    @property
    def table_name(self) -> str:
        return self.table or self.name


TASK_TYPES = ("binary", "regression")
TASK_LOSSES = {"binary": ("bce",), "regression": ("mse", "huber", "ziln")}
#: label transforms of a regression task: applied to the label at preparation, inverted on predictions
TASK_TRANSFORMS = ("", "log1p")
#: the model outputs per row of a task learned by this loss (others: 1); ZILN's three are the logit of
#: ``P(value > 0)``, then the mean and the softplus-inverse scale of the positive part's log
LOSS_OUTPUTS = {"ziln": ("p", "mu", "sigma")}


@dataclass(frozen=True)
class TaskSpec:
    """A prediction task: ``binary`` (a 0/1 outcome, learned by BCE, evaluated by AUC) or ``regression``
    (a value, learned by ``mse``, ``huber`` or ``ziln`` loss, evaluated by RMSE, MAE, R², normalized Gini
    and Spearman correlation).

    ``observed_after`` names the binary task whose positive outcome is needed for this one to be observed
    (a conversion is observed only after a click). Its label column then holds the outcome over all
    impressions (1 only where both happened; 0 where a regression task was not observed); the task is
    learned on the rows where the earlier task is positive, unless the objective learns it in the entire
    space. A regression task observed after another is predicted in the entire space: ``p(earlier) *
    E[value | earlier]``, the value per impression. ``loss``: empty for the type's default (``bce``,
    ``mse``). ``transform``: ``log1p`` where the label is learned as ``log(1 + value)``; predictions are
    always given back in the label's own units (``expm1`` of the head's output).
    """

    name: str
    observed_after: str | None = None
    type: str = "binary"
    loss: str = ""
    transform: str = ""

    @property
    def is_binary(self) -> bool:
        return self.type == "binary"

    @property
    def loss_name(self) -> str:
        return self.loss or TASK_LOSSES[self.type][0]

    @property
    def head_names(self) -> tuple[str, ...]:
        """The names of the task's model outputs: the task's own name, then ``<task>:<part>`` for each
        further output its loss needs (``spend``, ``spend:mu``, ``spend:sigma`` for ZILN)."""
        parts = LOSS_OUTPUTS.get(self.loss_name, ("",))
        return (self.name, *(f"{self.name}:{part}" for part in parts[1:]))

    @property
    def output_units(self) -> str:
        """What the task's served output is, for users (OpenAPI, docs, the CLI)."""
        if self.is_binary:
            given = f" given {self.observed_after!r}" if self.observed_after else ""
            return f"probability of {self.name!r}{given}, in [0, 1]"
        per = f"expected per row (p({self.observed_after!r}) times the value given it)" \
            if self.observed_after else "expected value"
        return f"{per} of {self.name!r}, in the label's own units"


@dataclass(frozen=True)
class DatasetSchema:
    """Everything a model needs to know about a dataset.

    ``scenario`` names the sparse feature whose values are the dataset's scenarios (countries, app
    surfaces: the domains of multi-scenario learning), or None. It is an ordinary sparse feature (its
    vocabulary, encoding and embedding are a sparse feature's), which models also receive as
    :attr:`Features.scenario <mtrec.features.inputs.Features.scenario>`; metrics are reported per scenario.
    """

    sparse: tuple[SparseFeature, ...] = ()
    dense: tuple[DenseFeature, ...] = ()
    sequences: tuple[SequenceFeature, ...] = ()
    tasks: tuple[TaskSpec, ...] = ()
    user_id: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)
    scenario: str | None = None

    def __post_init__(self) -> None:
        self.validate()

    # ---- derived views -------------------------------------------------------------------------
    @property
    def task_names(self) -> list[str]:
        return [t.name for t in self.tasks]

    @property
    def feature_names(self) -> list[str]:
        return [f.name for f in self.sparse] + [f.name for f in self.dense] + [f.name for f in self.sequences]

    @property
    def embedded_features(self) -> list[SparseFeature | SequenceFeature]:
        """Features that index an embedding table: sparse then sequence features."""
        return [*self.sparse, *self.sequences]

    @property
    def scenario_column(self) -> int | None:
        """The scenario's column in the sparse block, or None without a scenario."""
        return None if self.scenario is None else [f.name for f in self.sparse].index(self.scenario)

    @property
    def scenario_count(self) -> int:
        """The number of scenario ids (padding and out-of-vocabulary included); 0 without a scenario."""
        column = self.scenario_column
        return 0 if column is None else self.sparse[column].vocab_size

    def task(self, name: str) -> TaskSpec:
        for t in self.tasks:
            if t.name == name:
                return t
        raise KeyError(f"unknown task {name!r}; the schema has {self.task_names}")

    def describe_outputs(self) -> str:
        """Each task's served output, for users: ``click: probability of 'click', in [0, 1]; spend: ...``."""
        return "; ".join(f"{t.name}: {t.output_units}" for t in self.tasks)

    def with_output_heads(self) -> DatasetSchema:
        """The schema a model is built on: every task, then an extra regression task for each further output
        a task's loss needs (``spend:mu`` and ``spend:sigma`` for a ZILN task, see
        :attr:`TaskSpec.head_names`); ``self`` where no task needs one."""
        extra = tuple(TaskSpec(head, type="regression") for t in self.tasks for head in t.head_names[1:])
        return replace(self, tasks=(*self.tasks, *extra)) if extra else self

    def table_sizes(self) -> dict[str, int]:
        """Embedding table name -> number of rows (the largest vocabulary among features using it)."""
        sizes: dict[str, int] = {}
        for f in self.embedded_features:
            sizes[f.table_name] = max(sizes.get(f.table_name, 0), f.vocab_size)
        return sizes

    # ---- checks --------------------------------------------------------------------------------
    def validate(self) -> None:
        names = self.feature_names
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise SchemaError(f"feature names must be unique; repeated: {duplicates}")
        if not self.tasks:
            raise SchemaError("a schema needs at least one task")
        task_names = self.task_names
        if len(set(task_names)) != len(task_names):
            raise SchemaError(f"task names must be unique; got {task_names}")
        for i, t in enumerate(self.tasks):
            if t.type not in TASK_TYPES:
                raise SchemaError(f"task {t.name!r}: type must be one of {list(TASK_TYPES)}, got {t.type!r}")
            if t.loss and t.loss not in TASK_LOSSES[t.type]:
                raise SchemaError(f"task {t.name!r}: a {t.type} task's loss must be one of "
                                  f"{list(TASK_LOSSES[t.type])}, got {t.loss!r}")
            if t.transform not in TASK_TRANSFORMS or (t.transform and t.is_binary):
                raise SchemaError(f"task {t.name!r}: transform must be one of {list(TASK_TRANSFORMS)} (and empty "
                                  f"for a binary task), got {t.transform!r}")
            if t.transform and t.loss_name == "ziln":
                raise SchemaError(f"task {t.name!r}: loss ziln models the logarithm of the value itself; "
                                  f"drop transform {t.transform!r}")
            if t.observed_after is not None and t.observed_after not in task_names[:i]:
                raise SchemaError(
                    f"task {t.name!r}: observed_after={t.observed_after!r} must name an earlier task "
                    f"(tasks in order: {task_names})"
                )
            if t.observed_after is not None and not self.task(t.observed_after).is_binary:
                raise SchemaError(f"task {t.name!r}: observed_after={t.observed_after!r} must name a binary "
                                  "task (it is observed where that task's label is 1)")
        for f in self.embedded_features:
            if f.vocab_size < 2:
                raise SchemaError(f"feature {f.name!r}: vocab_size must be >= 2 (padding and OOV ids)")
        sparse_names = {f.name for f in self.sparse}
        for s in self.sequences:
            if s.max_len < 1:
                raise SchemaError(f"sequence {s.name!r}: max_len must be >= 1")
            if s.target and s.target not in sparse_names:
                raise SchemaError(f"sequence {s.name!r}: target {s.target!r} is not a sparse feature")
        if self.user_id is not None and self.user_id not in sparse_names:
            raise SchemaError(f"user_id {self.user_id!r} must name a sparse feature")
        if self.scenario is not None and self.scenario not in sparse_names:
            raise SchemaError(f"scenario {self.scenario!r} must name a sparse feature")

    # ---- JSON ----------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "sparse": [asdict(f) for f in self.sparse],
            "dense": [asdict(f) for f in self.dense],
            "sequences": [asdict(f) for f in self.sequences],
            "tasks": [asdict(t) for t in self.tasks],
            "user_id": self.user_id,
            "scenario": self.scenario,
            "metadata": self.metadata,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DatasetSchema:
        unknown = sorted(set(data) - SCHEMA_KEYS)
        if unknown:
            raise SchemaError(f"unknown key(s) {unknown} (a feature kind or field this mtrec does not know); "
                              f"a schema has {sorted(SCHEMA_KEYS)}")
        try:
            return cls(
                sparse=tuple(SparseFeature(**f) for f in data.get("sparse", [])),
                dense=tuple(DenseFeature(**f) for f in data.get("dense", [])),
                sequences=tuple(SequenceFeature(**f) for f in data.get("sequences", [])),
                tasks=tuple(TaskSpec(**t) for t in data["tasks"]),
                user_id=data.get("user_id"),
                metadata=dict(data.get("metadata", {})),
                scenario=data.get("scenario"),
            )
        except (KeyError, TypeError) as exc:
            raise SchemaError(f"not a valid schema description: {exc}") from exc

    def save(self, path: str | Path) -> None:
        atomic_write_text(Path(path), json_text(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> DatasetSchema:
        data = read_mapping(path, "schema file", SchemaError)
        try:
            return cls.from_dict(data)
        except SchemaError as exc:
            raise SchemaError(f"{path}: {exc}") from None
