"""The main job: every registered model trained on synthetic data, compared with the oracle.

A one-dataset, one-seed benchmark run by :func:`mtrec.bench.runner.run_bench`, so the demo's report has
the same form as any benchmark's.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from tqdm.auto import tqdm

from mtrec.bench.report import comparison_table, table_metrics
from mtrec.bench.runner import ALL, BenchConfig, DatasetEntry, ModelEntry, run_bench
from mtrec.data.source import load_data
from mtrec.serving.samples import write_samples
from mtrec.training.config import TrainConfig


def run_demo(
    out_dir: str | Path,
    data: str = "synthetic:easy",
    models: list[str] | None = None,
    train: TrainConfig | None = None,
    log: Callable[[str], None] = tqdm.write,
) -> str:
    """Train each model once on ``data``; write ``results.json``, ``results.md``, ``auc.png``, the learning
    curves and one run directory per model under ``out_dir``, and (when the data has encoders, as synthetic
    data does) raw inputs for ``predict`` and ``serve``: ``sample.csv`` and ``request.json``
    (:mod:`mtrec.serving.samples`). Returns the Markdown table."""
    train = train or TrainConfig()
    settings = {k: v for k, v in train.model_dump().items() if k != "seed"}
    config = BenchConfig(
        name=f"demo ({data})",
        models=[ModelEntry(m, m) for m in models] if models else ALL,
        datasets=[DatasetEntry(label=data, spec=data)],
        seeds=[train.seed],
        train=settings,
    )
    results = run_bench(config, out_dir, log=log)
    write_samples(load_data(data), Path(out_dir))
    return comparison_table(results["runs"], table_metrics(results["runs"]))
