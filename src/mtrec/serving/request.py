"""A scoring request's JSON body -> the scoring graph's named inputs, vectorized, or a 422 naming the field.

A request gives one user's features and a list of candidate items' features, all as raw values (as in the
raw data the model was prepared from)::

    {"user": {"user_id": "u42", "hist_click": ["i1", "i9"], "activity": 3.5},
     "candidates": [{"item_id": "i7", "price": 9.9}, {"item_id": "i3", "price": 12.0}]}

Each candidate is scored with the user's features merged in (a feature given in both places takes the
candidate's value); every feature of the model's schema must be given in one of the two places. Values:
a categorical feature takes a string, number or boolean; a dense feature a finite number; a sequence a
list of raw tokens or one string joined by the separator used at preparation; ``null`` means a missing
value (encoded as at preparation). A candidate may also carry an ``id`` (a string or an integer), echoed
with its scores (unless the model has a feature or a task named ``id``).

Parsing: the body is parsed by orjson and validated by pydantic-core against a typed description of the
request built from the schema (strict types, unknown keys refused; no Python code per value). A body
orjson refuses (not JSON, ``Infinity``, a lone surrogate, nested too deeply) is validated from its bytes by
pydantic, whose error then names the problem; a body that is not UTF-8 is refused as such. Every problem
becomes ``{"field", "loc", "msg", "type"}`` with the field written ``candidates[3].price``.

Encoding: the request becomes one row per candidate (a feature given under ``user`` repeated in every row),
encoded by :meth:`mtrec.features.encoders.FeatureEncoders.encode`, the encoder ``prepare`` and ``predict``
use: the same raw values give the same ids and inputs wherever they come from.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from itertools import repeat
from typing import Annotated, Any, Required

import numpy as np
import orjson
from pydantic import AllowInfNan, ConfigDict, Field, Strict, TypeAdapter, ValidationError
from typing_extensions import TypedDict

from mtrec.export.model_file import array_feeds
from mtrec.features.encoders import EncodingError, FeatureEncoders
from mtrec.features.schema import DatasetSchema

# ---- value types (checked by pydantic-core, without Python callbacks) ------------------------------------
INT64 = (-(2**63), 2**63 - 1)  # numeric ids beyond 64 bits must come as strings: they have no exact float
FiniteFloat = Annotated[float, Strict(), AllowInfNan(False)]
Id = Annotated[int, Strict(), Field(ge=INT64[0], le=INT64[1])]
IdFloat = Annotated[float, Strict(), AllowInfNan(False), Field(gt=-(2.0**63), lt=2.0**63)]
Token = Annotated[str, Strict()] | Id | IdFloat
CategoricalValue = Token | Annotated[bool, Strict()] | None
NumberValue = FiniteFloat | None  # strict: an int is a number; a string or a boolean is not
SequenceValue = list[Token] | Annotated[str, Strict()] | None
EXPECTED = {
    "categorical": "a categorical value (string, number, boolean or null)",
    "dense": "a finite number (or null)",
    "sequence": "a list of tokens or a separator-joined string (or null)",
}
_MAX_LISTED_ERRORS = 20
_typed_dict: Any = TypedDict  # a TypedDict built at run time from the schema (pydantic reads its fields)
_ABSENT = object()
CANDIDATE_ID = "id"


def feature_kinds(schema: DatasetSchema) -> dict[str, str]:
    """Feature name -> ``categorical``, ``dense`` or ``sequence``."""
    return {**{f.name: "categorical" for f in schema.sparse}, **{f.name: "dense" for f in schema.dense},
            **{f.name: "sequence" for f in schema.sequences}}


def echoes_ids(schema: DatasetSchema) -> bool:
    """Whether a candidate may carry an ``id`` echoed with its scores: unless a feature or a task has that name."""
    return CANDIDATE_ID not in {*schema.feature_names, *schema.task_names}


def request_type(schema: DatasetSchema, max_candidates: int) -> Any:
    """The request as a TypedDict: ``Features`` (every feature optional, unknown names refused) under
    ``user``, and ``candidates`` (1 to ``max_candidates``), each ``Features`` with an optional ``id``."""
    types: dict[str, Any] = {"categorical": CategoricalValue, "dense": NumberValue, "sequence": SequenceValue}
    lengths = {f.name: f.max_len for f in schema.sequences}
    fields: dict[str, Any] = {}
    for name, kind in feature_kinds(schema).items():
        note = f"; at most {lengths[name]} tokens are kept" if name in lengths else ""
        fields[name] = Annotated[types[kind], Field(title=name, description=f"{kind} feature: {EXPECTED[kind]}{note}")]
    features = _typed_dict("Features", fields, total=False)
    features.__pydantic_config__ = ConfigDict(extra="forbid")
    candidate = features
    if echoes_ids(schema):
        candidate = _typed_dict("Candidate", {**fields, CANDIDATE_ID: Annotated[
            Annotated[str, Strict()] | Id, Field(description="the candidate's id (string or integer), echoed with its "
                                                             "scores")]}, total=False)
        candidate.__pydantic_config__ = ConfigDict(extra="forbid")
    request = _typed_dict("ScoreRequest", {
        "user": Annotated[features, Field(description="features shared by every candidate")],
        "candidates": Required[Annotated[list[candidate], Field(  # type: ignore[valid-type]
            min_length=1, max_length=max_candidates,
            description=f"the items to score (1 to {max_candidates}), each with its own features")]],
    }, total=False)
    request.__pydantic_config__ = ConfigDict(extra="forbid")
    return request


# ---- problems ---------------------------------------------------------------------------------------------
def field_path(loc: Sequence[int | str]) -> str:
    """``("body", "candidates", 3, "price")`` -> ``candidates[3].price``."""
    path = ""
    for part in loc:
        if part == "body" and not path:
            continue
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path or "body"


def problem(loc: Sequence[int | str], msg: str, kind: str) -> dict[str, Any]:
    return {"field": field_path(loc), "loc": list(loc), "msg": msg, "type": kind}


class RequestError(ValueError):
    """A request that cannot be scored: ``status`` (4xx) and every problem found, first one first."""

    def __init__(self, problems: list[dict[str, Any]], status: int = 422) -> None:
        listed = problems[:_MAX_LISTED_ERRORS]
        more = f" (and {len(problems) - 1} more problem(s))" if len(problems) > 1 else ""
        super().__init__(f"{listed[0]['field']}: {listed[0]['msg']}{more}")
        self.problems = listed
        self.status = status


def _type_name(value: object) -> str:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}.get(
        type(value), type(value).__name__)


def _feature_problem(loc: tuple[int | str, ...], value: Any, kinds: dict[str, str]) -> dict[str, Any] | None:
    """One clear problem for a type error inside a feature, whose ``loc`` pydantic extends with union
    member tags (``("body", "user", "hist", "list[...]", 0, "str")``); None if ``loc`` is not in a feature."""
    depth = {"user": 1, "candidates": 2}.get(str(loc[1])) if len(loc) > 1 and loc[0] == "body" else None
    if depth is None or len(loc) <= 1 + depth or str(loc[1 + depth]) not in kinds:
        return None
    at = loc[: 2 + depth]  # ("body", "user", feature) or ("body", "candidates", i, feature)
    kind = kinds[str(at[-1])]
    item = next((part for part in loc[len(at) + 1 :] if isinstance(part, int)), None)
    number = isinstance(value, int) or (isinstance(value, float) and math.isfinite(value))
    if number and not isinstance(value, bool) and not INT64[0] <= value <= INT64[1]:
        size = f"an integer of {len(str(abs(value)))} digits" if isinstance(value, int) else f"{value:g}"
        if kind == "dense":
            return problem(at, f"{size} is out of range", "out_of_range")
        where = f"item {item}: " if kind == "sequence" and item is not None else ""
        return problem(at, f"{where}{size} is out of range for a numeric id: numeric ids must fit in 64 bits "
                           f"(send a longer id as a string)", "out_of_range")
    if kind == "sequence" and item is not None:
        return problem(at, f"item {item}: expected a token (string or finite number), got {_type_name(value)}",
                       "type_error")
    return problem(at, f"expected {EXPECTED[kind]}, got {_type_name(value)}", "type_error")


def validation_problems(errors: Sequence[Any], max_candidates: int, kinds: dict[str, str]) -> list[dict[str, Any]]:
    """pydantic's errors for the request body as problems in plain words, one per field."""
    problems: dict[str, dict[str, Any]] = {}
    for err in errors:
        loc, kind = ("body", *err.get("loc", ())), str(err.get("type", "value_error"))
        msg = str(err.get("msg", "invalid value"))
        found: dict[str, Any] | None = None
        if kind == "json_invalid":
            reason = str(err.get("ctx", {}).get("error", msg))
            reason = "nested too deeply" if reason.startswith("recursion limit") else reason
            found = problem(("body",), f"not valid JSON: {reason}", kind)
        elif loc == ("body", "candidates") and kind in ("too_short", "too_long"):
            count = len(err.get("input") or [])
            found = problem(loc, f"expected 1 to {max_candidates} candidates per request (the server's "
                                 f"--max-candidates), got {count}", kind)
        elif kind == "extra_forbidden":
            found = problem(loc, f"unknown feature {loc[-1]!r}; the model's features are {list(kinds)}"
                            if len(loc) > 2 else f"unknown key {loc[-1]!r}; a request has 'user' and 'candidates'",
                            kind)
        elif loc == ("body", "candidates") and kind == "missing":
            found = problem(loc, "missing 'candidates': the list of items to score", kind)
        else:
            found = _feature_problem(loc, err.get("input"), kinds) or problem(loc, msg, kind)
        problems.setdefault(found["field"], found)  # union members repeat a field: keep its first
    return list(problems.values()) or [problem(("body",), "invalid request", "value_error")]


