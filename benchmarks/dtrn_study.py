"""DTRN on synthetic ``sequences``: test AUC per task beside the oracle, Shared-Bottom and MMoE (both fed
the histories by mean pooling), the TIM/TRM ablation, parameter counts and train throughput.

The data is fixed (``synthetic:sequences:ROWS``, generator seed 0); the seeds are training seeds (weight
initialisation and batch order), so every model sees the same rows and the comparison is paired. Every
model gets the same training settings. Each (variant, seed) run is written under ``OUT/runs/`` and reused
when its ``config.json`` matches, so the study can be run a few variants at a time::

    PYTHONPATH=src python benchmarks/dtrn_study.py --variants shared_bottom,mmoe
    PYTHONPATH=src python benchmarks/dtrn_study.py --variants dtrn --seeds 0
    PYTHONPATH=src python benchmarks/dtrn_study.py --table-only

The table (Markdown) is printed and written to ``OUT/results.md`` under the one command that reproduces
it (every setting spelled out; it reuses finished runs and trains the missing ones);
``OUT/results.json`` holds every run's metrics and ``OUT/auc.png`` the bars.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mtrec.bench.report import comparison_table, plot_auc_bars
from mtrec.data.batches import gather_batch
from mtrec.data.dataset import PreparedDataset
from mtrec.data.source import load_data
from mtrec.io import atomic_write_text
from mtrec.models import create_model, model_options
from mtrec.training.config import RunConfig, TrainConfig
from mtrec.training.run import train_run
from mtrec.training.rundir import finished_metrics
from stepping import train_step


@dataclass(frozen=True)
class Variant:
    key: str
    label: str
    model: str
    options: dict[str, Any] = field(default_factory=dict)


VARIANTS = (
    Variant("shared_bottom", "Shared-Bottom (mean-pooled histories)", "shared_bottom"),
    Variant("mmoe", "MMoE (mean-pooled histories)", "mmoe"),
    Variant("dtrn", "DTRN: TIM + TRM, towers", "dtrn"),
    Variant("dtrn_no_tim", "DTRN without TIM (one shared encoder)", "dtrn", {"use_tim": False}),
    Variant("dtrn_no_trm", "DTRN without TRM", "dtrn", {"use_trm": False}),
    Variant("dtrn_mmoe", "DTRN: TIM + TRM, MMoE top", "dtrn", {"backbone": "mmoe"}),
)
BY_KEY = {v.key: v for v in VARIANTS}


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--rows", type=int, default=100_000, help="rows of synthetic:sequences (default 100000)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="training seeds")
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--patience", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--threads", type=int, default=1, help="torch threads per run")
    p.add_argument("--variants", default=",".join(BY_KEY), help=f"comma-separated subset of {list(BY_KEY)}")
    p.add_argument("--out", type=Path, default=Path("reports/dtrn_study"))
    p.add_argument("--table-only", action="store_true", help="train nothing; tabulate the runs already in OUT")
    p.add_argument("--model-bound", type=int, default=0, metavar="REPEATS",
                   help="also measure model-bound train samples/s of the chosen variants (interleaved, median "
                        "of REPEATS rounds of 20 steps on in-memory batches) into OUT/model_bound.json")
    args = p.parse_args(argv)
    unknown = [k for k in args.variants.split(",") if k not in BY_KEY]
    if unknown:
        p.error(f"unknown variant(s) {unknown}; choose from {list(BY_KEY)}")
    return args


def run_config(variant: Variant, seed: int, args: argparse.Namespace) -> RunConfig:
    train = TrainConfig(
        epochs=args.epochs, patience=args.patience, batch_size=args.batch_size, lr=args.lr, seed=seed,
        num_threads=args.threads, eval_batch_size=2048,
    )
    return RunConfig(
        model=variant.model, data=f"synthetic:sequences:{args.rows}",
        model_options=model_options(variant.model, variant.options), train=train,
    )


def reproducing_command(args: argparse.Namespace, keys: list[str]) -> str:
    """The one command that trains (or reuses) every run in the table: all settings spelled out."""
    options = [
        "--rows", str(args.rows), "--seeds", *map(str, args.seeds), "--epochs", str(args.epochs),
        "--patience", str(args.patience), "--batch-size", str(args.batch_size), "--lr", str(args.lr),
        "--threads", str(args.threads), "--variants", ",".join(keys), "--out", str(args.out),
    ]
    return "PYTHONPATH=src python benchmarks/dtrn_study.py " + shlex.join(options)


def model_bound_speeds(
    dataset: PreparedDataset, variants: list[Variant], repeats: int, batch_size: int, steps: int = 20
) -> dict[str, float]:
    """Train samples/s of each variant stepped on the same in-memory batches (no data loading, no
    evaluation). The variants take turns within every round, so changing machine load hits them alike;
    the figure is the median over ``repeats`` rounds."""
    rows = np.asarray(dataset.splits["train"][: steps * batch_size])
    batches = [gather_batch(dataset, rows[i : i + batch_size]) for i in range(0, len(rows), batch_size)]
    steppers = {}
    for variant in variants:
        torch.manual_seed(0)
        steppers[variant.label] = train_step(create_model(variant.model, dataset.schema, **variant.options))
    samples: dict[str, list[float]] = {label: [] for label in steppers}
    for _ in range(repeats):
        for label, step in steppers.items():
            step(batches[0])  # warm-up
            start = time.perf_counter()
            for batch in batches:
                step(batch)
            samples[label].append(len(rows) / (time.perf_counter() - start))
    return {label: float(np.median(values)) for label, values in samples.items()}


def model_bound_note(speeds: dict[str, float], repeats: int) -> str:
    mmoe = speeds.get(BY_KEY["mmoe"].label)
    parts = [f"{label} {speed:,.0f}" + (f" ({speed / mmoe:.2f}x MMoE)" if mmoe else "")
             for label, speed in speeds.items()]
    return (f"Model-bound train samples/s (same in-memory batches of the train split, models interleaved, "
            f"median of {repeats} rounds of 20 steps): " + "; ".join(parts) + ".")


def speed_note(runs: list[dict[str, Any]]) -> str:
    """Median train samples/s of each DTRN variant relative to MMoE's."""
    speeds: dict[str, float] = {}
    for label in dict.fromkeys(r["model"] for r in runs):
        speeds[label] = float(np.median([r["train_samples_per_s"] for r in runs if r["model"] == label]))
    mmoe = speeds.get(BY_KEY["mmoe"].label)
    if not mmoe or not any(label.startswith("DTRN") for label in speeds):
        return ""
    parts = [f"{label}: {speed / mmoe:.2f}x" for label, speed in speeds.items() if label.startswith("DTRN")]
    return "Train samples/s relative to MMoE (median over the seeds): " + "; ".join(parts) + "."


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    variants = [BY_KEY[k] for k in args.variants.split(",")]
    dataset = None
    runs: list[dict[str, Any]] = []
    tabulated: list[str] = []
    for variant in VARIANTS:  # table order, whichever subset was trained now
        for seed in args.seeds:
            config = run_config(variant, seed, args)
            directory = args.out / "runs" / variant.key / f"seed{seed}"
            metrics = finished_metrics(directory, config)
            if metrics is None and variant in variants and not args.table_only:
                if dataset is None:
                    dataset = load_data(config.data)
                print(f"--- {variant.label}, seed {seed} ---", flush=True)
                metrics = train_run(config, directory, dataset=dataset, log=print, overwrite=True)
            if metrics is not None:
                runs.append({**metrics, "model": variant.label})
                tabulated += [variant.key] if variant.key not in tabulated else []
    bound_path = args.out / "model_bound.json"
    if args.model_bound > 0:
        dataset = dataset or load_data(f"synthetic:sequences:{args.rows}")
        torch.set_num_threads(args.threads)
        speeds = model_bound_speeds(dataset, variants, args.model_bound, args.batch_size)
        args.out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(bound_path, json.dumps({"repeats": args.model_bound, "speeds": speeds}, indent=2))
    if not runs:
        print("no finished runs to tabulate")
        return
    machine = runs[0]["machine"]
    settings = (
        f"Data: `synthetic:sequences:{args.rows}` (generator seed 0, its own train/valid/test split). "
        f"Every model: embedding 16, batch {args.batch_size}, Adam lr {args.lr}, up to {args.epochs} "
        f"epochs, early stopping on mean validation AUC (patience {args.patience}); test AUC/logloss as "
        f"mean ± std (ddof 1) over training seeds {args.seeds}. Machine: {os.cpu_count()} cores shared "
        f"with other jobs, {machine['threads']} torch thread(s), torch {machine['torch']}, "
        f"{platform.machine()}."
    )
    table = comparison_table(runs)
    notes = [speed_note(runs)]
    if bound_path.exists():
        bound = json.loads(bound_path.read_text())
        notes.append(model_bound_note(bound["speeds"], bound["repeats"]))
    text = f"```\n{reproducing_command(args, tabulated)}\n```\n\n{settings}\n\n{table}\n" + "\n\n".join(notes) + "\n"
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out / "results.md", text)
    atomic_write_text(args.out / "results.json", json.dumps(runs, indent=2) + "\n")
    plot_auc_bars(runs, args.out / "auc.png")


if __name__ == "__main__":
    main(sys.argv[1:])
