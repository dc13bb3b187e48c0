"""Serving speed: the HTTP service under load on loopback, the two inference runtimes, and batch scoring.

1. runtimes: ONNX Runtime vs eager PyTorch vs TorchScript (traced) on encoded batches of 100 and 8192
   rows (median time per batch over interleaved repeats), in this process, one thread each;
2. http: ``mtrec serve`` in a subprocess on 127.0.0.1; requests of ``--candidates`` candidates (one user,
   distinct items) sent by ``--concurrency`` concurrent keep-alive clients for ``--duration`` seconds each
   (and at most ``--max-requests``): requests/s, candidates/s and p50/p95/p99 latency;
3. batch: ``mtrec predict`` on a raw CSV of ``--predict-rows`` rows in a subprocess: rows/s as reported by
   the command (reading, encoding, scoring and writing; process start-up and model load excluded) and the
   command's wall time.

Without ``--run``, a run is made first: a raw CSV shaped like a click/conversion log (user, item,
category, brand, shop, city, 3 more categorical fields, 4 dense fields and click/cart histories of up to
20 items; 30k rows) is prepared with ``mtrec.data.prepare`` and MMoE (the registry defaults: embedding 16,
4 experts of 256-128, towers of 64) is trained on it for one epoch.

    python benchmarks/serving.py [--run RUN_DIR] [--duration 30] [--concurrency 1,8,32] [--candidates 100]
                                 [--backend onnx] [--predict-rows 200000] [--skip runtimes,http,batch]

Only 127.0.0.1 is ever contacted. Figures on a shared machine move with its load: quote medians of runs.
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
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import torch

from mtrec.export.onnx import random_features
from mtrec.export.scoring import ScoringModule, feature_inputs, input_names
from mtrec.objectives.scorer import Scorer
from mtrec.serving.predictor import Predictor, Runner, TorchRunner
from mtrec.training.checkpoint import load_model

HOST = "127.0.0.1"
SEQ_LEN = 20
ITEMS = 5000


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


# ---- 1. runtimes -------------------------------------------------------------------------------------------
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


# ---- 2. http ------------------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def start_server(run: Path, port: int, backend: str, max_candidates: int, extra: list[str]
                 ) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1] / "src"),
                                                       os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-m", "mtrec.cli", "serve", str(run), "--host", HOST, "--port", str(port),
                             "--backend", backend, "--max-candidates", str(max_candidates), *extra], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited: {proc.stderr.read().decode() if proc.stderr else ''}")
        try:
            if httpx.get(f"http://{HOST}:{port}/healthz", timeout=1).status_code == 200:
                return proc
        except httpx.TransportError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("the server did not answer /healthz within 120 s")


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


async def load(url: str, bodies: list[bytes], concurrency: int, duration: float, max_requests: int
               ) -> dict[str, Any]:
    latencies: list[float] = []
    errors = 0
    sent = 0
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=30) as client:
        stop = time.perf_counter() + duration

        async def worker(k: int) -> None:
            nonlocal errors, sent
            i = k
            while time.perf_counter() < stop and sent < max_requests:
                sent += 1
                start = time.perf_counter()
                response = await client.post("/v1/score", content=bodies[i % len(bodies)],
                                             headers={"content-type": "application/json"})
                latencies.append(time.perf_counter() - start)
                errors += response.status_code != 200
                i += concurrency

        headers = {"content-type": "application/json"}
        for k in range(concurrency):  # warm-up: one request per connection
            await client.post("/v1/score", content=bodies[k % len(bodies)], headers=headers)
        began = time.perf_counter()
        stop = began + duration
        await asyncio.gather(*(worker(k) for k in range(concurrency)))
        elapsed = time.perf_counter() - began
    ms = np.array(latencies) * 1e3
    return {"concurrency": concurrency, "requests": len(latencies), "errors": errors, "seconds": elapsed,
            "requests_per_s": len(latencies) / elapsed, "p50_ms": float(np.percentile(ms, 50)),
            "p95_ms": float(np.percentile(ms, 95)), "p99_ms": float(np.percentile(ms, 99))}


def bench_http(run: Path, backend: str, concurrencies: list[int], candidates: int, duration: float,
               max_requests: int, server_args: list[str]) -> list[dict[str, Any]]:
    port = free_port()
    server = start_server(run, port, backend, max(candidates, 1000), server_args)
    try:
        bodies = request_bodies(candidates)
        results = []
        for c in concurrencies:
            result = asyncio.run(load(f"http://{HOST}:{port}", bodies, c, duration, max_requests))
            result.update(backend=backend, candidates=candidates,
                          candidates_per_s=result["requests_per_s"] * candidates)
            results.append(result)
            print(f"  http {backend} c={c}: {result['requests_per_s']:.1f} req/s  p50 {result['p50_ms']:.1f} ms  "
                  f"p95 {result['p95_ms']:.1f}  p99 {result['p99_ms']:.1f}  ({result['requests']} requests, "
                  f"{result['errors']} errors)", flush=True)
        return results
    finally:
        server.terminate()
        server.wait(timeout=30)


# ---- 3. batch scoring --------------------------------------------------------------------------------------
def bench_batch(run: Path, rows: int, backend: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        columns = raw_log(rows, seed=3)
        del columns["click"], columns["conversion"]
        source = write_csv(columns, Path(tmp) / "requests.csv")
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "mtrec.cli", "predict", str(run), "--input", str(source),
                               "--out", str(Path(tmp) / "scores.csv"), "--backend", backend], env=env,
                              capture_output=True, text=True, check=True)
        wall = time.perf_counter() - start
    reported = re.search(r"scored ([\d,]+) rows in ([\d.]+) s \(([\d,]+) rows/s", done.stdout)
    assert reported, done.stdout
    return {"rows": rows, "backend": backend, "rows_per_s": float(reported.group(3).replace(",", "")),
            "scoring_s": float(reported.group(2)), "wall_s": wall}


def markdown(results: dict[str, Any]) -> str:
    """The results as the Markdown tables of docs/serving.md."""
    lines: list[str] = []
    if "http" in results:
        lines += ["| concurrency | requests/s | candidates/s | p50 ms | p95 ms | p99 ms | requests (errors) |",
                  "|---:|---:|---:|---:|---:|---:|---:|"]
        lines += [f"| {r['concurrency']} | {r['requests_per_s']:.1f} | {r['candidates_per_s']:,.0f} "
                  f"| {r['p50_ms']:.1f} | {r['p95_ms']:.1f} | {r['p99_ms']:.1f} | {r['requests']} ({r['errors']}) |"
                  for r in results["http"]]
    if "batch" in results:
        b = results["batch"]
        lines += ["", f"mtrec predict ({b['backend']}): {b['rows']:,} rows, {b['rows_per_s']:,.0f} rows/s "
                      f"({b['scoring_s']:.1f} s; {b['wall_s']:.1f} s with process start-up and model load)"]
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
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of load per concurrency level")
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument("--candidates", type=int, default=100)
    parser.add_argument("--max-requests", type=int, default=200_000, help="cap on requests per level")
    parser.add_argument("--backend", default="onnx", choices=["onnx", "torch"],
                        help="runtime of the HTTP and batch runs")
    parser.add_argument("--predict-rows", type=int, default=200_000)
    parser.add_argument("--server-args", default="", help="extra `mtrec serve` options, e.g. '--inference-workers 2'")
    parser.add_argument("--skip", default="", help="comma-separated sections to skip: runtimes,http,batch")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    print(f"machine: {platform.platform()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"python {platform.python_version()}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        run = args.run or make_run(Path(tmp))
        results: dict[str, Any] = {"run": str(args.run or "generated")}
        if "runtimes" not in skip:
            results["runtimes"] = bench_runtimes(run)
            for r in results["runtimes"]:
                print(f"  runtime {r['backend']:11s} batch {r['rows']:5d}: {r['ms_per_batch']:.2f} ms "
                      f"({r['rows_per_s']:,.0f} rows/s)", flush=True)
        if "http" not in skip:
            levels = [int(c) for c in args.concurrency.split(",")]
            results["http"] = bench_http(run, args.backend, levels, args.candidates, args.duration, args.max_requests,
                                         args.server_args.split())
        if "batch" not in skip:
            results["batch"] = bench_batch(run, args.predict_rows, args.backend)
            b = results["batch"]
            print(f"  mtrec predict ({b['backend']}): {b['rows']:,} rows, {b['rows_per_s']:,.0f} rows/s "
                  f"(wall {b['wall_s']:.1f} s with start-up)", flush=True)
    print(markdown(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
