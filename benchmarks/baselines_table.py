"""Every registered model (or a chosen few) x synthetic presets x seeds: the baseline comparison table.

Trains one run per (preset, model, weighting, seed) with :func:`mtrec.training.run.train_run` (same
settings for every model), skips runs whose ``metrics.json`` already exists (so an interrupted or
time-boxed invocation is resumed by running the same command again), then writes the Markdown table
(:func:`mtrec.bench.report.comparison_table`: test AUC mean ± std over seeds beside the oracle AUC,
parameters, median train samples/s) to ``OUT/table.md``, all runs' metrics to ``OUT/results.json`` and
an AUC bar chart to ``OUT/auc.png``.

    PYTHONPATH=src python benchmarks/baselines_table.py --out runs/baselines
    PYTHONPATH=src python benchmarks/baselines_table.py --out runs/weighting --presets conflict \\
        --models mmoe --weightings fixed uncertainty gradnorm

With several weightings, a row is labelled ``model + weighting``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from mtrec.data.synthetic import make_synthetic

from mtrec.bench.report import comparison_table, plot_auc_bars
from mtrec.data.dataset import PreparedDataset
from mtrec.io import atomic_write_text
from mtrec.models import list_models
from mtrec.training.config import RunConfig, TrainConfig
from mtrec.training.run import METRICS, train_run


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="output folder (runs, table.md, results.json)")
    parser.add_argument("--presets", nargs="+", default=["easy", "conflict", "esmm"])
    parser.add_argument("--models", nargs="+", default=None, help="default: every registered model")
    parser.add_argument("--weightings", nargs="+", default=["fixed"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="model seeds")
    parser.add_argument("--rows", type=int, default=100_000, help="synthetic rows per preset")
    parser.add_argument("--data-seed", type=int, default=0, help="seed of the synthetic world")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--patience", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--max-minutes", type=float, default=0.0,
                        help="start no new run after this many minutes (0: no limit); rerun to resume")
    return parser.parse_args()


def label(model: str, weighting: str, weightings: list[str]) -> str:
    """The table row of a run: the model, plus its weighting when several are compared."""
    return f"{model} + {weighting}" if len(weightings) > 1 else model


def run_dir(out: Path, preset: str, row: str, seed: int) -> Path:
    return out / preset / row.replace(" + ", "+") / f"seed{seed}"


def main() -> None:
    args = parse_args()
    models = args.models or list_models()
    jobs = [(preset, model, weighting, seed) for preset in args.presets for model in models
            for weighting in args.weightings for seed in args.seeds]
    start = time.monotonic()
    datasets: dict[str, PreparedDataset] = {}
    for preset, model, weighting, seed in jobs:
        row = label(model, weighting, args.weightings)
        out = run_dir(args.out, preset, row, seed)
        if (out / METRICS).exists():
            continue
        if args.max_minutes and time.monotonic() - start > 60 * args.max_minutes:
            print(f"stopped after {args.max_minutes} minutes: run the same command again to continue")
            return
        if preset not in datasets:
            datasets = {preset: make_synthetic(preset, rows=args.rows, seed=args.data_seed)}  # one in memory
        train = TrainConfig(epochs=args.epochs, patience=args.patience, batch_size=args.batch_size, lr=args.lr,
                            seed=seed, weighting=weighting, num_threads=args.threads, device="cpu")
        config = RunConfig(model=model, data=f"synthetic:{preset}:{args.rows}", train=train)
        t0 = time.monotonic()
        metrics = train_run(config, out, dataset=datasets[preset], log=lambda _: None)
        aucs = "  ".join(f"{t} {m['auc']:.4f}" for t, m in metrics["test"].items())
        print(f"{preset:9s} {row:22s} seed {seed}: {aucs}  ({metrics['epochs_run']} epochs, "
              f"{time.monotonic() - t0:.0f} s)", flush=True)
    runs: list[dict[str, Any]] = []
    for preset, model, weighting, seed in jobs:
        row = label(model, weighting, args.weightings)
        metrics = json.loads((run_dir(args.out, preset, row, seed) / METRICS).read_text())
        runs.append({**metrics, "model": row})
    table = comparison_table(runs)
    atomic_write_text(args.out / "table.md", table + "\n")
    atomic_write_text(args.out / "results.json", json.dumps(runs, indent=2) + "\n")
    plot_auc_bars(runs, args.out / "auc.png")
    print(table)


if __name__ == "__main__":
    main()
