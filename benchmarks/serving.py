"""Serving speed: the HTTP service under load on loopback against the model alone, request encoding, worker
processes, batch scoring, and the inference runtimes.

Sections (``--skip`` any of them):

1. model: ONNX Runtime alone (one thread) on the encoded 100-candidate requests the load generator sends:
   the rows/s that the service's requests/s x candidates is compared with (measured before and after the
   HTTP runs, in this process);
2. encoding: parsing, validating and encoding one request into model inputs (``RequestEncoder``, in this
   process; median CPU time per request);
3. http: ``mtrec serve`` in a subprocess on 127.0.0.1, one worker process; requests of ``--candidates``
   candidates (one user, distinct items) sent by ``--concurrency`` keep-alive connections for ``--duration``
   seconds each (at most ``--max-requests``): requests/s, p50/p95/p99 latency, errors (any status but 200),
   and the CPU time per request of the server's event loop (its main thread), of its other threads (the
   scoring thread) and of the load generator (Linux: from /proc), which say where the time goes when the
   machine's load moves the wall-clock figures;
4. workers: the same load at ``--workers-concurrency`` against ``--workers 1`` and ``--workers 2``;
5. predict: ``mtrec predict`` on a raw CSV of ``--predict-rows`` rows (rows/s as the command reports it:
   reading, encoding, scoring, writing; start-up and model load excluded) against ONNX Runtime alone on the
   same rows, encoded, in batches of the same size (8192), one thread, measured right before and after
   each run; ``--predict-repeats`` runs per source tree, the trees taking turns (the median ratio is
   printed); then this tree's ``score_file`` in this process with the runtime calls timed: how long the
   scoring thread had nothing to score (reading and encoding that the pipeline did not hide);
6. runtimes: ONNX Runtime vs eager PyTorch vs TorchScript (traced) on batches of 100 and 8192 rows.

``--before SRC`` also runs sections 3 and 5 with the ``mtrec`` of another source tree (e.g. a worktree of
an older commit, run by its checkout's ``.venv``: its own dependencies), before this tree's, so both are
measured in the same run under the same load.

The load generator is a minimal asyncio HTTP/1.1 client (pre-encoded requests, keep-alive, responses read
by Content-Length) on uvloop when installed: it uses far less CPU per request than a general client, which
matters with the server on the same cores. Only 127.0.0.1 is ever contacted.

Without ``--run``, a run is made first: a raw CSV shaped like a click/conversion log (user, item,
category, brand, shop, city, 3 more categorical fields, 4 dense fields and click/cart histories of up to
20 items; 30k rows) is prepared with ``mtrec.data.prepare`` and MMoE (the registry defaults: embedding 16,
4 experts of 256-128, towers of 64) is trained on it for one epoch.

    python benchmarks/serving.py [--run RUN_DIR] [--before SRC] [--duration 15] [--concurrency 1,8,32]
                                 [--candidates 100] [--predict-rows 200000] [--skip runtimes,workers,...]

Figures on a shared machine move with its load (printed beside each section): quote medians of runs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import torch

from mtrec.data.prepare import feature_columns
from mtrec.data.readers import iter_chunks, read_layout
from mtrec.export.model_file import input_names
from mtrec.export.onnx import random_features
from mtrec.export.scoring import ScoringModule, feature_inputs
from mtrec.objectives.scorer import Scorer
from mtrec.serving.batch import DEFAULT_CHUNK_ROWS, input_columns, input_source, score_file
from mtrec.serving.predictor import Predictor, Runner, TorchRunner
from mtrec.serving.request import RequestEncoder
from mtrec.training.checkpoint import load_model

HOST = "127.0.0.1"
SEQ_LEN = 20
ITEMS = 5000
HERE = Path(__file__).resolve().parents[1] / "src"


def load_average() -> str:
    return "load {:.2f} {:.2f} {:.2f}".format(*os.getloadavg())


def median_seconds(fn: Callable[[], object], calls: int, repeats: int,
                   clock: Callable[[], float] = time.perf_counter) -> float:
    """Median over ``repeats`` of the mean time of ``calls`` calls of ``fn`` (wall time, or ``clock``)."""
    fn()
    times = []
    for _ in range(repeats):
        start = clock()
        for _ in range(calls):
            fn()
        times.append((clock() - start) / calls)
    return statistics.median(times)


# ---- a run to serve --------------------------------------------------------------------------------------
def raw_log(rows: int, seed: int) -> dict[str, list[Any]]:
    """Raw columns of a synthetic click/conversion log (text ids, as an export would have them)."""
    rng = np.random.default_rng(seed)
    user = rng.integers(0, 2000, rows)
    item = np.minimum(rng.zipf(1.3, rows), ITEMS) - 1
    hist = [rng.integers(0, ITEMS, rng.integers(0, SEQ_LEN + 5)) for _ in range(rows)]
    price = np.round(rng.gamma(2.0, 20.0, rows), 2)
    click = (rng.random(rows) < 1 / (1 + np.exp(-(0.3 * np.log1p(price) - 2.0)))).astype(int)
    columns: dict[str, list[Any]] = {
        "user_id": [f"u{u}" for u in user], "item_id": [f"i{i}" for i in item],
        "category": [f"c{i % 97}" for i in item], "brand": [f"b{i % 601}" for i in item],
        "shop": [f"s{i % 1303}" for i in item], "city": [f"city{u % 50}" for u in user],
        "age": [str(u % 7) for u in user], "gender": [str(u % 2) for u in user], "device": [f"d{u % 5}" for u in user],
        "price": price.tolist(), "activity": rng.poisson(5, rows).tolist(),
        "score": np.round(rng.normal(size=rows), 3).tolist(), "days": rng.integers(0, 400, rows).tolist(),
        "hist_click": ["|".join(f"i{i}" for i in h) for h in hist],
        "hist_cart": ["|".join(f"i{i}" for i in h[: len(h) // 3]) for h in hist],
        "click": click.tolist(), "conversion": (click * (rng.random(rows) < 0.2)).astype(int).tolist(),
    }
    return columns


USER_FEATURES = ("user_id", "city", "age", "gender", "device", "activity", "days", "hist_click", "hist_cart")
DATASET_CONFIG = """
name: serving_bench
source: {path: PATH, format: csv}
features:
  sparse: [user_id, item_id, category, brand, shop, city, age, gender, device]
  dense:
    - {name: price, column: price, log1p: true}
    - activity
    - score
    - days
  sequences:
    - {name: hist_click, max_len: MAX_LEN, separator: "|", table: item_id, target: item_id, behaviour: click}
    - {name: hist_cart, max_len: MAX_LEN, separator: "|", table: item_id, target: item_id, behaviour: cart}
