"""The main job: the headline models and the key baselines trained on synthetic data, compared with the oracle.

A one-dataset, one-seed benchmark run by :func:`mtrec.bench.runner.run_bench`, so the demo's report has
the same form as any benchmark's, plus a section saying in words what its table shows
(:func:`summary`). By default it trains :data:`DEMO_MODELS` (DCRNN and DTRN beside Shared-Bottom, MMoE,
PLE and ESMM) on :data:`DEMO_DATA`, the ``conflict`` preset, where what drives conversion partly opposes
what drives click, so that the ways of sharing measurably differ (``docs/baselines.md``); ``models="all"``
trains every registered model.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from tqdm.auto import tqdm

from mtrec.bench.report import comparison_table, table_metrics
from mtrec.bench.runner import ALL, BenchConfig, DatasetEntry, ModelEntry, run_bench
from mtrec.data.source import load_data
from mtrec.inspect.report import inspect_run
from mtrec.io import atomic_write_text
from mtrec.serving.samples import write_samples
from mtrec.training.config import TrainConfig

DEMO_DATA = "synthetic:conflict:60000"
DEMO_MODELS = ("shared_bottom", "mmoe", "ple", "esmm", "dcrnn", "dtrn")
HEADLINE_MODELS = ("dcrnn", "dtrn")
# The demo's train settings over TrainConfig's defaults, the same for every model. Batch 256 (four times
# the default's steps per epoch) brings every demo model to its best validation epoch within about three
# epochs at 60,000 rows; patience 0 stops a run at its first epoch without a better mean validation AUC
# (the best epoch is tested), which keeps the demo within minutes; the 10-epoch limit is a guard that no
# demo model reaches. One torch thread: on a 2-core machine shared with other jobs, two threads trained
# Shared-Bottom 5x slower than one (docs/performance.md).
DEMO_TRAIN = {"epochs": 10, "batch_size": 256, "patience": 0, "num_threads": 1}
DEMO_INSPECT_ROWS = 5000  # test rows each model's inspect report reads (seconds per model)

# Why the models of DEMO_MODELS stand where they do on a preset: what the preset's labels depend on
# (docs/synthetic.md) against what each model can represent.
PRESET_NOTES = {
    "conflict": (
        "On `conflict` what drives conversion partly opposes what drives click. Over three seeds "
        "(docs/baselines.md) the hard-sharing models (Shared-Bottom, MMoE) lose on click against PLE, whose "
        "task-specific experts keep part of each task apart, and DCRNN, whose tasks continue the shared "
        "cross recurrence with parameters of their own; one seed may reorder models that close. DTRN "
        "builds each task's bottom from the behaviour histories, with a "
        "transformer per task that attends to the candidate; on this preset the histories act only through "
        "their mean, which every model's mean pooling already carries, so that machinery has little to gain "
        "here, and DTRN is the slowest model per sample. The `interests` preset, where which history items "
        "matter depends on the candidate, is the one built for it (docs/dtrn.md)."
    ),
}


@dataclass(frozen=True)
class DemoResult:
    """What a demo wrote: the comparison table and its summary (both also in ``report``), and the files."""

    table: str  # Markdown comparison table
    summary: str  # what the table shows, in sentences
    report: Path  # results.md
    plots: list[Path]  # auc.png and the learning curves
    samples: list[Path]  # raw inputs for predict and serve (sample.csv, request.json); empty without encoders
    inspect_reports: list[Path]  # each model's `mtrec inspect` report (inspect.md in its run directory)


def run_demo(
    out_dir: str | Path,
    data: str = DEMO_DATA,
    models: Sequence[str] | Literal["all"] = DEMO_MODELS,
    train: TrainConfig | None = None,
    log: Callable[[str], None] = tqdm.write,
) -> DemoResult:
    """Train each model of ``models`` (names, or ``"all"``: every registered model) once on ``data``;
    write ``results.json``, ``results.md`` (with :func:`summary`), ``auc.png``, the learning curves and
    one run directory per model under ``out_dir``, and (when the data has encoders, as synthetic data
    does) raw inputs for ``predict`` and ``serve``: ``sample.csv`` and ``request.json``
    (:mod:`mtrec.serving.samples`), and each model's ``mtrec inspect`` report in its run directory's
    ``inspect/``."""
    out = Path(out_dir)
    train = train or TrainConfig.model_validate(DEMO_TRAIN)
    settings = {k: v for k, v in train.model_dump().items() if k != "seed"}
    config = BenchConfig(
        name=f"demo ({data})",
        models=ALL if models == ALL else [ModelEntry(m, m) for m in models],
        datasets=[DatasetEntry(label=data, spec=data)],
        seeds=[train.seed],
        train=settings,
    )
    results = run_bench(config, out, log=log)
    runs = results["runs"]
    table = comparison_table(runs, table_metrics(runs))
    report = out / "results.md"
    text = summary(runs, data) if runs else "No run has finished.\n"
    if runs:
        atomic_write_text(report, _with_summary(report.read_text(), text))
    samples = write_samples(load_data(data), out)
    inspected = [inspect_run(Path(r["run_dir"]), Path(r["run_dir"]) / "inspect", rows=DEMO_INSPECT_ROWS, log=log)
                 for r in runs]
    return DemoResult(table=table, summary=text, report=report, plots=sorted(out.glob("*.png")), samples=samples,
                      inspect_reports=[r.out / "inspect.md" for r in inspected])


def _with_summary(markdown: str, text: str) -> str:
    """The report with a "What the table shows" section before its first table."""
    head, sep, tail = markdown.partition("\n### ")
    return f"{head}\n## What the table shows\n\n{text}\n{sep}{tail}"


def summary(runs: list[dict[str, Any]], data: str) -> str:
    """A few sentences on the demo's table: the runs' convergence, the best model per task and its gap to
    the oracle, where each headline model ranks and (for a preset with a note) why."""
    tasks: list[str] = runs[0]["tasks"]
    oracle = runs[0].get("oracle") or {}
    stopped = sum(int(r["best_epoch"]) < int(r["epochs_run"]) - 1 for r in runs)
    limited = "" if stopped == len(runs) else \
        " (the others reached the epoch limit, so their numbers are not those of converged training)"
    sentences = [
        f"Each row is one model trained once (seed {runs[0]['seed']}) on `{data}` and tested on the "
        f"held-out test rows; {stopped} of {len(runs)} runs stopped early on the validation score{limited}."
    ]
    ranked = {t: sorted(runs, key=lambda r: _auc(r, t), reverse=True) for t in tasks}
    best = []
    for task in tasks:
        top = ranked[task][0]
        gap = f", {oracle[task]['auc'] - _auc(top, task):.4f} below the oracle" if task in oracle else ""
        best.append(f"{task} {top['model']} ({_auc(top, task):.4f}{gap})")
    sentences.append("Best test AUC: " + "; ".join(best) + ". The oracle row is the AUC of the true "
                     "probabilities, the ceiling no model can reach on this data.")
    for name in HEADLINE_MODELS:
        run = next((r for r in runs if r.get("registry_name", r["model"]) == name), None)
        if run is None:
            continue
        places = ", ".join(f"{_place(ranked[t], run)} of {len(runs)} on {t} ({_auc(run, t):.4f})" for t in tasks)
        sentences.append(f"{run['model']} ranks {places}; its best validation epoch was {run['best_epoch']} "
                         f"(counted from 0) of {run['epochs_run']} trained.")
    sentences.append("With one seed, differences of a few thousandths of AUC are within the seed-to-seed "
                     "spread (docs/baselines.md has three seeds).")
    preset = data.split(":")[1] if data.startswith("synthetic:") else None
    note = PRESET_NOTES.get(preset or "")
    return " ".join(sentences) + (f"\n\n{note}\n" if note else "\n")


def _auc(run: dict[str, Any], task: str) -> float:
    value = run["test"][task].get("auc")
    return -math.inf if value is None or math.isnan(value) else float(value)


def _place(ranked: list[dict[str, Any]], run: dict[str, Any]) -> str:
    place = ranked.index(run) + 1
    return {1: "1st", 2: "2nd", 3: "3rd"}.get(place, f"{place}th")
