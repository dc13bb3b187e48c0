"""Scoring off the event loop, with the requests that wait at the same moment scored in one runtime call.

The HTTP app parses and encodes each request on its event loop, then hands the encoded inputs to a
:class:`BatchingScorer`: ``threads`` scoring threads each take the oldest waiting request and every request
queued behind it (up to ``max_rows`` rows in all), concatenate them, run the model once and give each
request its own rows back. ONNX Runtime and PyTorch release the GIL while they compute, so the event loop
keeps reading, validating and encoding the next requests meanwhile; under load, one call scores several
requests, which costs fewer runtime calls and thread hand-offs than one call per request. A lone request
is scored at once (nothing waits for a batch to fill).
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from mtrec.serving.predictor import Predictor

DEFAULT_MAX_ROWS = 8192


@dataclass
class _Job:
    feeds: dict[str, np.ndarray]  # named inputs [N, ...]
    rows: int
    future: asyncio.Future[dict[str, np.ndarray]]
    loop: asyncio.AbstractEventLoop


class BatchingScorer:
    """``await scorer.score(feeds)`` -> ``{task: float32 [N]}``, scored in a background thread (see above)."""

    def __init__(self, predictor: Predictor, threads: int = 1, max_rows: int = DEFAULT_MAX_ROWS,
                 on_batch: Callable[[int, int], None] | None = None) -> None:
        """``on_batch(rows, requests)`` is called after each runtime call (the service's metrics)."""
        if threads < 1 or max_rows < 1:
            raise ValueError(f"threads and max_rows must be >= 1, got {threads} and {max_rows}")
        self.predictor = predictor
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

    async def score(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[dict[str, np.ndarray]] = loop.create_future()
        self._queue.put(_Job(feeds, len(next(iter(feeds.values()))), future, loop))
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
        widths = {name: {j.feeds[name].shape[1:] for j in jobs} for name in jobs[0].feeds}
        if len(jobs) > 1 and any(len(shapes) > 1 for shapes in widths.values()):  # histories of other widths
            for job in jobs:
                self._run([job])
            return
        try:
            feeds = jobs[0].feeds if len(jobs) == 1 else {
                name: np.concatenate([j.feeds[name] for j in jobs]) for name in jobs[0].feeds}
            probs = self.predictor.score(feeds)
        except Exception as exc:  # the requests' callers report it; this thread keeps serving
            for j in jobs:
                j.loop.call_soon_threadsafe(_reject, j.future, exc)
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
