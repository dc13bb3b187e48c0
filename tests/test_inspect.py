"""mtrec inspect: expert utilization, dead experts, permutation importance, calibration, the report."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from fakes import tiny_dataset, with_scenario
from mtrec.cli import main
from mtrec.data.batches import gather_batch
from mtrec.features.inputs import Features
from mtrec.inspect.calibration import calibration
from mtrec.inspect.importance import permutation_importance
from mtrec.inspect.utilization import UtilizationCollector
from mtrec.models import create_model, list_models, model_class
from mtrec.nn.recording import recording
from mtrec.training.config import RunConfig, TrainConfig
from mtrec.training.run import train_run

pytestmark = pytest.mark.usefixtures("one_thread")
INSPECT = Path(__file__).resolve().parents[1] / "src" / "mtrec" / "inspect"


def utilization_of(model: torch.nn.Module, rows: int = 64):  # type: ignore[no-untyped-def]
    data = with_scenario(tiny_dataset(rows=rows))
    collector = UtilizationCollector()
    with recording(model) as records, torch.no_grad():
        model(gather_batch(data, np.arange(rows)).features)
        collector.add(records.records)
    return collector.result(data.schema)


@pytest.mark.parametrize("name", ["mmoe", "ple", "home", "dtrn_mmoe", "hinet", "m3oe"])
def test_utilization_sums_to_one_per_task(name: str) -> None:
    torch.manual_seed(0)
    levels = utilization_of(create_model(name, with_scenario(tiny_dataset(rows=8)).schema))  # scenario models need one
    assert levels
    for level in levels:
        np.testing.assert_allclose(level.mean_weight.sum(1), 1.0, atol=1e-6)
        assert (level.entropy <= level.max_entropy + 1e-9).all()
    assert any(level.gates == ["click", "conversion"] for level in levels)


def test_a_planted_dead_expert_is_reported_dead() -> None:
    torch.manual_seed(0)
    model = create_model("mmoe", tiny_dataset(rows=8).schema, num_experts=4)
    (level,) = utilization_of(model)
    assert level.dead == []
    with torch.no_grad():
        model.gates.linear.bias.view(-1, 4)[:, 2] = -30.0  # no gate ever picks expert 2
    (level,) = utilization_of(model)
    assert level.dead == [2]
    assert level.mean_weight[:, 2].max() < 1e-6


def test_permutation_importance_ranks_the_planted_strong_feature_first() -> None:
    data = tiny_dataset(rows=6000, seed=1)  # click drawn from sigmoid(1.5 price - 0.5), conversion from activity
    batch = gather_batch(data, np.arange(6000))
    price, activity = data.schema.feature_names.index("price"), data.schema.feature_names.index("activity")
    dense_price, dense_activity = price - len(data.schema.sparse), activity - len(data.schema.sparse)

    def oracle(features: Features) -> dict[str, np.ndarray]:
        d = features.dense.numpy()
        click = 1 / (1 + np.exp(-(1.5 * d[:, dense_price] - 0.5)))
        return {"click": click, "conversion": click / (1 + np.exp(-d[:, dense_activity]))}

    labels = {t: v.numpy() for t, v in batch.labels.items()}
    masks = {t: v.numpy() for t, v in batch.masks.items()}
    result = permutation_importance(oracle, batch.features, labels, masks, data.schema, repeats=2, seed=0)
    assert result.ranking("click")[0] == "price"
    assert result.ranking("conversion")[0] == "activity"
    assert result.mean[price, 0] > 0.1 and abs(result.mean[activity, 0]) < 1e-12  # the oracle ignores it
    again = permutation_importance(oracle, batch.features, labels, masks, data.schema, repeats=2, seed=0)
    np.testing.assert_array_equal(again.mean, result.mean)  # a fixed seed repeats exactly
    assert (result.std[price] > 0).all()


def test_the_ece_of_a_calibrated_oracle_is_near_zero_and_of_a_skewed_one_is_not() -> None:
    rng = np.random.default_rng(0)
    p = rng.random(200_000)
    y = (rng.random(p.size) < p).astype(np.float32)
    calibrated = calibration(p, y)
    assert calibrated.ece < 0.005
    assert abs(calibrated.predicted_rate - calibrated.observed_rate) < 0.005
    assert calibration(p**2, y).ece > 0.1
    assert sum(calibrated.bin_rows) == p.size


def test_no_model_class_is_named_in_inspect() -> None:
    classes = {model_class(name).__name__ for name in list_models()}
    registry_names = set(list_models())
    offences = []
    for path in sorted(INSPECT.glob("*.py")):
        tree = ast.parse(path.read_text())
        docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                      if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef) and node.body
                      and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("mtrec.models"):
                offences.append(f"{path.name} imports {node.module}")
            elif (isinstance(node, ast.Name) and node.id in classes) or \
                    (isinstance(node, ast.Attribute) and node.attr in classes):
                offences.append(f"{path.name}:{node.lineno} names a model class")
            elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings \
                    and any(name in node.value.lower().split() for name in registry_names):
                offences.append(f"{path.name}:{node.lineno} names a model: {node.value!r}")
    assert len(list(INSPECT.glob("*.py"))) >= 8
    assert not offences, offences


def test_inspect_writes_the_report_of_a_trained_run(tiny_dir: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    config = RunConfig(model="ple", data=str(tiny_dir), train=TrainConfig(epochs=1, batch_size=64))
    train_run(config, tmp_path / "run", log=lambda _: None)
    main(["inspect", str(tmp_path / "run"), "--repeats", "2"])
    printed = capsys.readouterr().out
    out = tmp_path / "run" / "inspect"
    report = json.loads((out / "inspect.json").read_text())
    assert set(report["utilization"]) == {"extraction.levels.0.task_gates", "extraction.levels.0.shared_gate",
                                          "extraction.levels.1.task_gates"}
    for task, weights in report["utilization"]["extraction.levels.1.task_gates"].items():
        assert task in ("click", "conversion") and abs(sum(weights) - 1) < 1e-6
    assert set(report["importance"]) == {"click", "conversion"}
    assert set(report["importance"]["click"]) == set(tiny_dataset(rows=8).schema.feature_names)
    assert 0 <= report["calibration"]["click"]["ece"] <= 1
    markdown = (out / "inspect.md").read_text()
    for image in ("utilization_0.png", "importance.png", "calibration.png", "task_relations.png"):
        assert (out / image).stat().st_size > 1000 and f"]({image})" in markdown
    assert "utilization extraction.levels.0.task_gates" in printed and "report written to" in printed


def test_inspect_names_a_split_without_rows(tiny_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = RunConfig(model="mmoe", data=str(tiny_dir), train=TrainConfig(epochs=1, batch_size=64))
    train_run(config, tmp_path / "run", log=lambda _: None)
    with pytest.raises(SystemExit) as exit_info:
        main(["inspect", str(tmp_path / "run"), "--split", "holdout"])
    assert exit_info.value.code == 2
    assert "--split holdout" in capsys.readouterr().err
