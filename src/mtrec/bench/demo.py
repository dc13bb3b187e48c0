"""The main job: every registered model trained on synthetic data, compared with the oracle."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from mtrec.bench.report import comparison_table, plot_auc_bars
from mtrec.data.source import load_data
from mtrec.io import atomic_write_text
from mtrec.models import list_models
from mtrec.training.config import RunConfig, TrainConfig
from mtrec.training.run import train_run


def run_demo(
    out_dir: str | Path,
    data: str = "synthetic:easy",
    models: list[str] | None = None,
    train: TrainConfig | None = None,
    log: Callable[[str], None] = tqdm.write,
) -> str:
    """Train each model once on ``data``; write ``results.json``, ``results.md``, ``auc.png`` and one run
    directory per model under ``out_dir``. Returns the Markdown table."""
    out = Path(out_dir)
    dataset = load_data(data)
    train = train or TrainConfig()
    runs: list[dict[str, Any]] = []
    for name in models or list_models():
        log(f"--- {name} ---")
        config = RunConfig(model=name, data=data, train=train)
        runs.append(train_run(config, out / "runs" / name, dataset=dataset, log=log))
    table = comparison_table(runs)
    settings = (f"Same settings for every model: embedding 16 (model default), batch {train.batch_size}, "
                f"Adam lr {train.lr}, up to {train.epochs} epochs with early stopping (patience "
                f"{train.patience}) on mean validation AUC, seed {train.seed}.")
    atomic_write_text(out / "results.json", json.dumps(runs, indent=2) + "\n")
    atomic_write_text(out / "results.md", f"# mtrec demo: {data}\n\n{settings}\n\n{table}\n")
    plot_auc_bars(runs, out / "auc.png")
    return table