# ---- the encoder --------------------------------------------------------------------------------------------
class RequestEncoder:
    """``encoder(body)`` -> the scoring graph's named inputs ``[N, ...]`` for the N candidates of a JSON
    request body; raises :class:`RequestError` naming each bad field (see the module docstring)."""

    def __init__(self, schema: DatasetSchema, encoders: FeatureEncoders, max_candidates: int,
                 feeds: Callable[[Mapping[str, Any]], dict[str, np.ndarray]] | None = None) -> None:
        """``feeds`` turns the one-row-per-candidate frame into the graph's inputs (default: the encoders' ids,
        :meth:`FeatureEncoders.encode`; a predictor's ``encode`` for a graph taking raw values)."""
        encoders.check(schema)
        self.feeds = feeds or (lambda frame: array_feeds(*encoders.encode(frame, schema), schema))
        self.schema = schema
        self.encoders = encoders
        self.max_candidates = max_candidates
        self.kinds = feature_kinds(schema)
        self.adapter: TypeAdapter[Any] = TypeAdapter(request_type(schema, max_candidates))

    def __call__(self, body: bytes) -> dict[str, np.ndarray]:
        return self.encode(self.parse(body))

    def json_schema(self) -> dict[str, Any]:
        """The request's JSON schema, its definitions referenced as OpenAPI components."""
        return self.adapter.json_schema(ref_template="#/components/schemas/{model}")

    def parse(self, body: bytes) -> dict[str, Any]:
        """The validated request (plain dicts and lists), or RequestError."""
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError:
            try:
                body.decode()
            except UnicodeDecodeError:
                raise RequestError([problem(("body",), "not valid JSON: not UTF-8 text", "json_invalid")]) from None
            data = _ABSENT
        try:
            return self.adapter.validate_python(data) if data is not _ABSENT else self.adapter.validate_json(body)
        except ValidationError as exc:
            raise RequestError(validation_problems(exc.errors(), self.max_candidates, self.kinds)) from None

    def encode(self, request: dict[str, Any]) -> dict[str, np.ndarray]:
        """A validated request -> named inputs: sparse ``[N, F_sparse]``, dense ``[N, F_dense]``, ``seq__<name>``
        ``[N, L]`` (see :mod:`mtrec.export.scoring`)."""
        user: dict[str, Any] = request.get("user") or {}
        candidates: list[dict[str, Any]] = request["candidates"]
        given = set().union(*candidates)  # features at least one candidate gives
        frame: dict[str, list[Any]] = {}  # feature -> its N raw values, one per candidate
        missing: list[dict[str, Any]] = []
        for name in self.kinds:
            column = list(map(dict.get, candidates, repeat(name), repeat(_ABSENT))) if name in given else None
            if column is not None and not column.count(_ABSENT):
                frame[name] = column
            elif name in user:
                shared = user[name]
                frame[name] = [shared if v is _ABSENT else v for v in column] if column else [shared] * len(candidates)
            else:
                row = column.index(_ABSENT) if column else 0
                missing.append(problem(("body", "candidates", row, name), _missing(name), "missing"))
        if missing:
            raise RequestError(missing)
        try:
            feeds = self.feeds(frame)
        except EncodingError as exc:  # types were validated: a value the transform overflows, say
            row = exc.row or 0
            where = ("candidates", row) if exc.feature in candidates[row] else ("user",)
            raise RequestError([problem(("body", *where, exc.feature), str(exc), "encoding_error")]) from None
        return feeds


def _missing(name: str) -> str:
    return f"missing required feature {name!r}: give it in user or in every candidate"
