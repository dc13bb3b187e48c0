"""The HTTP scoring service (FastAPI under uvicorn): ``POST /v1/score``, ``GET /healthz``, ``GET /metrics``
(Prometheus, :mod:`mtrec.serving.metrics`) and the OpenAPI schema.

``POST /v1/score`` takes one user's features and a list of candidates' features as raw values (the format
is in :mod:`mtrec.serving.request`) and answers each task's probability per candidate, in order, with the
candidate's ``id`` when it gave one::

    {"model": "mmoe", "tasks": ["click", "conversion"],
     "scores": [{"id": "i7", "click": 0.12, "conversion": 0.01}, {"click": 0.08, "conversion": 0.004}]}

Bad input never reaches the model: wrong types, unknown or missing features, an empty or oversized
candidate list (``max_candidates``), a body that is not JSON (or not UTF-8) and a body over
``max_body_bytes`` (declared or streamed) get a 4xx whose ``error`` names the field
(``candidates[3].price: expected a finite number, got string``) and whose ``detail`` lists every problem;
other HTTP errors (an unknown path, a wrong method, with its ``Allow`` header) have the same shape.

``POST /v1/score`` is a bare ASGI handler in front of the FastAPI app (which serves the rest and the
OpenAPI schema). Each request is parsed, validated and encoded on the event loop
(:class:`~mtrec.serving.request.RequestEncoder`, vectorized), then scored by a
:class:`~mtrec.serving.batching.BatchingScorer` thread, which scores the requests waiting at the same
moment in one runtime call while the loop reads the next ones (a serving process sets a GIL switch
interval of 0.5 ms, so that thread gets the GIL back soon after each call). ``serve`` runs one such
process, or ``workers`` of them (uvicorn's process manager, one listening socket), each loading the
run itself: they share nothing mutable.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from itertools import repeat
from operator import contains
from typing import Any

import orjson
from fastapi import FastAPI, Request, Response
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from mtrec.serving.batching import DEFAULT_MAX_ROWS, BatchingScorer
from mtrec.serving.metrics import ServiceMetrics
from mtrec.serving.predictor import Predictor
from mtrec.serving.request import CANDIDATE_ID, RequestEncoder, RequestError, problem

log = logging.getLogger("mtrec.serving")
DEFAULT_MAX_CANDIDATES = 1000
DEFAULT_MAX_BODY_BYTES = 8 << 20
SCORE_PATH = "/v1/score"
SETTINGS_ENV = "MTREC_SERVE_SETTINGS"  # how `serve` hands its settings to worker processes
# A scoring thread back from the runtime waits for the GIL while the event loop parses requests, up to the
# switch interval (5 ms by default): the model would idle that long per batch under load.
SWITCH_INTERVAL_S = 0.0005
WORKER_START_S = 120  # how long a worker process may take to answer uvicorn's first health ping

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class ScoreResponse(BaseModel):
    model: str = Field(description="the registered model name")
    tasks: list[str] = Field(description="task names, in the model's order")
    scores: list[dict[str, float | str | int]] = Field(
        description="one {task: prediction} per candidate, in request order, with the candidate's id first "
                    "when it gave one: a binary task's probability, a value task's expected value in its label's "
                    "units (see the operation's description)")


class Health(BaseModel):
    status: str
    model: str
    tasks: list[str]
    backend: str
    features: list[str]
    max_candidates: int
    pid: int = Field(description="the serving process (one of --workers)")


def error_body(error: RequestError) -> bytes:
    """``{"error": "<first field>: <message>", "detail": [{"field", "loc", "msg", "type"}, ...]}``."""
    return orjson.dumps({"error": str(error), "detail": error.problems})


class _TooLarge(Exception):
    pass


class ScoringService:
    """The ASGI app: ``POST /v1/score`` is answered here with no framework work per request (read the body,
    encode, score, answer); everything else (``/healthz``, ``/openapi.json``, ``/docs``, lifespan, 404s) goes
    to the FastAPI app ``api``, whose OpenAPI schema also describes ``/v1/score``."""

    def __init__(self, api: FastAPI, encoder: RequestEncoder, scorer: BatchingScorer, model_name: str,
                 max_body_bytes: int, metrics: ServiceMetrics) -> None:
        self.api = api
        self.metrics = metrics
        self.encoder = encoder
        self.scorer = scorer
        self.tasks = scorer.predictor.task_names
        self.max_body_bytes = max_body_bytes
        self.head = orjson.dumps({"model": model_name, "tasks": self.tasks})[:-1] + b',"scores":'

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != SCORE_PATH:
            await self.api(scope, receive, send)
        elif scope["method"] != "POST":
            await _answer(send, 405, orjson.dumps({"error": "method not allowed: POST /v1/score", "detail": []}),
                          [(b"allow", b"POST")])
            self.metrics.answered(405, 0.0)
        else:
            start = time.perf_counter()
            status, body, candidates = await self.score(scope, receive)
            await _answer(send, status, body)
            self.metrics.answered(status, time.perf_counter() - start, candidates)

    async def score(self, scope: Scope, receive: Receive) -> tuple[int, bytes, int]:
        """(status, JSON body, candidates scored) for one scoring request."""
        try:
            request = self.encoder.parse(await self._body(scope, receive))
            feeds = self.encoder.encode(request)
        except _TooLarge as exc:
            return 413, error_body(RequestError([problem(("body",), f"request body over {self.max_body_bytes} "
                                                                    f"bytes ({exc})", "body_too_large")], 413)), 0
        except RequestError as exc:
            return exc.status, error_body(exc), 0
        except Exception as exc:  # encoding depends on the request's values alone: a failure is bad input
            log.warning("request values could not be encoded", exc_info=True)
            error = RequestError([problem(("body",), f"the request's values could not be encoded "
                                                     f"({type(exc).__name__}: {exc})", "value_error")])
            return 422, error_body(error), 0
        try:
            probs = await self.scorer.score(feeds)
        except Exception as exc:  # the runtime failed on valid input: the model's fault, not the request's
            log.exception("scoring failed")
            return 500, error_body(RequestError([problem(("body",), f"scoring failed ({type(exc).__name__})",
                                                         "internal_error")], 500)), 0
        rows = zip(*(probs[t].tolist() for t in self.tasks), strict=True)  # N rows of T probabilities
        # one {task: probability} per row, built by map (C-level iteration: half the time of a comprehension)
        scores = list(map(dict, map(zip, repeat(self.tasks), rows)))
        candidates = request["candidates"]
        if any(map(contains, candidates, repeat(CANDIDATE_ID))):
            scores = [{CANDIDATE_ID: c[CANDIDATE_ID], **s} if CANDIDATE_ID in c else s
                      for c, s in zip(candidates, scores, strict=True)]
        return 200, self.head + orjson.dumps(scores) + b"}", len(scores)

    async def _body(self, scope: Scope, receive: Receive) -> bytes:
        """The request body; _TooLarge when its declared length, or what arrives, exceeds the limit."""
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_body_bytes):
            raise _TooLarge(f"Content-Length {declared.decode(errors='replace')}")
        parts, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
            parts.append(message.get("body", b""))
            size += len(parts[-1])
            if size > self.max_body_bytes:
                raise _TooLarge(f"{size} bytes received")
            more = message.get("more_body", False)
        return b"".join(parts)


async def _http_error(request: Request, exc: Exception) -> Response:
    """Every HTTP error of the FastAPI part (an unknown path, a wrong method) in the error shape."""
    assert isinstance(exc, StarletteHTTPException)
    error = RequestError([problem(("url",), f"{exc.detail}: {request.method} {request.url.path}", "http_error")],
                         exc.status_code)
    return Response(error_body(error), status_code=exc.status_code, media_type="application/json",
                    headers=exc.headers)  # a 405's Allow header among them


async def _answer(send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *(headers or [])]})
    await send({"type": "http.response.body", "body": body})


# ---- the app ----------------------------------------------------------------------------------------------
def create_app(
    predictor: Predictor,
    max_candidates: int = DEFAULT_MAX_CANDIDATES,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    workers: int = 1,
    max_batch_rows: int = DEFAULT_MAX_ROWS,
) -> ScoringService:
    """The scoring service for ``predictor`` (``workers`` scoring threads); see the module docstring."""
    if max_candidates < 1 or workers < 1:
        raise ValueError(f"max_candidates and workers must be >= 1, got {max_candidates} and {workers}")
    encoder = RequestEncoder(predictor.schema, predictor.encoders, max_candidates, predictor.encode)
    metrics = ServiceMetrics()
    scorer = BatchingScorer(predictor, threads=workers, max_rows=max_batch_rows, on_batch=metrics.batch)
    tasks = predictor.task_names

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        scorer.start()
        try:
            yield
        finally:
            scorer.stop()

    api = FastAPI(
        title="mtrec scoring service",
        version="1",
        description=f"Multi-task scores of model {predictor.model_name!r} "
                    f"(tasks: {', '.join(tasks)}). See mtrec.serving.request for the request format.",
        lifespan=lifespan,
    )

    @api.get("/healthz", response_model=Health)
    def healthz() -> Health:
        """Liveness and what is being served."""
        return Health(status="ok", model=predictor.model_name, tasks=tasks, backend=predictor.backend,
                      features=predictor.feature_names, max_candidates=max_candidates, pid=os.getpid())

    api.add_api_route("/healthz", healthz, methods=["HEAD"], include_in_schema=False)  # load balancers' probe

    @api.get("/metrics", response_class=Response,
             responses={200: {"content": {metrics.content_type: {}}, "description": "Prometheus text format"}})
    def prometheus_metrics() -> Response:
        """Requests, errors, latency, candidates and batch sizes (Prometheus text format)."""
        return Response(metrics.exposition(), media_type=metrics.content_type)

    api.add_exception_handler(StarletteHTTPException, _http_error)

    request_schema = encoder.json_schema()
    ref = "#/components/schemas/{model}"
    schemas = {**request_schema.pop("$defs", {}), "ScoreRequest": request_schema,
               "ScoreResponse": ScoreResponse.model_json_schema(ref_template=ref)}
    error = {"content": {"application/json": {"schema": {"type": "object", "properties": {
        "error": {"type": "string"}, "detail": {"type": "array", "items": {"type": "object"}}}}}}}
    operation = {
        "summary": "Score", "operationId": "score",
        "description": "Each task's score for every candidate, in request order. "
                       f"{predictor.schema.describe_outputs()}.",
        "requestBody": {"required": True, "content": {"application/json": {
            "schema": {"$ref": ref.format(model="ScoreRequest")}}}},
        "responses": {
            "200": {"description": "the scores", "content": {"application/json": {
                "schema": {"$ref": ref.format(model="ScoreResponse")}}}},
            "413": {"description": "request body too large", **error},
            "422": {"description": "invalid input; `error` names the field", **error},
        },
    }
    default_openapi = api.openapi

    def openapi() -> dict[str, Any]:
        """FastAPI's schema, plus ``POST /v1/score`` and its types (built from the model's schema)."""
        spec = default_openapi()
        spec["paths"][SCORE_PATH] = {"post": operation}
        spec.setdefault("components", {}).setdefault("schemas", {}).update(schemas)
        return spec

    api.openapi = openapi  # type: ignore[method-assign]
    return ScoringService(api, encoder, scorer, predictor.model_name, max_body_bytes, metrics)


# ---- the server --------------------------------------------------------------------------------------------
@dataclass
class ServeSettings:
    """What each serving process loads and how it serves (handed to worker processes as JSON)."""

    run_dir: str
    backend: str = "onnx"
    threads: int = 1
    max_candidates: int = DEFAULT_MAX_CANDIDATES
    inference_workers: int = 1
    max_batch_rows: int = DEFAULT_MAX_ROWS
    device: str = "cpu"

    def app(self, predictor: Predictor | None = None) -> ScoringService:
        """The process's app (loading the run unless ``predictor`` is given); sets the GIL switch interval."""
        sys.setswitchinterval(SWITCH_INTERVAL_S)
        predictor = predictor or Predictor.load(self.run_dir, backend=self.backend,  # type: ignore[arg-type]
                                                threads=self.threads, device=self.device)
        return create_app(predictor, max_candidates=self.max_candidates, workers=self.inference_workers,
                          max_batch_rows=self.max_batch_rows)


