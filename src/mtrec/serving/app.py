"""The HTTP scoring service (FastAPI under uvicorn): ``POST /v1/score``, ``GET /healthz`` and the OpenAPI schema.

``POST /v1/score`` takes one user's features and a list of candidates' features as raw values (the format
is in :mod:`mtrec.serving.request`) and answers each task's probability per candidate, in order::

    {"model": "mmoe", "tasks": ["click", "conversion"],
     "scores": [{"click": 0.12, "conversion": 0.01}, {"click": 0.08, "conversion": 0.004}]}

Bad input never reaches the model: wrong types, unknown or missing features, an empty or oversized
candidate list (``max_candidates``) and a body over ``max_body_bytes`` get a 4xx whose ``error`` names the
field (``candidates[3].price: expected a finite number, got string``) and whose ``detail`` lists every
problem.

Each request is parsed, validated and encoded on the event loop (:class:`~mtrec.serving.request.RequestEncoder`,
vectorized), then scored by a :class:`~mtrec.serving.batching.BatchingScorer` thread, which scores the
requests waiting at the same moment in one runtime call while the loop reads the next ones (a serving
process sets a GIL switch interval of 0.5 ms, so that thread gets the GIL back soon after each call). ``serve`` runs
one such process, or ``workers`` of them (uvicorn's process manager, one listening socket), each loading the
run itself: they share nothing mutable.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field

from mtrec.serving.batching import DEFAULT_MAX_ROWS, BatchingScorer
from mtrec.serving.predictor import Predictor
from mtrec.serving.request import RequestEncoder, RequestError, problem

log = logging.getLogger("mtrec.serving")
DEFAULT_MAX_CANDIDATES = 1000
DEFAULT_MAX_BODY_BYTES = 8 << 20
SETTINGS_ENV = "MTREC_SERVE_SETTINGS"  # how `serve` hands its settings to worker processes
# A scoring thread back from the runtime waits for the GIL while the event loop parses requests, up to the
# switch interval (5 ms by default): the model would idle that long per batch under load.
SWITCH_INTERVAL_S = 0.0005

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


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
    pid: int = Field(description="the serving process (one of --workers)")


def error_response(error: RequestError) -> JSONResponse:
    """``{"error": "<first field>: <message>", "detail": [{"field", "loc", "msg", "type"}, ...]}``."""
    return JSONResponse(status_code=error.status, content={"error": str(error), "detail": error.problems})


class BodyLimit:
    """ASGI middleware: refuse a request whose declared Content-Length exceeds ``limit`` bytes (413)."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            length = dict(scope.get("headers") or []).get(b"content-length")
            if length is not None and (not length.isdigit() or int(length) > self.limit):
                response = error_response(RequestError([problem(
                    ("body",), f"request body over {self.limit} bytes (Content-Length "
                               f"{length.decode(errors='replace')})", "body_too_large")], status=413))
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


# ---- the app ----------------------------------------------------------------------------------------------
def create_app(
    predictor: Predictor,
    max_candidates: int = DEFAULT_MAX_CANDIDATES,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    workers: int = 1,
    max_batch_rows: int = DEFAULT_MAX_ROWS,
) -> FastAPI:
    """The scoring service for ``predictor`` (``workers`` scoring threads); see the module docstring."""
    if max_candidates < 1 or workers < 1:
        raise ValueError(f"max_candidates and workers must be >= 1, got {max_candidates} and {workers}")
    encoder = RequestEncoder(predictor.schema, predictor.encoders, max_candidates)
    scorer = BatchingScorer(predictor, threads=workers, max_rows=max_batch_rows)
    tasks = predictor.task_names
    head = orjson.dumps({"model": predictor.model_name, "tasks": tasks})[:-1] + b',"scores":'

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        scorer.start()
        try:
            yield
        finally:
            scorer.stop()

    app = FastAPI(
        title="mtrec scoring service",
        version="1",
        description=f"Multi-task scores of model {predictor.model_name!r} "
                    f"(tasks: {', '.join(tasks)}). See mtrec.serving.request for the request format.",
        lifespan=lifespan,
    )
    app.add_middleware(BodyLimit, limit=max_body_bytes)

    @app.get("/healthz", response_model=Health)
    def healthz() -> Health:
        """Liveness and what is being served."""
        return Health(status="ok", model=predictor.model_name, tasks=tasks, backend=predictor.backend,
                      features=predictor.feature_names, max_candidates=max_candidates, pid=os.getpid())

    request_schema = encoder.json_schema()
    schemas = {**request_schema.pop("$defs", {}), "ScoreRequest": request_schema}

    @app.post("/v1/score", response_model=ScoreResponse,
              responses={413: {"description": "request body too large"},
                         422: {"description": "invalid input; `error` names the field"}},
              openapi_extra={"requestBody": {"required": True, "content": {"application/json": {
                  "schema": {"$ref": "#/components/schemas/ScoreRequest"}}}}})
    async def score(request: Request) -> Response:
        """Each task's probability for every candidate, in request order."""
        try:
            feeds = encoder(await request.body())
        except RequestError as exc:
            return error_response(exc)
        except Exception as exc:  # encoding depends on the request's values alone: a failure is bad input
            log.warning("request values could not be encoded", exc_info=True)
            return error_response(RequestError([problem(("body",), f"the request's values could not be encoded "
                                                                   f"({type(exc).__name__}: {exc})", "value_error")]))
        probs = await scorer.score(feeds)
        rows = zip(*(probs[t].tolist() for t in tasks), strict=True)
        return Response(head + orjson.dumps([dict(zip(tasks, row, strict=True)) for row in rows]) + b"}",
                        media_type="application/json")

    default_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        """FastAPI's schema, with the request's types (built from the model's schema) as components."""
        spec = default_openapi()
        spec.setdefault("components", {}).setdefault("schemas", {}).update(schemas)
        return spec

    app.openapi = openapi  # type: ignore[method-assign]
    return app


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

    def app(self, predictor: Predictor | None = None) -> FastAPI:
        """The process's app (loading the run unless ``predictor`` is given); sets the GIL switch interval."""
        sys.setswitchinterval(SWITCH_INTERVAL_S)
        predictor = predictor or Predictor.from_run(self.run_dir, backend=self.backend,  # type: ignore[arg-type]
                                                    threads=self.threads)
        return create_app(predictor, max_candidates=self.max_candidates, workers=self.inference_workers,
                          max_batch_rows=self.max_batch_rows)


def worker_app() -> FastAPI:
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
    predictor = Predictor.from_run(settings.run_dir, backend=settings.backend,  # type: ignore[arg-type]
                                   threads=settings.threads)
    processes = f", {workers} worker processes" if workers > 1 else ""
    echo(f"serving {predictor.model_name} from {settings.run_dir} ({predictor.describe()}{processes}) on "
         f"http://{host}:{port} (POST /v1/score, GET /healthz, docs at /docs)")
    if workers == 1:
        uvicorn.run(settings.app(predictor), host=host, port=port, access_log=access_log, log_level="info")
        return
    del predictor  # each worker loads its own
    os.environ[SETTINGS_ENV] = json.dumps(asdict(settings))
    uvicorn.run("mtrec.serving.app:worker_app", factory=True, workers=workers, host=host, port=port,
                access_log=access_log, log_level="info")