tasks:
  - name: click
  - name: conversion
    observed_after: click
user_id: user_id
split: {kind: random, seed: 0, fractions: [0.8, 0.1, 0.1]}
"""


def write_csv(columns: dict[str, list[Any]], path: Path) -> Path:
    import pyarrow as pa
    import pyarrow.csv as pa_csv

    pa_csv.write_csv(pa.table({k: pa.array([str(v) for v in vs]) for k, vs in columns.items()}), path)
    return path


def make_run(root: Path, rows: int = 30_000) -> Path:
    from mtrec.data.prepare import prepare_dataset
    from mtrec.training.config import RunConfig, TrainConfig
    from mtrec.training.run import train_run

    raw = write_csv(raw_log(rows, seed=0), root / "log.csv")
    config = root / "dataset.yaml"
    config.write_text(DATASET_CONFIG.replace("PATH", str(raw)).replace("MAX_LEN", str(SEQ_LEN)))
    prepare_dataset(config, root / "prepared", progress=False, log=lambda _: None)
    train_run(RunConfig(model="mmoe", data=str(root / "prepared"),
                        train=TrainConfig(epochs=1, batch_size=1024, num_threads=1)), root / "run", log=lambda _: None)
    return root / "run"


# ---- 6. runtimes -------------------------------------------------------------------------------------------
class TracedRunner:
    """The scoring module traced with ``torch.jit.trace`` (TorchScript), for comparison only."""

    def __init__(self, model: Scorer) -> None:
        schema = model.schema
        self.names = input_names(schema)
        example = feature_inputs(random_features(schema, 8), schema)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.traced = torch.jit.trace(ScoringModule(model).eval(), example, check_trace=False)

    def __call__(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        with torch.inference_mode():
            return [t.numpy() for t in self.traced(*(torch.from_numpy(feeds[n]) for n in self.names))]


def bench_runtimes(run: Path, sizes: tuple[int, ...] = (100, 8192), repeats: int = 15) -> list[dict[str, Any]]:
    """Median time per batch of each runtime on the same encoded batches (interleaved repeats)."""
    torch.set_num_threads(1)
    onnx = Predictor.from_run(run, backend="onnx", threads=1)
    model, _ = load_model(run)
    runners: dict[str, Runner] = {"onnx": onnx.runner, "torch": TorchRunner(model, threads=1),
                                  "torchscript": TracedRunner(model)}
    columns = raw_log(max(sizes), seed=1)
    results = []
    for size in sizes:
        feeds = onnx.encode({k: v[:size] for k, v in columns.items()})
        reference = runners["torch"](feeds)
        times: dict[str, list[float]] = {b: [] for b in runners}
        calls = max(1, 2000 // size)
        for _ in range(repeats):  # interleaved, so every runtime sees the same machine load
            for backend, runner in runners.items():
                start = time.perf_counter()
                for _ in range(calls):
                    out = runner(feeds)
                times[backend].append((time.perf_counter() - start) / calls)
                assert max(float(np.abs(o - r).max()) for o, r in zip(out, reference, strict=True)) < 1e-4, backend
        for backend, ts in times.items():
            median = statistics.median(ts)
            results.append({"rows": size, "backend": backend, "ms_per_batch": median * 1e3,
                            "rows_per_s": size / median})
    return results


# ---- 2. the model alone, and request encoding -----------------------------------------------------------
def request_bodies(candidates: int, count: int = 16) -> list[bytes]:
    """``count`` requests of one user and ``candidates`` items each, as JSON bytes."""
    columns = raw_log(candidates * count, seed=2)
    bodies = []
    for r in range(count):
        rows = range(r * candidates, (r + 1) * candidates)
        user = {f: columns[f][rows[0]] for f in USER_FEATURES}
        items = [{f: columns[f][i] for f in columns if f not in USER_FEATURES and f not in ("click", "conversion")}
                 for i in rows]
        bodies.append(json.dumps({"user": user, "candidates": items}).encode())
    return bodies


def request_columns(body: bytes) -> dict[str, list[Any]]:
    """A request's raw columns, merged as the service merges them (a candidate's value, else the user's)."""
    request = json.loads(body)
    user, candidates = request.get("user", {}), request["candidates"]
    names = set(user).union(*candidates)
    return {name: [c.get(name, user.get(name)) for c in candidates] for name in names}


