"""The scoring service's Prometheus metrics (``GET /metrics``), from prometheus-client.

- ``mtrec_score_requests_total{status}``: ``POST /v1/score`` requests answered, by HTTP status;
- ``mtrec_score_errors_total{status}``: those answered with a 4xx or 5xx;
- ``mtrec_score_latency_seconds``: histogram of the time from the request's arrival to its answer;
- ``mtrec_score_candidates``: histogram of candidates per scored request;
- ``mtrec_batch_rows`` / ``mtrec_batch_requests``: histograms of rows and requests per runtime call (the
  batching of :mod:`mtrec.serving.batching`).

Each app has its own registry; with ``serve --workers N`` each worker process keeps and serves its own
figures (a scrape reaches one worker).
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
ROW_BUCKETS = (1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10_000)
REQUEST_BUCKETS = (1, 2, 4, 8, 16, 32, 64)


class ServiceMetrics:
    """The counters and histograms of one scoring app (see the module docstring)."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("mtrec_score_requests", "POST /v1/score requests answered, by HTTP status",
                                ["status"], registry=self.registry)
        self.errors = Counter("mtrec_score_errors", "POST /v1/score requests answered with a 4xx or 5xx status",
                              ["status"], registry=self.registry)
        self.latency = Histogram("mtrec_score_latency_seconds", "time from a scoring request's arrival to its "
                                 "answer", buckets=LATENCY_BUCKETS, registry=self.registry)
        self.candidates = Histogram("mtrec_score_candidates", "candidates per scored request",
                                    buckets=ROW_BUCKETS, registry=self.registry)
        self.batch_rows = Histogram("mtrec_batch_rows", "rows per runtime call", buckets=ROW_BUCKETS,
                                    registry=self.registry)
        self.batch_requests = Histogram("mtrec_batch_requests", "requests per runtime call",
                                        buckets=REQUEST_BUCKETS, registry=self.registry)

    def answered(self, status: int, seconds: float, candidates: int = 0) -> None:
        """One scoring request answered with ``status`` after ``seconds`` (``candidates`` scored if 200)."""
        label = str(status)
        self.requests.labels(label).inc()
        if status >= 400:
            self.errors.labels(label).inc()
        else:
            self.candidates.observe(candidates)
        self.latency.observe(seconds)

    def batch(self, rows: int, requests: int) -> None:
        """One runtime call of ``rows`` rows for ``requests`` requests."""
        self.batch_rows.observe(rows)
        self.batch_requests.observe(requests)

    def exposition(self) -> bytes:
        """Every metric in the Prometheus text format."""
        return generate_latest(self.registry)
