"""Encoding and scoring off the event loop, with the requests that wait at the same moment encoded and scored
together.

The HTTP app parses and validates each request on its event loop, then hands it to a
:class:`BatchingScorer`: ``threads`` scoring threads each take the oldest waiting request and every request
queued behind it (up to ``max_rows`` rows in all), encode them as one frame (``encode``: the encoders' cost
is mostly per feature, not per row), run the model once and give each request its own rows back. ONNX
Runtime and PyTorch release the GIL while they compute, so the event loop keeps reading and validating the
next requests meanwhile; under load, one call encodes and scores several requests, which costs fewer
encoder and runtime calls and thread hand-offs than one of each per request. A lone request is scored at
once (nothing waits for a batch to fill). When a batch cannot be encoded (a value of one request that the
encoders refuse), each of its requests is encoded and scored on its own, so that only the one at fault fails.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from mtrec.serving.predictor import Predictor

DEFAULT_MAX_ROWS = 8192
Feeds = dict[str, np.ndarray]  # a model's named inputs [N, ...]


class ScoringError(RuntimeError):
    """The runtime failed on encoded input (the model's fault, not the request's); the cause is chained."""


@dataclass
class _Job:
    request: Any  # one item of what ``encode`` takes
    rows: int
    future: asyncio.Future[dict[str, np.ndarray]]
    loop: asyncio.AbstractEventLoop


class BatchingScorer:
    """``await scorer.score(request, rows)`` -> ``{task: float32 [rows]}``, encoded and scored in a background
    thread (see above); raises what ``encode`` raises for that request alone, or :class:`ScoringError`."""

    def __init__(self, predictor: Predictor, encode: Callable[[Sequence[Any]], Feeds], threads: int = 1,
                 max_rows: int = DEFAULT_MAX_ROWS, on_batch: Callable[[int, int], None] | None = None) -> None:
        """``encode(requests)`` gives the named inputs of all their rows, request after request;
        ``on_batch(rows, requests)`` is called after each runtime call (the service's metrics)."""
        if threads < 1 or max_rows < 1:
            raise ValueError(f"threads and max_rows must be >= 1, got {threads} and {max_rows}")
        self.predictor = predictor
        self.encode = encode
        self.on_batch = on_batch
        self.max_rows = max_rows
        self.count = threads
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        self._threads = [threading.Thread(target=self._work, name=f"mtrec-scoring-{i}", daemon=True)
                         for i in range(self.count)]
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        for _ in self._threads:
            self._queue.put(None)
        for thread in self._threads:
            thread.join()
        self._threads = []

    @property
    def waiting(self) -> int:
        """Requests queued and not yet taken by a scoring thread."""
        return self._queue.qsize()

    async def score(self, request: Any, rows: int) -> dict[str, np.ndarray]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[dict[str, np.ndarray]] = loop.create_future()
        self._queue.put(_Job(request, rows, future, loop))
        return await future

    def _work(self) -> None:
        while (job := self._queue.get()) is not None:
            jobs, rows = [job], job.rows
            while rows < self.max_rows:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:  # a stop signal: leave it for this thread's next turn
                    self._queue.put(None)
                    break
                jobs.append(more)
                rows += more.rows
            self._run(jobs)

    def _run(self, jobs: list[_Job]) -> None:
        try:
            feeds = self.encode([j.request for j in jobs])
        except Exception as exc:
            if len(jobs) > 1:  # one request is at fault: each gets its own answer
                for job in jobs:
                    self._run([job])
            else:
                jobs[0].loop.call_soon_threadsafe(_reject, jobs[0].future, exc)
            return
        try:
            probs = self.predictor.score(feeds)
        except Exception as exc:  # the requests' callers report it; this thread keeps serving
            for j in jobs:
                error = ScoringError(f"scoring failed ({type(exc).__name__})")
                error.__cause__ = exc
                j.loop.call_soon_threadsafe(_reject, j.future, error)
            return
        if self.on_batch is not None:
            self.on_batch(sum(j.rows for j in jobs), len(jobs))
        start = 0
        for j in jobs:
            part = {task: p[start : start + j.rows] for task, p in probs.items()}
            start += j.rows
            j.loop.call_soon_threadsafe(_resolve, j.future, part)


def _resolve(future: asyncio.Future[dict[str, np.ndarray]], result: dict[str, np.ndarray]) -> None:
    if not future.done():  # a cancelled request (client gone) is dropped
        future.set_result(result)


def _reject(future: asyncio.Future[dict[str, np.ndarray]], exc: Exception) -> None:
    if not future.done():
        future.set_exception(exc)