def bench_model(predictor: Predictor, bodies: list[bytes], repeats: int = 15) -> dict[str, Any]:
    """ONNX Runtime alone on the requests' encoded inputs (one call per request)."""
    feeds = [predictor.encode(request_columns(b)) for b in bodies]
    rows = len(next(iter(feeds[0].values())))
    per_call = median_seconds(lambda: [predictor.runner(f) for f in feeds], 1, repeats) / len(feeds)
    return {"rows": rows, "ms_per_call": per_call * 1e3, "rows_per_s": rows / per_call, "load": load_average()}


def bench_encoding(predictor: Predictor, bodies: list[bytes], repeats: int = 15) -> dict[str, Any]:
    """Median CPU time of this thread (``time.thread_time``: what the work costs, not how long other processes
    on a shared machine kept it waiting) to parse + validate, and to encode, one request."""
    encoder = RequestEncoder(predictor.schema, predictor.encoders, max_candidates=10_000)
    parsed = [encoder.parse(b) for b in bodies]
    parse = median_seconds(lambda: [encoder.parse(b) for b in bodies], 1, repeats, time.thread_time) / len(bodies)
    encode = median_seconds(lambda: [encoder.encode(r) for r in parsed], 1, repeats, time.thread_time) / len(bodies)
    return {"parse_ms": parse * 1e3, "encode_ms": encode * 1e3, "total_ms": (parse + encode) * 1e3,
            "load": load_average()}


