"""The measured properties of the synthetic ``interests`` preset: how far a mean-pooling MMoE, the same MMoE
with DIN-style target attention (``sequence_pooling: attention``) and a logistic regression on the raw
features stay below the oracle, per task, on ``synthetic:interests:ROWS``.

The preset states (``docs/synthetic.md``): a mean-pooling MMoE stays at least 0.01 AUC below the oracle on
at least one task at 1M rows while the target-attention model gets closer, and a logistic regression stays
at least 0.03 below. The two MMoE runs go through the bench runner (``OUT/bench``: resumable, finished runs
reused), with the same training settings, a budget that early stopping ends (the report says whether any
run hit the epoch limit)::

    PYTHONPATH=src python benchmarks/interests_properties.py --rows 200000 --out reports/interests_200k

Prints a Markdown table and writes it to ``OUT/properties.md`` (``OUT/properties.json`` the numbers).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path
from typing import Any

from mtrec.bench.report import hit_the_limit
from mtrec.bench.runner import parse_bench_config, run_bench
from mtrec.data.source import load_data
from mtrec.io import atomic_write_text
from mtrec.metrics.oracle import logistic_regression_auc, oracle_auc

MODELS = [
    {"name": "mmoe", "label": "mmoe-mean"},
    {"name": "mmoe", "label": "mmoe-attention", "options": {"sequence_pooling": "attention"}},
]


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--seed", type=int, default=0, help="training seed (the data is generator seed 0)")
    p.add_argument("--epochs", type=int, default=40, help="epoch limit; early stopping should end the runs")
    p.add_argument("--patience", type=int, default=2)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--linear-rows", type=int, default=200_000,
                   help="train rows the logistic regression is fitted on (at most)")
    p.add_argument("--out", type=Path, default=Path("reports/interests_properties"))
    return p.parse_args(argv)


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    spec = f"synthetic:interests:{args.rows}"
    bench = parse_bench_config({
        "name": "interests_properties", "models": MODELS, "model_options": {"embedding_dim": 16},
        "datasets": [spec], "seeds": [args.seed],
        "train": {"epochs": args.epochs, "patience": args.patience, "lr": args.lr, "batch_size": args.batch_size,
                  "num_threads": args.threads},
    }, origin="interests_properties")
    command = "PYTHONPATH=src python benchmarks/interests_properties.py " + shlex.join(argv)
    results = run_bench(bench, args.out / "bench", command=command, log=print)
    dataset = load_data(spec)
    oracle = oracle_auc(dataset, "test")
    linear = logistic_regression_auc(dataset, "test", max_train_rows=args.linear_rows)
    rows: list[dict[str, Any]] = [{"model": "logistic regression (raw features)", "test": linear, "limit": ""}]
    for run in results["runs"]:
        rows.append({"model": run["model"], "test": {t: m["auc"] for t, m in run["test"].items()},
                     "limit": f"best epoch {run['best_epoch']} of {run['epochs_run']}"
                              + (" (hit the limit)" if hit_the_limit(run) else "")})
    tasks = list(oracle)
    lines = [f"```bash\n{command}\n```", "",
             f"`{spec}`, test split; MMoE runs: training seed {args.seed}, embedding 16, batch "
             f"{args.batch_size}, Adam lr {args.lr}, up to {args.epochs} epochs, patience {args.patience}; "
             f"logistic regression fitted on at most {args.linear_rows:,} train rows.", "",
             "| model | " + " | ".join(f"{t} AUC | {t} gap to oracle" for t in tasks) + " | epochs |",
             "|---|" + "---|---|" * len(tasks) + "---|",
             "| **oracle** | " + " | ".join(f"{oracle[t]:.4f} | " for t in tasks) + " |"]
    for row in rows:
        cells = " | ".join(f"{row['test'][t]:.4f} | {oracle[t] - row['test'][t]:.4f}" for t in tasks)
        lines.append(f"| {row['model']} | {cells} | {row['limit']} |")
    text = "\n".join(lines) + "\n"
    print(text)
    atomic_write_text(args.out / "properties.md", text)
    atomic_write_text(args.out / "properties.json", json.dumps({"oracle": oracle, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
