"""The HTTP scoring service (FastAPI): ``POST /v1/score``, ``GET /healthz`` and the OpenAPI schema.

A request gives one user's features and a list of candidate items' features, all as raw values (as in the
raw data the model was prepared from)::

    {"user": {"user_id": "u42", "hist_click": ["i1", "i9"], "activity": 3.5},
     "candidates": [{"item_id": "i7", "price": 9.9}, {"item_id": "i3", "price": 12.0}]}

Each candidate is scored with the user's features merged in (a feature given in both places takes the
candidate's value); every feature of the model's schema must be given in one of the two places. Values:
a categorical feature takes a string, number or boolean; a dense feature a finite number; a sequence a
list of raw tokens or one string joined by the separator used at preparation; ``null`` means a missing
value (encoded as at preparation). The response holds each task's probability per candidate, in order::

    {"model": "mmoe", "tasks": ["click", "conversion"],
     "scores": [{"click": 0.12, "conversion": 0.01}, {"click": 0.08, "conversion": 0.004}]}

Bad input never reaches the model: wrong types, unknown or missing features, an empty or oversized
candidate list (``max_candidates``), a body that is not JSON (or not UTF-8) and a body over
``max_body_bytes`` (declared or streamed) get a 4xx whose ``error`` names the field
(``candidates[3].price: expected a finite number, got str``) and whose ``detail`` lists every problem.
"""

# no `from __future__ import annotations`: FastAPI reads the endpoint's request model (built at runtime
# from the schema) from its annotation object
import logging
import math
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from typing import Annotated, Any

import anyio
import anyio.to_thread
from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import AllowInfNan, BaseModel, ConfigDict, Field, Strict, create_model
from starlette.exceptions import HTTPException as StarletteHTTPException

from mtrec.features.encoders import EncodingError
from mtrec.features.schema import DatasetSchema
from mtrec.serving.predictor import Predictor

log = logging.getLogger("mtrec.serving")
DEFAULT_MAX_CANDIDATES = 1000
DEFAULT_MAX_BODY_BYTES = 8 << 20
_MAX_LISTED_ERRORS = 20

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


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


def _type_name(value: object) -> str:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}.get(
        type(value), type(value).__name__)


def feature_kinds(schema: DatasetSchema) -> dict[str, str]:
    """Feature name -> ``categorical``, ``dense`` or ``sequence``."""
    return {**{f.name: "categorical" for f in schema.sparse}, **{f.name: "dense" for f in schema.dense},
            **{f.name: "sequence" for f in schema.sequences}}


# ---- request and response models, built from the schema -------------------------------------------------
def features_model(schema: DatasetSchema) -> type[BaseModel]:
    """A model with every feature of ``schema`` as an optional field (unknown names are refused).

    Fields are stored under internal names and read by alias, so any feature name works (even one that
    would shadow a pydantic attribute)."""
    types: dict[str, Any] = {"categorical": CategoricalValue, "dense": NumberValue, "sequence": SequenceValue}
    lengths = {f.name: f.max_len for f in schema.sequences}
    fields: dict[str, Any] = {}
    for i, (name, kind) in enumerate(feature_kinds(schema).items()):
        note = f"; at most {lengths[name]} tokens are kept" if name in lengths else ""
        fields[f"f{i}"] = (types[kind], Field(None, alias=name, title=name,
                                              description=f"{kind} feature: {EXPECTED[kind]}{note}"))
    return create_model(
        "Features", __config__=ConfigDict(extra="forbid", populate_by_name=False), **fields
    )


def request_model(features: type[BaseModel], max_candidates: int) -> type[BaseModel]:
    return create_model(
        "ScoreRequest",
        __config__=ConfigDict(extra="forbid"),
        user=(features, Field(default_factory=features, description="features shared by every candidate")),
        candidates=(list[features], Field(  # type: ignore[valid-type]
            min_length=1, max_length=max_candidates,
            description=f"the items to score (1 to {max_candidates}), each with its own features")),
    )


class ScoreResponse(BaseModel):
    model: str = Field(description="the registered model name")
    tasks: list[str] = Field(description="task names, in the model's order")
    scores: list[dict[str, float]] = Field(description="one {task: probability} per candidate, in request order")


class Health(BaseModel):
    status: str
    model: str
    tasks: list[str]
    backend: str
    features: list[str]
    max_candidates: int


# ---- errors -------------------------------------------------------------------------------------------
def field_path(loc: Sequence[int | str]) -> str:
    """``("body", "candidates", 3, "price")`` -> ``candidates[3].price``."""
    path = ""
    for part in loc:
        if part == "body" and not path:
            continue
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path or "body"


