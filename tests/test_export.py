"""ONNX export: every registered model exports with parity; a mismatching graph fails loudly."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from fakes import scorer, tiny_dataset, with_scenario
from mtrec.cli import main
from mtrec.export import onnx as onnx_export
from mtrec.export.model_file import input_names
from mtrec.export.onnx import (
    ParityError,
    check_parity,
    export_checked,
    export_onnx,
    onnx_session,
    parity_batches,
    random_features,
)
from mtrec.export.scoring import ScoringModule, feature_inputs
from mtrec.features.inputs import Features
from mtrec.models import MultiTaskModel, create_model, list_models
from mtrec.objectives.scorer import Scorer
from mtrec.training.config import RunConfig, TrainConfig
from mtrec.training.run import train_run

MODELS = list_models()


@pytest.fixture(scope="module")
def data():  # type: ignore[no-untyped-def]
    return with_scenario(tiny_dataset(rows=200, seed=3))  # scenario models need one; others read it as a field


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run of MMoE trained for one epoch on a tiny prepared dataset."""
    root = tmp_path_factory.mktemp("export_run")
    tiny_dataset(rows=300, seed=4).save(root / "data")
    config = RunConfig(model="mmoe", data=str(root / "data"), model_options={"expert_sizes": [16], "tower_sizes": [8]},
                       train=TrainConfig(epochs=1, batch_size=64, num_threads=1, prefetch=0))
    train_run(config, root / "run", log=lambda _: None)
    return root / "run"


