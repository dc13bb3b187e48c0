"""Comparison tables (Markdown) and plots from the ``metrics.json`` of several runs."""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from mtrec.io import atomic_write


def mean_std(values: list[float]) -> str:
    """``0.8123 ± 0.0012`` (or just the value for a single run)."""
    arr = np.asarray([v for v in values if not math.isnan(v)], dtype=float)
    if arr.size == 0:
        return "n/a"
    if arr.size == 1:
        return f"{arr[0]:.4f}"
    return f"{arr.mean():.4f} ± {arr.std(ddof=1):.4f}"


def group_runs(runs: list[dict[str, Any]]) -> dict[tuple[str, str], list[dict[str, Any]]]:
    """Runs grouped by (data, model), in first-seen order."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for run in runs:
        groups[(run["data"], run["model"])].append(run)
    return groups


def comparison_table(runs: list[dict[str, Any]], metrics: tuple[str, ...] = ("auc", "logloss")) -> str:
    """A Markdown table per dataset: one row per model (mean ± std over seeds), the oracle row first
    where the data has one."""
    lines: list[str] = []
    by_data: dict[str, list[tuple[str, list[dict[str, Any]]]]] = defaultdict(list)
    for (data, model), group in group_runs(runs).items():
        by_data[data].append((model, group))
    for data, models in by_data.items():
        tasks = models[0][1][0]["tasks"]
        header = ["model", *[f"{t} {m}" for t in tasks for m in metrics], "params", "train samples/s", "seeds"]
        lines += [f"### {data}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        oracle = models[0][1][0].get("oracle")
        if oracle:
            cells = [f"{oracle[t]['auc']:.4f}" if m == "auc" else "" for t in tasks for m in metrics]
            lines.append("| **oracle** | " + " | ".join(cells) + " |  |  |  |")
        for model, group in models:
            cells = [mean_std([r["test"][t][m] for r in group]) for t in tasks for m in metrics]
            speed = float(np.median([r["train_samples_per_s"] for r in group]))
            lines.append(f"| {model} | " + " | ".join(cells) + f" | {group[0]['params']:,} | {speed:,.0f} | "
                         f"{len(group)} |")
        lines.append("")
    return "\n".join(lines)


def plot_auc_bars(runs: list[dict[str, Any]], path: Path) -> None:
    """Test AUC per model per task with error bars (std over seeds), the oracle as a dashed line;
    one panel per dataset."""
    groups = group_runs(runs)
    datasets = list(dict.fromkeys(data for data, _ in groups))
    fig, axes = plt.subplots(1, len(datasets), figsize=(max(6, 1.2 * len(groups) / len(datasets) + 4) *
                                                         len(datasets), 4), squeeze=False)
    for ax, data in zip(axes[0], datasets, strict=True):
        models = [(m, g) for (d, m), g in groups.items() if d == data]
        tasks = models[0][1][0]["tasks"]
        width = 0.8 / len(tasks)
        x = np.arange(len(models))
        for i, task in enumerate(tasks):
            values = [[r["test"][task]["auc"] for r in g] for _, g in models]
            ax.bar(x + i * width, [np.mean(v) for v in values], width,
                   yerr=[np.std(v) for v in values], capsize=3, label=task)
            oracle = models[0][1][0].get("oracle")
            if oracle:
                ax.axhline(oracle[task]["auc"], color=f"C{i}", linestyle="--", linewidth=1,
                           label=f"{task} oracle")
        all_auc = [r["test"][t]["auc"] for _, g in models for r in g for t in tasks]
        ax.set_ylim(max(0.5, min(all_auc) - 0.03), min(1.0, max(all_auc) + 0.03))
        ax.set_xticks(x + width * (len(tasks) - 1) / 2, [m for m, _ in models], rotation=30, ha="right")
        ax.set(title=f"test AUC: {data}", ylabel="AUC")
        ax.legend(fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight"))
    plt.close(fig)