def error_response(status: int, problems: list[dict[str, Any]]) -> JSONResponse:
    """``{"error": "<first field>: <message>", "detail": [{"field", "loc", "msg", "type"}, ...]}``."""
    listed = problems[:_MAX_LISTED_ERRORS]
    first = listed[0]
    more = f" (and {len(problems) - 1} more problem(s))" if len(problems) > 1 else ""
    return JSONResponse(status_code=status,
                        content={"error": f"{first['field']}: {first['msg']}{more}", "detail": listed})


def problem(loc: Sequence[int | str], msg: str, kind: str) -> dict[str, Any]:
    return {"field": field_path(loc), "loc": list(loc), "msg": msg, "type": kind}


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


def _validation_handler(
    max_candidates: int, kinds: dict[str, str]
) -> Callable[[Request, Exception], Awaitable[JSONResponse]]:
    """FastAPI's validation errors as :func:`error_response`: one problem per field, in plain words."""

    async def handle(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        problems: dict[str, dict[str, Any]] = {}
        for err in exc.errors():
            loc, kind = tuple(err.get("loc", ("body",))), str(err.get("type", "value_error"))
            msg = str(err.get("msg", "invalid value"))
            found: dict[str, Any] | None = None
            if kind == "json_invalid":
                position = loc[1] if len(loc) > 1 else "?"
                reason = err.get("ctx", {}).get("error", msg)
                found = problem(("body",), f"not valid JSON (at character {position}): {reason}", kind)
            elif loc == ("body", "candidates") and kind in ("too_short", "too_long"):
                count = len(err.get("input") or [])
                found = problem(loc, f"expected 1 to {max_candidates} candidates per request (the server's "
                                     f"--max-candidates), got {count}", kind)
            elif kind == "extra_forbidden":
                found = problem(loc, f"unknown feature {loc[-1]!r}; the model's features are {list(kinds)}"
                                if len(loc) > 2 else f"unknown key {loc[-1]!r}; a request has 'user' and 'candidates'",
                                kind)
            else:
                found = _feature_problem(loc, err.get("input"), kinds) or problem(loc, msg, kind)
            problems.setdefault(found["field"], found)  # union members repeat a field: keep its first
        listed = list(problems.values()) or [problem(("body",), "invalid request", "value_error")]
        return error_response(422, listed)

    return handle


class BodyLimit:
    """ASGI middleware: refuse (413) a request body over ``limit`` bytes, whether its Content-Length says so
    or it streams more (a chunked upload): the body is counted as it arrives, never held beyond the limit."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.limit):
            response = error_response(413, [problem(("body",), f"request body over {self.limit} bytes "
                                                    f"(Content-Length {length.decode(errors='replace')})",
                                                    "body_too_large")])
            await response(scope, receive, send)
            return
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:  # FastAPI passes an HTTPException on to the handlers
                    raise HTTPException(413, f"request body over {self.limit} bytes (streamed)")
            return message

        await self.app(scope, counted, send)


_PARSE_FAILURE = "There was an error parsing the body"  # FastAPI's 400 for a body it cannot decode


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    """Every HTTP error in the :func:`error_response` shape; a body FastAPI could not decode as JSON (not
    UTF-8, nested too deeply) is a 422 like any other invalid JSON."""
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 400 and exc.detail == _PARSE_FAILURE:
        cause = exc.__cause__
        reason = ("not UTF-8 text" if isinstance(cause, UnicodeError) else
                  "nested too deeply" if isinstance(cause, RecursionError) else f"{type(cause).__name__}")
        return error_response(422, [problem(("body",), f"not valid JSON: {reason}", "json_invalid")])
    if exc.status_code == 413:
        return error_response(413, [problem(("body",), str(exc.detail), "body_too_large")])
    return error_response(exc.status_code, [problem(("url",), f"{exc.detail}: {request.method} {request.url.path}",
                                                    "http_error")])


# ---- the app ----------------------------------------------------------------------------------------------
def create_app(
    predictor: Predictor,
    max_candidates: int = DEFAULT_MAX_CANDIDATES,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    workers: int = 1,
) -> FastAPI:
    """The scoring service for ``predictor``; see the module docstring for the API."""
    if max_candidates < 1 or workers < 1:
        raise ValueError(f"max_candidates and workers must be >= 1, got {max_candidates} and {workers}")
    schema = predictor.schema
    features = features_model(schema)
    score_request = request_model(features, max_candidates)
    internal = {field.alias: name for name, field in features.model_fields.items()}  # feature -> field name
    names = schema.feature_names
    app = FastAPI(
        title="mtrec scoring service",
        version="1",
        description=f"Multi-task scores of model {predictor.model_name!r} "
                    f"(tasks: {', '.join(predictor.task_names)}). See mtrec.serving.app for the request format.",
    )
    app.add_exception_handler(RequestValidationError, _validation_handler(max_candidates, feature_kinds(schema)))
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_middleware(BodyLimit, limit=max_body_bytes)

    def merged_columns(user: BaseModel, candidates: list[BaseModel]) -> dict[str, list[Any]]:
        """``{feature: N raw values}``, each candidate's own value first, else the user's; raises _Missing
        listing the features absent from both places."""
        columns: dict[str, list[Any]] = {}
        missing: list[dict[str, Any]] = []
        user_given = user.model_fields_set
        for name in names:
            key = internal[name]
            given = [key in c.model_fields_set for c in candidates]
            if all(given):
                columns[name] = [getattr(c, key) for c in candidates]
            elif key in user_given:
                value = getattr(user, key)
                columns[name] = [getattr(c, key) if g else value for c, g in zip(candidates, given, strict=True)]
            else:
                i = given.index(False)
                missing.append(problem(("body", "candidates", i, name),
                                       f"missing required feature {name!r}: give it in user or in every candidate",
                                       "missing"))
        if missing:
            raise _Missing(missing)
        return columns

    def value_location(error: EncodingError, candidates: list[BaseModel]) -> tuple[int | str, ...]:
        """Where the value an encoding error is about came from: the candidate's own field, or the user's."""
        row = error.row
        if row is not None and 0 <= row < len(candidates) and internal.get(error.feature) in (
                candidates[row].model_fields_set):
            return ("body", "candidates", row, error.feature)
        return ("body", "user", error.feature)

    @app.get("/healthz", response_model=Health)
    def healthz() -> Health:
        """Liveness and what is being served."""
        return Health(status="ok", model=predictor.model_name, tasks=predictor.task_names,
                      backend=predictor.backend, features=names, max_candidates=max_candidates)

    app.add_api_route("/healthz", healthz, methods=["HEAD"], include_in_schema=False)  # load balancers' probe

    def score_now(request: BaseModel) -> JSONResponse:
        candidates: list[BaseModel] = request.candidates  # type: ignore[attr-defined]
        try:
            feeds = predictor.encode(merged_columns(request.user, candidates))  # type: ignore[attr-defined]
        except _Missing as exc:
            return error_response(422, exc.problems)
        except EncodingError as exc:
            return error_response(422, [problem(value_location(exc, candidates), str(exc), "encoding_error")])
        except Exception as exc:  # encoding depends on the request's values alone: a failure is bad input
            log.warning("request values could not be encoded", exc_info=True)
            return error_response(422, [problem(("body",), f"the request's values could not be encoded "
                                                           f"({type(exc).__name__}: {exc})", "value_error")])
        probs = predictor.score(feeds)
        columns_out = [probs[t].tolist() for t in predictor.task_names]
        scores = [dict(zip(predictor.task_names, row, strict=True)) for row in zip(*columns_out, strict=True)]
        return JSONResponse({"model": predictor.model_name, "tasks": predictor.task_names, "scores": scores})

    limiter: list[anyio.CapacityLimiter] = []  # made on the first request, inside the event loop

    @app.post("/v1/score", response_model=ScoreResponse,
              responses={413: {"description": "request body too large"},
                         422: {"description": "invalid input; `error` names the field"}})
    async def score(request: score_request) -> JSONResponse:  # type: ignore[valid-type]
        """Each task's probability for every candidate, in request order."""
        if not limiter:
            limiter.append(anyio.CapacityLimiter(workers))
        # encoding and inference run in worker threads, at most `workers` requests at a time (the others
        # wait in line), so the event loop keeps reading requests and answering /healthz meanwhile
        return await anyio.to_thread.run_sync(score_now, request, limiter=limiter[0])

    return app


class _Missing(Exception):
    def __init__(self, problems: list[dict[str, Any]]) -> None:
        super().__init__(problems[0]["msg"])
        self.problems = problems


def serve(
    run_dir: str,
    host: str = "127.0.0.1",
    port: int = 8000,
    max_candidates: int = DEFAULT_MAX_CANDIDATES,
    backend: str = "onnx",
    threads: int = 1,
    access_log: bool = False,
    inference_workers: int = 1,
    echo: Callable[[str], None] = print,
) -> None:
    """Load the run (refusing an invalid artefact before listening), then serve it with uvicorn."""
    import uvicorn

    predictor = Predictor.from_run(run_dir, backend=backend, threads=threads)  # type: ignore[arg-type]
    app = create_app(predictor, max_candidates=max_candidates, workers=inference_workers)
    echo(f"serving {predictor.model_name} from {run_dir} ({predictor.describe()}) on http://{host}:{port} "
         f"(POST /v1/score, GET /healthz, docs at /docs)")
    uvicorn.run(app, host=host, port=port, access_log=access_log, log_level="info")