def worker_app() -> ScoringService:
    """The app of one worker process of ``serve --workers N`` (uvicorn's factory), from ``$MTREC_SERVE_SETTINGS``."""
    return ServeSettings(**json.loads(os.environ[SETTINGS_ENV])).app()


def serve(
    settings: ServeSettings,
    host: str = "127.0.0.1",
    port: int = 8000,
    workers: int = 1,
    access_log: bool = False,
    echo: Callable[[str], None] = print,
) -> None:
    """Load the run (refusing an invalid artefact before listening), then serve it with uvicorn in one
    process, or in ``workers`` processes that each load the run again."""
    import uvicorn

    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    predictor = Predictor.load(settings.run_dir, backend=settings.backend,  # type: ignore[arg-type]
                               threads=settings.threads, device=settings.device)
    processes = f", {workers} worker processes" if workers > 1 else ""
    echo(f"serving {predictor.model_name} from {settings.run_dir} ({predictor.describe()}{processes}) on "
         f"http://{host}:{port} (POST /v1/score, GET /healthz, GET /metrics, docs at /docs)")
    if workers == 1:
        uvicorn.run(settings.app(predictor), host=host, port=port, access_log=access_log, log_level="info")
        return
    del predictor  # each worker loads its own
    os.environ[SETTINGS_ENV] = json.dumps(asdict(settings))
    # a worker answers uvicorn's health pings only once it has imported everything: give it time to load
    uvicorn.run("mtrec.serving.app:worker_app", factory=True, workers=workers, host=host, port=port,
                access_log=access_log, log_level="info", timeout_worker_healthcheck=WORKER_START_S)
