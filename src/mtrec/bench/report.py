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
from matplotlib.figure import Figure

from mtrec.metrics import is_value_task, score_name, task_score
from mtrec.training.plots import epoch_axis, save_figure

VALUE_TABLE = ("gini", "spearman", "rmse", "r2")  # a value task's columns


def _defined(values: list[float | None]) -> np.ndarray:
    """The values that are defined: neither NaN nor None (a NaN is written as null in JSON)."""
    return np.asarray([v for v in values if v is not None and not math.isnan(v)], dtype=float)


def mean_std(values: list[float | None]) -> str:
    """``0.8123 ± 0.0012`` (or just the value for a single run)."""
    arr = _defined(values)
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


def _spread(values: list[float | None]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof 1; 0 for one value), undefined values left out."""
    arr = _defined(values)
    if arr.size == 0:
        return math.nan, 0.0
    return float(arr.mean()), float(arr.std(ddof=1)) if arr.size > 1 else 0.0


def hit_the_limit(run: dict[str, Any]) -> bool:
    """Whether the epoch limit, not early stopping, ended the run: its best validation epoch is its last
    (under ``train.select: per_task``, any task's)."""
    return int(run["best_epoch"]) >= int(run["epochs_run"]) - 1


def table_metrics(runs: list[dict[str, Any]]) -> tuple[str, ...]:
    """The metrics to tabulate for a binary task: AUC, GAUC where the runs report it (data with a user id),
    logloss. A value task has :data:`VALUE_TABLE`'s."""
    has_gauc = any("gauc" in m for r in runs for m in r["test"].values())
    return ("auc", "gauc", "logloss") if has_gauc else ("auc", "logloss")


def task_columns(runs: list[dict[str, Any]], metrics: tuple[str, ...]) -> list[tuple[str, str]]:
    """(task, metric) per column of a dataset's table: ``metrics`` for a binary task, :data:`VALUE_TABLE`
    for a value task (told apart by the first run's test metrics)."""
    first = runs[0]
    return [(t, m) for t in first["tasks"]
            for m in (VALUE_TABLE if is_value_task(first["test"][t]) else metrics)]


def comparison_table(runs: list[dict[str, Any]], metrics: tuple[str, ...] = ("auc", "logloss")) -> str:
    """A Markdown table per dataset: one row per model (mean ± std over seeds), the oracle row first
    where the data has one. ``metrics``: the columns of a binary task (a value task's are
    :data:`VALUE_TABLE`). "at limit" counts the model's runs that the epoch limit ended (best epoch =
    last, :func:`hit_the_limit`): their numbers are not those of converged training."""
    lines: list[str] = []
    by_data: dict[str, list[tuple[str, list[dict[str, Any]]]]] = defaultdict(list)
    for (data, model), group in group_runs(runs).items():
        by_data[data].append((model, group))
    for data, models in by_data.items():
        columns = task_columns(models[0][1], metrics)
        header = ["model", *[f"{t} {m}" for t, m in columns], "params", "train samples/s", "seeds", "at limit"]
        lines += [f"### {data}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        oracle = models[0][1][0].get("oracle")
        if oracle:
            cells = [f"{oracle[t][m]:.4f}" if m in oracle.get(t, {}) else "" for t, m in columns]
            lines.append("| **oracle** | " + " | ".join(cells) + " |  |  |  |  |")
        for model, group in models:
            cells = [mean_std([r["test"][t].get(m, math.nan) for r in group]) for t, m in columns]
            speed = float(np.median([r["train_samples_per_s"] for r in group]))
            limit = sum(hit_the_limit(r) for r in group)
            lines.append(f"| {model} | " + " | ".join(cells) + f" | {group[0]['params']:,} | {speed:,.0f} | "
                         f"{len(group)} | {limit}/{len(group)} |")
        lines.append("")
    return "\n".join(lines)


def scenario_table(runs: list[dict[str, Any]]) -> str:
    """A Markdown table per dataset with scenarios (runs whose metrics have ``test_by_scenario``): one row per
    model, one column per (scenario, task) holding the task's score (AUC, R² of a value task; mean ± std
    over seeds), the oracle row first where the data has one; empty when no run has scenarios."""
    lines: list[str] = []
    by_data: dict[str, list[tuple[str, list[dict[str, Any]]]]] = defaultdict(list)
    for (data, model), group in group_runs(runs).items():
        if group[0].get("test_by_scenario"):
            by_data[data].append((model, group))
    for data, models in by_data.items():
        first = models[0][1][0]
        columns = [(s, t) for s, tasks in first["test_by_scenario"].items() for t in tasks]
        header = ["model", *[f"{s} {t} {score_name(first['test'][t])}" for s, t in columns]]
        lines += [f"### {data}: per scenario", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        oracle = first.get("oracle_by_scenario")
        if oracle:
            cells = [f"{task_score(oracle[s][t]):.4f}" if t in oracle.get(s, {}) else "" for s, t in columns]
            lines.append("| **oracle** | " + " | ".join(cells) + " |")
        for model, group in models:
            cells = [mean_std([task_score(r["test_by_scenario"][s][t]) if t in r["test_by_scenario"].get(s, {})
                               else None for r in group]) for s, t in columns]
            lines.append(f"| {model} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def plot_auc_bars(runs: list[dict[str, Any]], path: Path) -> None:
    """Write :func:`auc_bars_figure` to ``path``."""
    save_figure(auc_bars_figure(runs), path)


def auc_bars_figure(runs: list[dict[str, Any]]) -> Figure:
    """Test score per model, AUC of a binary task and R² of a value task (:func:`~mtrec.metrics.task_score`;
    the mean over seeds, with the sample std as error bars where a model has several seeds): one row of
    panels per dataset (named on the left), one panel per task, each with its own scale so that small
    differences show; the oracle as a dashed line where known."""
    groups = group_runs(runs)
    rows: list[tuple[str, list[tuple[str, list[dict[str, Any]]]]]] = []
    for data in dict.fromkeys(d for d, _ in groups):
        rows.append((data, [(m, g) for (d, m), g in groups.items() if d == data]))
    columns = max(len(models[0][1][0]["tasks"]) for _, models in rows)
    width = max(4.0, 0.45 * max(len(models) for _, models in rows) + 1.5)
    fig, axes = plt.subplots(len(rows), columns, figsize=(width * columns, 4 * len(rows)), squeeze=False)
    for (data, models), row_axes in zip(rows, axes, strict=True):
        tasks = models[0][1][0]["tasks"]
        for ax in row_axes[len(tasks):]:
            ax.set_visible(False)
        for i, (ax, task) in enumerate(zip(row_axes, tasks, strict=False)):
            spread = [_spread([task_score(r["test"][task]) for r in g]) for _, g in models]
            name = score_name(models[0][1][0]["test"][task])
            x = np.arange(len(models))
            several = any(len(g) > 1 for _, g in models)
            ax.bar(x, [m for m, _ in spread], 0.7, yerr=[s for _, s in spread] if several else None, capsize=3,
                   color=f"C{i % 10}")
            values = [v for m, sd in spread if not math.isnan(m) for v in (m - sd, m + sd)]
            oracle = models[0][1][0].get("oracle")
            if oracle and oracle.get(task) and not math.isnan(task_score(oracle[task])):
                ax.axhline(task_score(oracle[task]), color="black", linestyle="--", linewidth=1, label="oracle")
                values.append(task_score(oracle[task]))
                ax.legend(fontsize=8)
            if values:
                pad = max(0.002, 0.25 * (max(values) - min(values)))
                ax.set_ylim(min(values) - pad if name == "R²" else max(0.0, min(values) - pad),
                            min(1.0, max(values) + pad))
            ax.set_xticks(x, [m for m, _ in models], rotation=35, ha="right")
            ax.set(title=f"{task}: test {name}" + (" (mean ± std)" if several else ""),
                   ylabel=f"{_wrapped(data)}\n{name}" if i == 0 else name)
            ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


def _wrapped(label: str, width: int = 28) -> str:
    """A dataset label broken at ``/`` or ``:`` into lines of about ``width`` characters (an axis label)."""
    lines = [""]
    for part in label.replace("/", "/\0").replace(":", ":\0").split("\0"):
        if lines[-1] and len(lines[-1]) + len(part) > width:
            lines.append("")
        lines[-1] += part
    return "\n".join(lines)


def plot_learning_curves_by_model(
    histories: dict[str, list[list[dict[str, Any]]]], tasks: list[str], path: Path, title: str = ""
) -> None:
    """Write :func:`learning_curves_by_model_figure` to ``path``."""
    save_figure(learning_curves_by_model_figure(histories, tasks, title), path)


def learning_curves_by_model_figure(
    histories: dict[str, list[list[dict[str, Any]]]], tasks: list[str], title: str = ""
) -> Figure:
    """Validation score per task (AUC of a binary task, R² of a value task) and total train loss by epoch,
    one line per model (mean over its seeds at each epoch that every still-running seed reached; runs
    stopped early contribute up to their stop).

    histories: model -> one ``history.jsonl`` row list per seed."""
    fig, axes = plt.subplots(1, len(tasks) + 1, figsize=(4.6 * (len(tasks) + 1), 4.0), squeeze=False)
    for k, (model, seeds) in enumerate(histories.items()):
        style = {"color": f"C{k % 10}", "linestyle": "-" if k < 10 else "--", "marker": ".", "label": model}
        epochs = max(len(h) for h in seeds)
        x = np.arange(epochs)
        for ax, task in zip(axes[0], tasks, strict=False):
            y = [_spread([task_score(h[e]["valid"][task]) for h in seeds if e < len(h)])[0] for e in range(epochs)]
            ax.plot(x, y, **style)
        loss = [_spread([sum(h[e]["train_loss"].values()) for h in seeds if e < len(h)])[0]
                for e in range(epochs)]
        axes[0][-1].plot(x, loss, **style)
    for ax, task in zip(axes[0], tasks, strict=False):
        name = score_name(next(iter(histories.values()))[0][0]["valid"][task])
        ax.set(title=f"validation {name}, {task}", ylabel=name)
    axes[0][-1].set(title="train loss (sum over tasks)", ylabel="loss")
    for ax in axes[0]:
        epoch_axis(ax)
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig
