"""Scenarios: the dataset config's ``scenario`` key, the schema, ``Features.scenario``, the synthetic
``scenarios`` preset and metrics per (scenario, task)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from fakes import tiny_dataset, with_scenario
from mtrec.data.batches import gather_batch
from mtrec.data.config import DatasetConfigError, parse_dataset_config
from mtrec.data.synthetic import Scenarios, TaskWeights, make_synthetic
from mtrec.features.schema import DatasetSchema, SchemaError
from mtrec.metrics import evaluate_tasks
from mtrec.metrics.oracle import oracle_metrics_by_scenario
from mtrec.training.config import RunConfig, TrainConfig
from mtrec.training.evaluate import Predictions
from mtrec.training.run import train_run


def config_with(scenario: str) -> dict:  # type: ignore[type-arg]
    return {"source": {"path": "x.csv"}, "features": {"sparse": ["country", "item"], "dense": ["price"]},
            "tasks": [{"name": "click"}], "split": {"kind": "random", "fractions": [0.8, 0.1, 0.1]},
            "scenario": scenario}


def test_config_scenario_names_a_sparse_feature() -> None:
    assert parse_dataset_config(config_with("country")).scenario == "country"
    with pytest.raises(DatasetConfigError, match=r"scenario: scenario 'countri' must name a sparse feature.*country"):
        parse_dataset_config(config_with("countri"))
    with pytest.raises(DatasetConfigError, match="scenario"):
        parse_dataset_config(config_with("price"))


def test_schema_records_the_scenario_and_reads_it_back() -> None:
    schema = with_scenario(tiny_dataset()).schema
    assert (schema.scenario_column, schema.scenario_count) == (2, 8)
    assert DatasetSchema.from_dict(schema.to_dict()).scenario == "category"
    with pytest.raises(SchemaError, match="scenario 'price' must name a sparse feature"):
        dataclasses.replace(schema, scenario="price")
    assert tiny_dataset().schema.scenario_column is None


def test_batches_carry_the_scenario_ids() -> None:
    data = with_scenario(tiny_dataset())
    batch = gather_batch(data, np.arange(20))
    assert batch.features.scenario is not None
    assert batch.features.scenario.tolist() == np.asarray(data.sparse)[:20, 2].tolist()
    assert gather_batch(tiny_dataset(), np.arange(5)).features.scenario is None


def test_preset_scenarios_share_some_weights_and_reverse_others() -> None:
    weights = Scenarios().weight_rows(TaskWeights(cross=0.8, hist_click=0.5))  # [3, 12]
    names = [f.name for f in dataclasses.fields(TaskWeights)]
    conflicting = [names.index(n) for n in Scenarios().conflicting]
    shared = [i for i in range(len(names)) if i not in conflicting]
    assert np.array_equal(weights[1, shared], weights[0, shared])
    assert np.array_equal(weights[1, conflicting], -weights[0, conflicting])
    assert weights[0, names.index("cross")] == 0.8


def test_preset_rates_and_oracle_per_scenario() -> None:
    data = make_synthetic("scenarios", rows=30_000)
    assert data.schema.scenario == "scenario"
    ids = np.asarray(data.sparse)[:, data.schema.scenario_column]
    shares = [float(np.mean(ids == k + 2)) for k in range(3)]
    assert shares == pytest.approx([0.5, 0.3, 0.2], abs=0.02)
    click = np.asarray(data.labels)[:, 0]
    rates = [float(click[ids == k + 2].mean()) for k in range(3)]
    assert rates[1] < rates[0] < rates[2]  # rates scaled 0.6 and 1.5
    oracle = oracle_metrics_by_scenario(data)
    assert list(oracle) == ["s0", "s1", "s2"]
    assert all(0.7 < oracle[s][t]["auc"] < 0.9 for s in oracle for t in ("click", "conversion"))


def test_scenario_blind_score_loses_where_the_scenarios_conflict() -> None:
    """The true logits of s0 rank s1's rows worse than s1's own: the scenarios conflict."""
    from mtrec.data.synthetic import _simulate, resolve_config
    from mtrec.metrics import auc

    config = resolve_config("scenarios", rows=20_000)
    sim = _simulate(config, seed=0)
    ids = sim.sparse[:, -1] - 2
    rows = ids == 1
    s0_weights = config.scenarios.weight_rows(config.click)[0] if config.scenarios else None
    blind = sim.components[0][rows] @ s0_weights
    click = sim.labels[rows, 0]
    assert auc(click, sim.logits[rows, 0]) > auc(click, blind) + 0.1


def test_metrics_by_scenario_are_each_scenarios_own() -> None:
    rng = np.random.default_rng(0)
    ids = rng.integers(2, 4, 400)
    probs, labels = rng.random(400), (rng.random(400) < 0.4).astype(np.float32)
    ones = np.ones(400, dtype=np.float32)
    predictions = Predictions({"click": probs}, {"click": labels}, {"click": ones}, None, scenarios=ids)
    found = predictions.metrics_by_scenario({2: "FR", 3: "ES"})
    assert list(found) == ["FR", "ES"]
    rows = ids == 3
    expected = evaluate_tasks({"click": probs[rows]}, {"click": labels[rows]}, {"click": ones[rows]})
    assert found["ES"] == expected


def test_a_run_reports_metrics_per_scenario(tmp_path: Path) -> None:
    config = RunConfig(model="mmoe", data="synthetic:scenarios:2000",
                       train=TrainConfig(epochs=1, batch_size=256, num_threads=1, prefetch=1))
    metrics = train_run(config, tmp_path / "r", log=lambda _: None)
    assert list(metrics["test_by_scenario"]) == ["s0", "s1", "s2"]
    assert set(metrics["test_by_scenario"]["s1"]) == {"click", "conversion"}
    rows = sum(m["click"]["rows"] for m in metrics["test_by_scenario"].values())
    assert rows == metrics["test"]["click"]["rows"]
    assert set(metrics["oracle_by_scenario"]) == {"s0", "s1", "s2"}


def test_bench_report_has_a_table_per_scenario() -> None:
    from mtrec.bench.report import scenario_table

    def run(model: str, seed: int, s1_click: float) -> dict:  # type: ignore[type-arg]
        by_scenario = {"s0": {"click": {"auc": 0.7}}, "s1": {"click": {"auc": s1_click}}}
        return {"data": "synthetic:scenarios", "model": model, "seed": seed, "tasks": ["click"],
                "test": {"click": {"auc": 0.7}}, "test_by_scenario": by_scenario,
                "oracle_by_scenario": {"s0": {"click": {"auc": 0.83}}, "s1": {"click": {"auc": 0.81}}}}

    table = scenario_table([run("star", 0, 0.6), run("star", 1, 0.62), run("mmoe", 0, 0.55)])
    lines = table.splitlines()
    assert lines[0] == "### synthetic:scenarios: per scenario"
    assert lines[2] == "| model | s0 click AUC | s1 click AUC |"
    assert lines[4] == "| **oracle** | 0.8300 | 0.8100 |"
    assert lines[5] == "| star | 0.7000 ± 0.0000 | 0.6100 ± 0.0141 |"
    assert lines[6] == "| mmoe | 0.7000 | 0.5500 |"
    assert scenario_table([{**run("mmoe", 0, 0.5), "test_by_scenario": {}}]) == ""


def test_bench_skips_scenario_models_on_data_without_a_scenario(tmp_path: Path, tiny_dir: Path) -> None:
    from mtrec.bench.runner import parse_bench_config, run_bench

    config = {"name": "t", "models": ["shared_bottom", "star"], "model_options": {"embedding_dim": 4},
              "datasets": [{"data": str(tiny_dir), "label": "tiny"}], "seeds": [0],
              "train": {"epochs": 1, "batch_size": 64, "num_threads": 1, "prefetch": 0}}
    logs: list[str] = []
    results = run_bench(parse_bench_config(config), tmp_path / "out", command="mtrec bench x", log=logs.append)
    assert [r["model"] for r in results["runs"]] == ["shared_bottom"]
    assert any("tiny / star: skipped, a multi-scenario model and the data has no scenario" in line for line in logs)
