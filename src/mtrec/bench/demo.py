"""The main job: the headline models and the key baselines trained on synthetic data, compared with the oracle.

A one-dataset, one-seed benchmark run by :func:`mtrec.bench.runner.run_bench`, so the demo's report has
the same form as any benchmark's. By default it trains :data:`DEMO_MODELS` (DCRNN and DTRN beside
Shared-Bottom, MMoE, PLE and ESMM) on :data:`DEMO_DATA`, the ``conflict`` preset, where what drives
conversion partly opposes what drives click, so that the ways of sharing measurably differ
(``docs/baselines.md``); ``models="all"`` trains every registered model.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

from tqdm.auto import tqdm

from mtrec.bench.report import comparison_table, table_metrics
from mtrec.bench.runner import ALL, BenchConfig, DatasetEntry, ModelEntry, run_bench
from mtrec.data.source import load_data
from mtrec.serving.samples import write_samples
from mtrec.training.config import TrainConfig

DEMO_DATA = "synthetic:conflict:100000"
DEMO_MODELS = ("shared_bottom", "mmoe", "ple", "esmm", "dcrnn", "dtrn")
# the demo's train settings over TrainConfig's defaults: docs/baselines.md's (patience 1), but at most 4
# epochs (6 there) so that the demo takes minutes, and one torch thread (on a 2-core machine shared with
# other jobs two threads trained Shared-Bottom 5x slower than one: docs/performance.md)
DEMO_TRAIN = {"epochs": 4, "patience": 1, "num_threads": 1}


def run_demo(
    out_dir: str | Path,
    data: str = DEMO_DATA,
    models: Sequence[str] | Literal["all"] = DEMO_MODELS,
    train: TrainConfig | None = None,
    log: Callable[[str], None] = tqdm.write,
) -> str:
    """Train each model of ``models`` (names, or ``"all"``: every registered model) once on ``data``;
    write ``results.json``, ``results.md``, ``auc.png``, the learning curves and one run directory per
    model under ``out_dir``, and (when the data has encoders, as synthetic data does) raw inputs for
    ``predict`` and ``serve``: ``sample.csv`` and ``request.json`` (:mod:`mtrec.serving.samples`).
    Returns the Markdown table."""
    train = train or TrainConfig.model_validate(DEMO_TRAIN)
    settings = {k: v for k, v in train.model_dump().items() if k != "seed"}
    config = BenchConfig(
        name=f"demo ({data})",
        models=ALL if models == ALL else [ModelEntry(m, m) for m in models],
        datasets=[DatasetEntry(label=data, spec=data)],
        seeds=[train.seed],
        train=settings,
    )
    results = run_bench(config, out_dir, log=log)
    write_samples(load_data(data), Path(out_dir))
    return comparison_table(results["runs"], table_metrics(results["runs"]))