def run_cli(argv: list[str]) -> int:
    """``mtrec ARGV`` in this process; its exit status."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
        raise SystemExit(0)
    return int(exit_info.value.code or 0)


@pytest.mark.parametrize("name", MODELS)
def test_every_model_exports_with_parity(name: str, data) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    model = scorer(create_model(name, data.schema)).eval()
    batches, source = parity_batches(data.schema, None, rows=96, batch_size=64)
    checked = export_checked(model, batches, source)
    assert checked.exporter == "torchscript", checked.notes  # the fast tracer; dynamo is only a fallback
    assert checked.parity.ok
    assert checked.parity.max_abs_diff <= 1e-4
    assert {64, 32, 1} <= set(checked.parity.batch_sizes)  # several batch sizes through one graph
    graph = onnx.load_model_from_string(checked.onnx_model).graph
    assert [o.name for o in graph.output] == data.schema.task_names
    declared = [i.name for i in graph.input]
    assert set(declared) <= set(input_names(data.schema))
    for tensor in [*graph.input, *graph.output]:
        assert tensor.type.tensor_type.shape.dim[0].dim_param, f"{tensor.name}: batch axis is not dynamic"


@pytest.mark.parametrize("name", ["mmoe", "single_task"])
def test_attention_pooling_exports_with_parity(name: str, data) -> None:  # type: ignore[no-untyped-def]
    """DIN-style target attention in the shared embedding block (one unit, and one per task's slice)
    keeps the batch axis dynamic."""
    torch.manual_seed(0)
    model = scorer(create_model(name, data.schema, sequence_pooling="attention")).eval()
    batches, source = parity_batches(data.schema, None, rows=96, batch_size=64)
    checked = export_checked(model, batches, source)
    assert checked.parity.ok and checked.parity.max_abs_diff <= 1e-4
    assert {64, 32, 1} <= set(checked.parity.batch_sizes)


def test_dynamo_exporter_gives_the_same_probabilities(data) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    model = scorer(create_model("shared_bottom", data.schema, bottom_sizes=[16], tower_sizes=[8])).eval()
    batches, source = parity_batches(data.schema, None, rows=64, batch_size=64)
    checked = export_checked(model, batches, source, exporter="dynamo")
    assert checked.exporter == "dynamo"
    assert checked.parity.max_abs_diff <= 1e-4


class _DataDependent(MultiTaskModel):
    """Adds 0.5 to the logits only when the batch's mean price is positive: tracing freezes one branch."""

    def __init__(self, schema) -> None:  # type: ignore[no-untyped-def]
        super().__init__(schema)
        self.weight = torch.nn.Parameter(torch.ones(len(schema.dense)))

    def forward(self, features: Features) -> dict[str, torch.Tensor]:
        logit = features.dense @ self.weight
        if features.dense[:, 0].mean() > 0:
            logit = logit + 0.5
        return dict.fromkeys(self.task_names, logit)


def test_a_graph_that_differs_from_eager_fails_the_parity_check(data) -> None:  # type: ignore[no-untyped-def]
    model = scorer(_DataDependent(data.schema)).eval()
    batches = [random_features(data.schema, 50, seed=s) for s in range(6)]
    assert len({bool(b.dense[:, 0].mean() > 0) for b in batches}) == 2  # both branches are exercised
    with pytest.raises(ParityError, match=r"max abs difference .* > tolerance"):
        export_checked(model, batches, "test batches", exporter="torchscript")


def test_parity_report_measures_the_difference(data) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    model = scorer(create_model("mmoe", data.schema)).eval()
    graph = export_onnx(model)
    torch.manual_seed(1)
    other = scorer(create_model("mmoe", data.schema)).eval()  # same architecture, other weights
    batch = random_features(data.schema, 40, seed=2)
    report = check_parity(other, graph, [batch], tolerance=1e-4)
    with torch.no_grad():
        ours = ScoringModule(model)(*feature_inputs(batch, data.schema))
        theirs = ScoringModule(other)(*feature_inputs(batch, data.schema))
    expected = {t: float((a - b).abs().max()) for t, a, b in zip(data.schema.task_names, ours, theirs, strict=True)}
    assert not report.ok
    for task, diff in report.per_task.items():
        assert diff == pytest.approx(expected[task], abs=1e-6)


def test_random_features_holds_valid_ids_and_edge_rows(data) -> None:  # type: ignore[no-untyped-def]
    schema = data.schema
    batch = random_features(schema, 50, seed=7)
    for j, f in enumerate(schema.sparse):
        assert int(batch.sparse[:, j].min()) >= 0 and int(batch.sparse[:, j].max()) < f.vocab_size
    for s in schema.sequences:
        ids = batch.sequences[s.name]
        assert ids.shape == (50, s.max_len) and int(ids.max()) < s.vocab_size
        assert (ids[0] == 0).all() and (ids[1] > 0).all()  # one empty and one full history
        valid = (ids > 0).int()
        assert (valid[:, 1:] <= valid[:, :-1]).all()  # left-aligned


def test_parity_uses_the_runs_data_then_falls_back_to_generated_rows(run_dir: Path, tmp_path: Path) -> None:
    from mtrec.training.checkpoint import load_model

    model, config = load_model(run_dir)
    batches, source = parity_batches(model.schema, config, rows=100, batch_size=64)
    assert "test split" in source
    assert [len(b) for b in batches] == [60, 37, 1]  # the 60 test rows, then the edge batches
    moved = tmp_path / "gone"
    shutil.move(config.data, moved)
    try:
        batches, source = parity_batches(model.schema, config, rows=100, batch_size=64)
    finally:
        shutil.move(moved, config.data)
    assert "generated" in source and "not available" in source
    assert [len(b) for b in batches] == [64, 36, 37, 1]


def test_cli_export_writes_a_graph_matching_the_model(run_dir: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "model.onnx"
    assert run_cli(["export", str(run_dir), "--out", str(out), "--inputs", "ids"]) == 0
    printed = capsys.readouterr().out
    assert "max abs difference" in printed and "parity ok" in printed
    from mtrec.training.checkpoint import load_model

    model, _ = load_model(run_dir)
    batch = random_features(model.schema, 25, seed=9)
    session = onnx_session(out.read_bytes())
    declared = {i.name for i in session.get_inputs()}  # type: ignore[attr-defined]
    feeds = {n: t.numpy() for n, t in zip(input_names(model.schema), feature_inputs(batch, model.schema), strict=True)
             if n in declared}
    got = session.run(None, feeds)  # type: ignore[attr-defined]
    with torch.no_grad():
        expected = ScoringModule(model)(*feature_inputs(batch, model.schema))
    for g, e in zip(got, expected, strict=True):
        np.testing.assert_allclose(g, e.numpy(), atol=1e-5)


def test_cli_export_fails_loudly_and_writes_nothing_on_mismatch(
    run_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    real_export = onnx_export.export_onnx

    def export_other_weights(model: Scorer, exporter: str = "torchscript") -> bytes:
        torch.manual_seed(123)
        stranger = create_model(model.name, model.schema, expert_sizes=[16], tower_sizes=[8])
        return real_export(scorer(stranger).eval(), "torchscript")

    monkeypatch.setattr(onnx_export, "export_onnx", export_other_weights)
    out = tmp_path / "model.onnx"
    code = run_cli(["export", str(run_dir), "--out", str(out), "--inputs", "ids"])
    err = capsys.readouterr().err
    assert code != 0
    assert "failed the parity check" in err and "nothing was written" in err
    assert not out.exists()
