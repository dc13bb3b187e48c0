"""The README's path on the embedded default: demo -> export -> predict -> serve, on the demo's own output."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pyarrow.csv as pa_csv
import pytest

from mtrec.bench.demo import run_demo
from mtrec.cli import main
from mtrec.data.source import load_data
from mtrec.export.model_file import array_feeds
from mtrec.serving.predictor import Predictor
from mtrec.training.config import TrainConfig
from procs import serve_process

DATA = "synthetic:easy:600"


def run_cli(argv: list[str]) -> int:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
        raise SystemExit(0)
    return int(exit_info.value.code or 0)


def test_a_synthetic_demo_run_exports_predicts_and_serves_raw_values(tmp_path: Path) -> None:
    demo = tmp_path / "demo"
    run_demo(demo, data=DATA, models=["mmoe"], log=lambda _: None,
             train=TrainConfig(epochs=1, batch_size=128, num_threads=1, prefetch=0))
    run = demo / "runs" / "synthetic_easy_600" / "mmoe" / "seed0"
    assert (run / "encoders.json").is_file()
    sample, request = demo / "sample.csv", json.loads((demo / "request.json").read_text())
    assert pa_csv.read_csv(sample)["user_id"][0].as_py().startswith("u")  # raw values, e.g. u17

    assert run_cli(["export", str(run), "--out", str(tmp_path / "mmoe.onnx")]) == 0
    assert (tmp_path / "mmoe.onnx").stat().st_size > 0

    assert run_cli(["predict", str(run), "--input", str(sample), "--out", str(tmp_path / "scores.csv")]) == 0
    scores = pa_csv.read_csv(tmp_path / "scores.csv")
    # the raw values score exactly as the rows they were written from
    dataset, predictor = load_data(DATA), Predictor.from_run(run)
    rows = np.asarray(dataset.splits["test"][: scores.num_rows])
    assert scores.num_rows == min(1000, dataset.split_size("test"))
    expected = predictor.score(array_feeds(dataset.sparse[rows], dataset.dense[rows],
                                           {k: v[rows] for k, v in dataset.sequences.items()}, dataset.schema))
    for task in predictor.task_names:
        np.testing.assert_allclose(scores[task].to_numpy(), expected[task], atol=1e-6)

    assert request["user"] and len(request["candidates"]) > 1
    with serve_process(run, "--workers", "2") as url, httpx.Client(base_url=url, timeout=30) as client:
        response = client.post("/v1/score", json=request)
        assert response.status_code == 200, response.text
        merged = {f: [c.get(f, request["user"].get(f)) for c in request["candidates"]] for f in predictor.feature_names}
        offline = predictor.predict(merged)
        for task in predictor.task_names:
            np.testing.assert_allclose([s[task] for s in response.json()["scores"]], offline[task], atol=1e-6)
        # concurrent new connections: the kernel hands them to whichever worker process is free to accept
        pids: set[int] = set()
        deadline = time.monotonic() + 90

        def ask() -> None:
            while len(pids) < 2 and time.monotonic() < deadline:
                pids.add(httpx.get(f"{url}/healthz", timeout=30).json()["pid"])

        with ThreadPoolExecutor(8) as pool:
            for done in [pool.submit(ask) for _ in range(8)]:
                done.result()
        assert len(pids) == 2
