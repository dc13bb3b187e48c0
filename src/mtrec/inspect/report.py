"""``mtrec inspect``: run every section on a run's model and write ``inspect.md``, ``inspect.json`` and
the PNGs they show.

The rows inspected: the split's first ``rows`` rows in a seeded random order (all of them when the split is
smaller). One pass with recording on (:mod:`mtrec.nn.recording`) gives the predictions and what the
blocks mix; permutation importance then scores the same rows once per field and repeat.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mtrec.data.batches import gather_batch
from mtrec.data.dataset import DatasetError, PreparedDataset
from mtrec.data.source import load_data
from mtrec.features.inputs import Features
from mtrec.inspect import calibration, cross, fields, importance, relations, utilization
from mtrec.io import atomic_write_text, check_output_dir, json_text
from mtrec.nn.recording import recording
from mtrec.objectives.scorer import Scorer, prediction_targets
from mtrec.training.checkpoint import load_model
from mtrec.training.config import RunConfig
from mtrec.training.gradient_conflict import read_conflict
from mtrec.training.plots import plot_gradient_conflict
from mtrec.training.rundir import HISTORY

BATCH = 4096


@dataclass
class Sample:
    """The inspected rows: features, labels and masks per task."""

    features: Features
    labels: dict[str, np.ndarray]
    masks: dict[str, np.ndarray]


@dataclass
class Report:
    """What ``inspect`` writes: the JSON document, the Markdown sections and the summary lines."""

    out: Path
    data: dict[str, Any] = field(default_factory=dict)
    markdown: list[str] = field(default_factory=list)
    summary: list[str] = field(default_factory=list)

    def section(self, title: str, text: str, images: Sequence[str] = ()) -> None:
        self.markdown += [f"## {title}", "", text, "", *[f"![{title}]({name})\n" for name in images]]


def load_sample(config: RunConfig, schema_of_run: Any, data: str | None, split: str, rows: int,
                seed: int) -> tuple[Sample, str]:
    """The inspected rows of ``data`` (default: the run's own data) and a description of them."""
    spec = data or config.data
    dataset: PreparedDataset = load_data(spec)
    if dataset.schema != schema_of_run:
        raise DatasetError(f"--data {spec}: its schema differs from the run's (schema.json); "
                           f"inspect the run with the data it was trained on")
    if split not in dataset.splits or not dataset.split_size(split):
        raise DatasetError(f"--split {split}: {spec} has no rows in that split "
                           f"(splits: {', '.join(k for k in dataset.splits if dataset.split_size(k))})")
    index = np.asarray(dataset.splits[split])
    if len(index) > rows:
        index = np.random.default_rng(seed).choice(index, rows, replace=False)
    batch = gather_batch(dataset, index)
    # in the units the scorer predicts (a value task's label units; every row of one observed after another)
    targets, counted = prediction_targets(schema_of_run, batch.labels, batch.masks, batch.row_weights())
    labels = {t: v.numpy() for t, v in targets.items()}
    masks = {t: v.numpy() for t, v in counted.items()}
    return Sample(batch.features, labels, masks), f"{len(index):,} rows of the {split} split of {spec}"


def rows_of(features: Features, start: int, stop: int) -> Features:
    return Features(features.sparse[start:stop], features.dense[start:stop],
                    {k: v[start:stop] for k, v in features.sequences.items()},
                    None if features.scenario is None else features.scenario[start:stop])


def batched(scorer: Scorer, each: Callable[[], None] | None = None) -> importance.Predict:
    """Score all rows of a Features in batches of :data:`BATCH`; ``each`` runs after every batch."""
    @torch.no_grad()
    def predict(features: Features) -> dict[str, np.ndarray]:
        parts: dict[str, list[np.ndarray]] = {t: [] for t in scorer.task_names}
        for start in range(0, len(features), BATCH):
            out = scorer(rows_of(features, start, start + BATCH))
            for t in scorer.task_names:
                parts[t].append(out[t].float().numpy())
            if each is not None:
                each()
        return {t: np.concatenate(v) for t, v in parts.items()}
    return predict


def inspect_run(run_dir: Path, out: Path, data: str | None = None, split: str = "test", rows: int = 20_000,
                repeats: int = 3, seed: int = 0, command: str = "", log: Callable[[str], None] = print) -> Report:
    """Inspect the run in ``run_dir`` and write the report into ``out`` (see the module docstring);
    ``command``: the command line, quoted in the report."""
    out = check_output_dir(out, "inspect output directory")
    scorer, config = load_model(run_dir)
    schema = scorer.schema
    sample, described = load_sample(config, schema, data, split, rows, seed)
    torch.manual_seed(seed)
    report = Report(out)
    report.data["run"] = {"dir": str(run_dir), "model": config.model, "rows": described,
                          "repeats": repeats, "seed": seed}
    report.markdown += [f"# Inspecting {config.model} ({run_dir})", "",
                        f"Rows: {described}. Command: `{command or shlex.join(['mtrec', 'inspect', str(run_dir)])}`",
                        ""]

    gates, field_stats, steps = utilization.UtilizationCollector(), fields.FieldCollector(), \
        cross.CrossCollector(len(schema.tasks))
    with recording(scorer) as records:
        def collect() -> None:
            for collector in (gates, field_stats, steps):
                collector.add(records.records)
            records.clear()
        predictions = batched(scorer, collect)(sample.features)

    _utilization(report, gates.result(schema))
    _fields(report, field_stats.field_weights(schema), field_stats.norm_differences(schema))
    _cross(report, steps.result(schema))
    log("permutation importance: scoring every field shuffled "
        f"{repeats} time(s) ({len(schema.feature_names) * repeats} passes)")
    _importance(report, importance.permutation_importance(batched(scorer), sample.features, sample.labels,
                                                          sample.masks, schema, repeats, seed))
    _calibration(report, sample, predictions, [t.name for t in schema.tasks if t.is_binary])
    if len(schema.tasks) > 1:
        _relations(report, relations.task_relations(predictions, sample.labels, sample.masks))
    _conflict(report, run_dir)
    atomic_write_text(out / "inspect.json", json_text(report.data, indent=2) + "\n")
    atomic_write_text(out / "inspect.md", "\n".join(report.markdown).rstrip() + "\n")
    return report


def _utilization(report: Report, levels: list[utilization.LevelUtilization]) -> None:
    if not levels:
        return
    report.data["utilization"] = {lv.level: lv.to_json()["weights"] for lv in levels}
    report.data["utilization_detail"] = {lv.level: lv.to_json() for lv in levels}
    images = []
    for i, level in enumerate(levels):
        images.append(f"utilization_{i}.png")
        utilization.plot_level(level, report.out / images[-1])
        report.summary.append("utilization " + utilization.summary(level))
    lines = "\n".join(f"- {utilization.summary(lv)}" for lv in levels)
    report.section("Expert utilization", "Mean gate weight of each expert per task (or gate), one heatmap per "
                   f"gated level; an expert below {utilization.DEAD_WEIGHT:.0%} under every gate is dead. "
                   "Gate entropy in nats: 0 = one expert only, the maximum = all experts equally.\n\n" + lines,
                   images)


def _fields(report: Report, weights: list[fields.FieldWeights], norms: list[fields.NormDifferences]) -> None:
    images = []
    for i, w in enumerate(weights):
        images.append(f"field_weights_{i}.png")
        fields.plot_field_weights(w, report.out / images[-1])
    if weights:
        report.data["field_weights"] = {w.block: w.to_json() for w in weights}
        report.summary += [f"field weights {w.summary()}" for w in weights]
        report.section("Field weights per task", "Mean weight each task's field re-weighting gives each field "
                       "(sigmoid, 0 to 1).\n\n" + "\n".join(f"- {w.summary()}" for w in weights), images)
    images = []
    for i, n in enumerate(norms):
        images.append(f"norm_differences_{i}.png")
        fields.plot_norm_differences(n, report.out / images[-1])
        s = n.to_json()
        report.summary.append(f"conditional LayerNorms {n.block}: mean distance between tasks (same behaviour) "
                              f"{s['mean_between_tasks_same_behaviour']:.4f}, between behaviours (same task) "
                              f"{s['mean_between_behaviours_same_task']:.4f}")
    if norms:
        report.data["norm_differences"] = {n.block: n.to_json() for n in norms}
        report.section("Conditional LayerNorms per (task, behaviour)",
                       "Mean absolute difference of the LayerNorm scales plus that of the shifts between every "
                       "two (task, behaviour) pairs (0: the same normalisation).\n\n"
                       + "\n".join(f"- {line}" for line in report.summary if line.startswith("conditional")),
                       images)


def _cross(report: Report, steps: cross.CrossSteps | None) -> None:
    if steps is None:
        return
    report.data["cross_steps"] = steps.to_json()
    cross.plot_cross(steps, report.out / "cross_gates.png", report.out / "cross_states.png")
    report.summary.append("cross steps: " + cross.summary(steps))
    report.section("Cross steps", "Mean update gate of each task's cross steps (shared steps first), and how "
                   "far apart the tasks' states are after each step.\n\n- " + cross.summary(steps),
                   ["cross_gates.png", "cross_states.png"])


def _importance(report: Report, result: importance.Importance) -> None:
    report.data["importance"] = result.to_json()
    report.data["importance_std"] = result.spread_json()
    importance.plot_importance(result, report.out / "importance.png")
    lines = []
    for j, task in enumerate(result.tasks):
        top = result.ranking(task)[:3]
        i = [result.fields.index(f) for f in top]
        lines.append(f"{task} ({result.metric[task]}): " + ", ".join(
            f"{f} {result.mean[k, j]:+.4f} ± {result.std[k, j]:.4f}" for f, k in zip(top, i, strict=True)))
    report.summary += [f"importance {line}" for line in lines]
    report.section("Feature importance per task", "Loss of each task's metric when one field is shuffled "
                   f"across the rows (mean ± standard deviation over {report.data['run']['repeats']} seeded "
                   "repeats; near 0: the task does not use the field). Top three per task:\n\n"
                   + "\n".join(f"- {line}" for line in lines), ["importance.png"])


def _calibration(report: Report, sample: Sample, predictions: dict[str, np.ndarray], binary: list[str]) -> None:
    if not binary:
        return
    results = {}
    for task in binary:
        keep = sample.masks[task] > 0
        results[task] = calibration.calibration(predictions[task][keep], sample.labels[task][keep])
    report.data["calibration"] = {t: c.to_json() for t, c in results.items()}
    calibration.plot_reliability(results, report.out / "calibration.png")
    lines = [f"{t}: ECE {c.ece:.4f}, predicted rate {c.predicted_rate:.4f}, observed {c.observed_rate:.4f}"
             for t, c in results.items()]
    report.summary += [f"calibration {line}" for line in lines]
    report.section("Calibration", f"Reliability diagram per binary task ({calibration.BINS} equal-width bins, "
                   "over the task's observed rows).\n\n" + "\n".join(f"- {line}" for line in lines),
                   ["calibration.png"])


def _relations(report: Report, result: relations.Relations) -> None:
    report.data["task_relations"] = result.to_json()
    relations.plot_relations(result, report.out / "task_relations.png")
    T = len(result.tasks)
    pairs = [f"{result.tasks[i]} / {result.tasks[j]}: predictions {result.predictions[i, j]:+.2f}, "
             f"labels {result.labels[i, j]:+.2f}" for i in range(T) for j in range(i + 1, T)]
    report.summary.append("task relations " + "; ".join(pairs))
    report.section("Task relations", "Pearson correlation between tasks, of the predictions beside the "
                   "labels, over the rows where both tasks are observed.\n\n" + "\n".join(f"- {p}" for p in pairs),
                   ["task_relations.png"])


def _conflict(report: Report, run_dir: Path) -> None:
    path = run_dir / HISTORY
    history = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []
    result = read_conflict(history)
    if result is None:
        return
    report.data["gradient_conflict"] = result.to_json()
    plot_gradient_conflict(result.steps, result.cosines, report.out / "gradient_conflict.png")
    report.summary.append("gradient conflict " + result.summary())
    report.section("Gradient conflict during training", "Cosine between the task gradients on the shared "
                   "parameters, as logged while training (`train.log_gradient_conflict`); below 0 the tasks "
                   "pull the shared parameters apart.\n\n- " + result.summary(), ["gradient_conflict.png"])
