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
from mtrec.training.config import TrainConfig


def run_demo(
    out_dir: str | Path,
    data: str = "synthetic:easy",
    models: list[str] | None = None,
    train: TrainConfig | None = None,
    log: Callable[[str], None] = tqdm.write,
) -> str:
    """Train each model once on ``data``; write ``results.json``, ``results.md``, ``auc.png``, the learning
    curves and one run directory per model under ``out_dir``. Returns the Markdown table."""
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
    return comparison_table(results["runs"], table_metrics(results["runs"]))