# ---- 3. http -----------------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def commit_of(src: Path) -> str:
    """The source tree's commit (short), ``+changes`` when it has uncommitted changes."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(src), *args], capture_output=True, text=True).stdout.strip()

    return (git("rev-parse", "--short", "HEAD") or "?") + ("+changes" if git("status", "--porcelain", ".") else "")


@dataclass(frozen=True)
class Tree:
    """A source tree to measure: its ``src`` directory and the Python (with its dependencies) to run it."""

    src: Path
    python: str

    def mtrec(self, *args: str) -> list[str]:
        return [self.python, "-m", "mtrec.cli", *args]

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "PYTHONPATH": str(self.src)}


def thread_cpu_seconds(pid: int) -> tuple[float, float] | None:
    """CPU seconds (user + system) of process ``pid``'s main thread and of its other threads together, from
    /proc (Linux); None where there is no /proc."""
    tick = os.sysconf("SC_CLK_TCK")
    main = other = 0.0
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()  # after the command name, which may hold spaces
            seconds = (int(fields[11]) + int(fields[12])) / tick  # utime, stime
            main, other = (main + seconds, other) if int(tid) == pid else (main, other + seconds)
    except OSError:
        return None
    return main, other


def start_server(tree: Tree, run: Path, port: int, extra: list[str]) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(tree.mtrec("serve", str(run), "--host", HOST, "--port", str(port), *extra), env=tree.env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited: {proc.stderr.read().decode() if proc.stderr else ''}")
        try:
            with socket.create_connection((HOST, port), timeout=1) as s:
                s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                if s.recv(12).endswith(b"200"):
                    return proc
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("the server did not answer /healthz within 120 s")


def http_request(body: bytes) -> bytes:
    return (b"POST /v1/score HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)


_LENGTH = re.compile(rb"\r\ncontent-length: *(\d+)", re.IGNORECASE)


async def _exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes) -> tuple[int, bytes]:
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    length = _LENGTH.search(head)
    body = await reader.readexactly(int(length.group(1))) if length else b""
    return int(head[9:12]), body


async def load(port: int, bodies: list[bytes], concurrency: int, duration: float, max_requests: int,
               candidates: int) -> dict[str, Any]:
    """``concurrency`` keep-alive connections, each sending the next request as soon as its answer is in."""
    requests = [http_request(b) for b in bodies]
    latencies: list[float] = []
    errors = sent = 0

    async def connect(k: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        reader, writer = await asyncio.open_connection(HOST, port)
        status, body = await _exchange(reader, writer, requests[k % len(requests)])  # warm-up, checked
        if status != 200 or len(orjson.loads(body)["scores"]) != candidates:
            raise RuntimeError(f"unexpected answer {status}: {body[:300]!r}")
        return reader, writer

    async def send(k: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, stop: float) -> None:
        nonlocal errors, sent
        i = k
        while time.perf_counter() < stop and sent < max_requests:
            sent += 1
            start = time.perf_counter()
            status, _ = await _exchange(reader, writer, requests[i % len(requests)])
            latencies.append(time.perf_counter() - start)
            errors += status != 200
            i += concurrency
        writer.close()

    connections = await asyncio.gather(*(connect(k) for k in range(concurrency)))
    began = time.perf_counter()
    await asyncio.gather(*(send(k, r, w, began + duration) for k, (r, w) in enumerate(connections)))
    elapsed = time.perf_counter() - began
    ms = np.array(latencies) * 1e3
    return {"concurrency": concurrency, "requests": len(latencies), "errors": errors, "seconds": elapsed,
            "requests_per_s": len(latencies) / elapsed, "p50_ms": float(np.percentile(ms, 50)),
            "p95_ms": float(np.percentile(ms, 95)), "p99_ms": float(np.percentile(ms, 99))}


def run_load(port: int, bodies: list[bytes], concurrency: int, duration: float, max_requests: int,
             candidates: int) -> dict[str, Any]:
    try:
        import uvloop

        factory: Callable[[], asyncio.AbstractEventLoop] | None = uvloop.new_event_loop
    except ImportError:
        factory = None
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(load(port, bodies, concurrency, duration, max_requests, candidates))


def bench_http(tree: Tree, run: Path, bodies: list[bytes], levels: list[int], candidates: int, duration: float,
               max_requests: int, server_args: list[str]) -> list[dict[str, Any]]:
    port = free_port()
    server = start_server(tree, run, port, ["--max-candidates", str(max(candidates, 1000)), *server_args])
    commit = commit_of(tree.src)
    try:
        results = []
        for c in levels:
            server_before, client_before = thread_cpu_seconds(server.pid), time.process_time()
            result = run_load(port, bodies, c, duration, max_requests, candidates)
            server_after, per_request = thread_cpu_seconds(server.pid), 1e3 / max(result["requests"], 1)
            result.update(commit=commit, server_args=" ".join(server_args), load=load_average(),
                          client_cpu_ms=(time.process_time() - client_before) * per_request)
            cpu = ""
            if server_before and server_after and "--workers" not in server_args:  # else: the process manager
                result["loop_cpu_ms"] = (server_after[0] - server_before[0]) * per_request
                result["scoring_cpu_ms"] = (server_after[1] - server_before[1]) * per_request
                cpu = (f"; CPU ms/request: event loop {result['loop_cpu_ms']:.3f}, "
                       f"scoring {result['scoring_cpu_ms']:.3f}")
            results.append(result)
            print(f"  http {commit} {' '.join(server_args)} c={c}: {result['requests_per_s']:.1f} req/s  "
                  f"p50 {result['p50_ms']:.1f} ms  p95 {result['p95_ms']:.1f}  p99 {result['p99_ms']:.1f}  "
                  f"({result['requests']} requests, {result['errors']} errors{cpu}, load generator "
                  f"{result['client_cpu_ms']:.3f}; {result['load']})", flush=True)
        return results
    finally:
        server.terminate()
        server.wait(timeout=30)


# ---- 5. batch scoring --------------------------------------------------------------------------------------
def scoring_idle(predictor: Predictor, source: Path, out: Path) -> dict[str, float]:
    """This tree's ``score_file`` in this process, the runtime calls timed: the seconds in which the scoring
    thread had nothing to score (the run's time less the time in the runtime), which the machine's load moves
    much less than rows/s."""
    runner, busy = predictor.runner, 0.0

    def timed(feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        nonlocal busy
        start = time.perf_counter()
        try:
            return runner(feeds)
        finally:
            busy += time.perf_counter() - start

    predictor.runner = timed
    try:
        seconds = score_file(predictor, source, out, progress=False).seconds
    finally:
        predictor.runner = runner
    return {"seconds": seconds, "idle_s": seconds - busy, "busy": busy / seconds}


def bench_predict(trees: list[Tree], run: Path, predictor: Predictor, rows: int, repeats: int
                  ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """``mtrec predict`` of each source tree, and ONNX Runtime alone on the same rows (before and after);
    ``repeats`` rounds, the trees taking turns in each. Then this tree's scoring-thread idle time (median of
    ``repeats`` in-process runs, :func:`scoring_idle`)."""
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        columns = raw_log(rows, seed=3)
        del columns["click"], columns["conversion"]
        source = write_csv(columns, Path(tmp) / "requests.csv")
        features, reading = input_columns(predictor.schema), input_source()
        layout = read_layout(source, reading)
        feeds = [predictor.encode(feature_columns(chunk, features, layout))
                 for chunk in iter_chunks(source, reading, layout, layout.names, DEFAULT_CHUNK_ROWS)]

        def model_only() -> float:
            start = time.perf_counter()
            for f in feeds:
                predictor.score(f)
            return rows / (time.perf_counter() - start)

        for tree in [t for _ in range(repeats) for t in trees]:
            alone = [model_only()]
            start = time.perf_counter()
            done = subprocess.run(tree.mtrec("predict", str(run), "--input", str(source), "--out",
                                             str(Path(tmp) / "scores.csv")), env=tree.env,
                                  capture_output=True, text=True, check=True)
            wall = time.perf_counter() - start
            alone.append(model_only())
            reported = re.search(r"scored ([\d,]+) rows in ([\d.]+) s \(([\d,]+) rows/s", done.stdout)
            assert reported, done.stdout
            result = {"commit": commit_of(tree.src), "rows": rows,
                      "rows_per_s": float(reported.group(3).replace(",", "")),
                      "scoring_s": float(reported.group(2)), "wall_s": wall,
                      "model_rows_per_s": statistics.mean(alone), "model_before_after": alone, "load": load_average()}
            result["ratio"] = result["rows_per_s"] / result["model_rows_per_s"]
            results.append(result)
            print(f"  predict {result['commit']}: {result['rows_per_s']:,.0f} rows/s; ONNX Runtime alone on the same "
                  f"rows {result['model_rows_per_s']:,.0f} rows/s ({alone[0]:,.0f} before, {alone[1]:,.0f} after): "
                  f"{result['ratio']:.0%} ({result['load']})",
                  flush=True)
        idle = [scoring_idle(predictor, source, Path(tmp) / "idle.csv") for _ in range(repeats)]
    for commit in dict.fromkeys(r["commit"] for r in results):
        ratios = [r["ratio"] for r in results if r["commit"] == commit]
        print(f"  predict {commit}: median ratio {statistics.median(ratios):.0%} of {len(ratios)} runs "
              f"({', '.join(f'{x:.0%}' for x in ratios)})", flush=True)
    median = {k: statistics.median(i[k] for i in idle) for k in idle[0]}
    median.update(commit=commit_of(HERE), load=load_average())
    print(f"  predict {median['commit']} in this process: {median['seconds']:.2f} s, the scoring thread idle "
          f"{median['idle_s']:.2f} s ({median['busy']:.0%} busy; median of {repeats}; {median['load']})", flush=True)
    return results, median


# ---- report -----------------------------------------------------------------------------------------------
def markdown(results: dict[str, Any]) -> str:
    """The results as the Markdown tables of docs/serving.md."""
    lines: list[str] = []
    model = results.get("model_rows_per_s")
    if "http" in results:
        lines += ["| commit | concurrency | requests/s | x candidates / model alone | p50 ms | p95 ms | p99 ms "
                  "| requests (errors) | CPU ms/request: event loop, scoring, load generator | load |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
        for r in results["http"]:
            ratio = f"{r['requests_per_s'] * results['candidates'] / model:.0%}" if model else "-"
            cpu = ", ".join(f"{r[k]:.3f}" if k in r else "-"
                            for k in ("loop_cpu_ms", "scoring_cpu_ms", "client_cpu_ms"))
            lines.append(f"| {r['commit']} | {r['concurrency']} | {r['requests_per_s']:.1f} | {ratio} "
                         f"| {r['p50_ms']:.1f} | {r['p95_ms']:.1f} | {r['p99_ms']:.1f} "
                         f"| {r['requests']} ({r['errors']}) | {cpu} | {r['load']} |")
    if model:
        calls = " / ".join(f"{m['ms_per_call']:.2f} ms" for m in results["model"])
        lines += ["", f"ONNX Runtime alone on the same requests' rows: {model:,.0f} rows/s ({calls} per "
                      f"{results['candidates']} rows, before / after the HTTP runs)"]
    if "encoding" in results:
        e = results["encoding"]
        lines += ["", f"encoding one {results['candidates']}-candidate request (CPU time): {e['total_ms']:.3f} ms "
                      f"(parse + validate {e['parse_ms']:.3f} ms, encode {e['encode_ms']:.3f} ms; {e['load']})"]
    if "workers" in results:
        lines += ["", "| worker processes | concurrency | requests/s | p50 ms | p99 ms | errors | load |",
                  "|---:|---:|---:|---:|---:|---:|---|"]
        lines += [f"| {r['server_args'].split()[-1]} | {r['concurrency']} | {r['requests_per_s']:.1f} "
                  f"| {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['errors']} | {r['load']} |"
                  for r in results["workers"]]
    if "predict" in results:
        lines += ["", "| commit | mtrec predict rows/s | ONNX Runtime alone, same rows | ratio | scoring s | wall s "
                      "| load |", "|---|---:|---:|---:|---:|---:|---|"]
        lines += [f"| {b['commit']} | {b['rows_per_s']:,.0f} | {b['model_rows_per_s']:,.0f} | {b['ratio']:.0%} "
                  f"| {b['scoring_s']:.1f} | {b['wall_s']:.1f} | {b['load']} |" for b in results["predict"]]
        i = results["predict_idle"]
        lines += ["", f"{i['commit']}, score_file in the benchmark's process: {i['seconds']:.2f} s, the scoring thread "
                      f"idle {i['idle_s']:.2f} s ({i['busy']:.0%} busy; {i['load']})"]
    if "runtimes" in results:
        lines += ["", "| rows per batch | ONNX Runtime | eager PyTorch | TorchScript (traced) |",
                  "|---:|---:|---:|---:|"]
        by = {(r["rows"], r["backend"]): r for r in results["runtimes"]}
        for rows in sorted({r["rows"] for r in results["runtimes"]}):
            cells = [f"{by[rows, b]['ms_per_batch']:.2f} ms ({by[rows, b]['rows_per_s']:,.0f} rows/s)"
                     for b in ("onnx", "torch", "torchscript")]
            lines.append(f"| {rows} | {' | '.join(cells)} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, help="run directory to serve (default: make one)")
    parser.add_argument("--before", type=Path, help="another source tree (its src/) to measure beside this one")
    parser.add_argument("--before-python", help="the Python to run it with (default: its checkout's .venv, if any)")
    parser.add_argument("--duration", type=float, default=15.0, help="seconds of load per concurrency level")
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument("--workers-concurrency", type=int, default=16)
    parser.add_argument("--candidates", type=int, default=100)
    parser.add_argument("--max-requests", type=int, default=100_000, help="cap on requests per level")
    parser.add_argument("--predict-rows", type=int, default=200_000)
    parser.add_argument("--predict-repeats", type=int, default=3, help="runs of `mtrec predict` per source tree")
    parser.add_argument("--skip", default="", help="comma-separated sections to skip: "
                                                   "model,encoding,http,workers,predict,runtimes")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    print(f"machine: {platform.platform()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"python {platform.python_version()}; {load_average()}", flush=True)
    torch.set_num_threads(1)
    here = Tree(HERE, sys.executable)
    trees = [here]
    if args.before:
        venv = args.before.resolve().parent / ".venv" / "bin" / "python"
        trees.insert(0, Tree(args.before.resolve(), args.before_python or str(venv if venv.exists() else here.python)))
    with tempfile.TemporaryDirectory() as tmp:
        run = args.run or make_run(Path(tmp))
        predictor = Predictor.from_run(run, backend="onnx", threads=1)
        bodies = request_bodies(args.candidates)
        results: dict[str, Any] = {"run": str(args.run or "generated"), "candidates": args.candidates, "model": []}
        if "model" not in skip:
            results["model"].append(bench_model(predictor, bodies))
        if "encoding" not in skip:
            results["encoding"] = e = bench_encoding(predictor, bodies)
            print(f"  encoding: {e['total_ms']:.3f} ms per request ({e['load']})", flush=True)
        if "http" not in skip:
            levels = [int(c) for c in args.concurrency.split(",")]
            results["http"] = [r for tree in trees for r in bench_http(
                tree, run, bodies, levels, args.candidates, args.duration, args.max_requests, [])]
        if "model" not in skip:
            results["model"].append(bench_model(predictor, bodies))
            results["model_rows_per_s"] = statistics.mean(m["rows_per_s"] for m in results["model"])
            print(f"  ONNX Runtime alone: {results['model_rows_per_s']:,.0f} rows/s", flush=True)
        if "workers" not in skip:
            results["workers"] = [r for n in (1, 2) for r in bench_http(
                here, run, bodies, [args.workers_concurrency], args.candidates, args.duration, args.max_requests,
                ["--workers", str(n)])]
        if "predict" not in skip:
            results["predict"], results["predict_idle"] = bench_predict(trees, run, predictor, args.predict_rows,
                                                                        args.predict_repeats)
        if "runtimes" not in skip:
            results["runtimes"] = bench_runtimes(run)
    print(markdown(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
