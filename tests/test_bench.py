"""`mtrec bench`: models x datasets x seeds, resumable, with a report directory."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from mtrec.bench.runner import load_bench_config, parse_bench_config, run_bench
from mtrec.cli import cli, main
from mtrec.models import list_models
from mtrec.training.config import ConfigError, read_config_file

TRAIN = {"epochs": 1, "batch_size": 64, "num_threads": 1, "prefetch": 0}
SMALL = {"embedding_dim": 4}


def _toy_dataset_config(tmp_path: Path, divided: bool = False) -> Path:
    """A toy dataset config: one CSV split at random, or (``divided``) a train file and a second file
    divided between valid and test (a ``files`` split with parts, as the Census standard protocol)."""
    lines = ["user,item,price,click"]
    lines += [f"u{i % 9},i{i % 13},{i % 7}.5,{int(i % 3 == 0)}" for i in range(120)]
    for name in ("toy.csv", "toy_test.csv"):
        (tmp_path / name).write_text("\n".join(lines) + "\n")
    split: dict[str, Any] = {"kind": "random", "seed": 0, "fractions": [0.6, 0.2, 0.2]}
    if divided:
        split = {"kind": "files", "train": "toy.csv", "valid": {"file": "toy_test.csv", "seed": 1, "part": [0.0, 0.5]},
                 "test": {"file": "toy_test.csv", "seed": 1, "part": [0.5, 1.0]}}
    config = {"name": "toy", "source": {"path": str(tmp_path if divided else tmp_path / "toy.csv")},
              "features": {"sparse": ["user", "item"], "dense": ["price"]}, "tasks": [{"name": "click"}],
              "user_id": "user", "split": split}
    path = tmp_path / "toy.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _bench(tmp_path: Path, tiny_dir: Path, **changes: Any) -> dict[str, Any]:
    config = {"name": "t", "models": ["shared_bottom", {"name": "mmoe", "label": "mmoe-2",
                                                       "options": {"num_experts": 2}}],
              "model_options": SMALL, "datasets": [{"data": str(tiny_dir), "label": "tiny"}],
              "seeds": [0, 1], "train": TRAIN}
    config.update(changes)
    return config


def test_bench_runs_the_matrix_and_writes_the_report(tmp_path: Path, tiny_dir: Path) -> None:
    logs: list[str] = []
    results = run_bench(parse_bench_config(_bench(tmp_path, tiny_dir)), tmp_path / "out", command="mtrec bench x",
                        log=logs.append)
    out = tmp_path / "out"
    assert len(results["runs"]) == 4
    assert {(r["model"], r["seed"]) for r in results["runs"]} == {
        ("shared_bottom", 0), ("shared_bottom", 1), ("mmoe-2", 0), ("mmoe-2", 1)}
    saved = json.loads((out / "results.json").read_text())
    assert saved["settings"]["train"] == TRAIN and saved["machine"]["torch"]
    markdown = (out / "results.md").read_text()
    assert "mtrec bench x" in markdown and "±" in markdown and "mmoe-2" in markdown
    assert "click gauc" in markdown  # the tiny data has a user id
    limited = sum(r["best_epoch"] == r["epochs_run"] - 1 for r in results["runs"])
    assert f"Runs ended by the epoch limit (best validation epoch = last, so not converged): {limited} of 4" \
        in markdown
    assert "| at limit |" in markdown
    for name in ("auc.png", "learning_curves_tiny.png"):
        assert (out / name).stat().st_size > 0
    run = out / "runs" / "tiny" / "mmoe-2" / "seed1"
    assert json.loads((run / "config.json").read_text())["model_options"]["num_experts"] == 2
    assert json.loads((run / "config.json").read_text())["model_options"]["embedding_dim"] == 4


def test_bench_resumes_and_redoes_changed_runs(tmp_path: Path, tiny_dir: Path) -> None:
    config = _bench(tmp_path, tiny_dir, models=["shared_bottom"], seeds=[0])
    run_bench(parse_bench_config(config), tmp_path / "out", log=lambda _: None)
    metrics = tmp_path / "out" / "runs" / "tiny" / "shared_bottom" / "seed0" / "metrics.json"
    first = metrics.stat().st_mtime_ns
    logs: list[str] = []
    run_bench(parse_bench_config(config), tmp_path / "out", log=logs.append)
    assert metrics.stat().st_mtime_ns == first
    assert any("already done" in line for line in logs)
    changed = _bench(tmp_path, tiny_dir, models=["shared_bottom"], seeds=[0], train={**TRAIN, "lr": 0.01})
    run_bench(parse_bench_config(changed), tmp_path / "out", log=lambda _: None)
    assert metrics.stat().st_mtime_ns != first


def test_max_runs_leaves_the_rest_pending(tmp_path: Path, tiny_dir: Path) -> None:
    config = parse_bench_config(_bench(tmp_path, tiny_dir, models=["shared_bottom"]))
    results = run_bench(config, tmp_path / "out", log=lambda _: None, max_runs=1)
    assert len(results["runs"]) == 1 and results["pending_runs"] == 1
    assert "1 run(s) pending" in (tmp_path / "out" / "results.md").read_text()
    results = run_bench(config, tmp_path / "out", log=lambda _: None, max_runs=1)
    assert len(results["runs"]) == 2 and results["pending_runs"] == 0


@pytest.mark.parametrize("divided", [False, True], ids=["random split", "a file divided between splits"])
def test_dataset_configs_are_prepared_once_and_all_means_the_registry(tmp_path: Path, divided: bool) -> None:
    config_path = tmp_path / "bench.yaml"
    config_path.write_text(yaml.safe_dump({
        "name": "toy", "models": "all", "model_options": SMALL,
        "datasets": [str(_toy_dataset_config(tmp_path, divided))], "seeds": [0], "train": TRAIN}))
    config = load_bench_config(config_path)
    assert [m.name for m in config.model_entries()] == list_models()
    result = CliRunner().invoke(cli, ["bench", str(config_path), "--out", str(tmp_path / "out"),
                                      "--max-runs", "1"])
    assert result.exit_code == 0, result.output
    stamp = tmp_path / "out" / "data" / "toy" / "prepare.json"
    before = stamp.stat().st_mtime_ns
    logs: list[str] = []
    run_bench(config, tmp_path / "out", log=logs.append, max_runs=0)
    assert stamp.stat().st_mtime_ns == before
    assert any("using the prepared copy" in line for line in logs)


@pytest.mark.parametrize(("change", "message"), [
    ({"seeds": []}, "seeds"),
    ({"models": []}, "models"),
    ({"train": {"seed": 3}}, "seeds go under 'seeds:'"),
    ({"datasets": [{"data": "x", "config": "y.yaml"}]}, "datasets\\[0\\]"),
    ({"models": ["mmoe", "mmoe"]}, "labels must be unique"),
    ({"models": ["nothing*"]}, "matches no registered model"),
    ({"extra": 1}, "unknown key"),
])
def test_bench_config_errors(change: dict[str, Any], message: str, tmp_path: Path, tiny_dir: Path) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_bench_config(_bench(tmp_path, tiny_dir, **change))


def test_models_may_be_name_patterns(tmp_path: Path, tiny_dir: Path) -> None:
    config = parse_bench_config(_bench(tmp_path, tiny_dir, models="dcrnn*"))
    assert [m.name for m in config.model_entries()] == list_models("dcrnn*") == ["dcrnn", "dcrnn_hard"]
    config = parse_bench_config(_bench(tmp_path, tiny_dir, models=["mmoe", "ple*"]))
    assert [m.name for m in config.model_entries()] == ["mmoe", "ple"]


def test_shared_option_taken_by_no_model_is_an_error(tmp_path: Path, tiny_dir: Path) -> None:
    config = parse_bench_config(_bench(tmp_path, tiny_dir, model_options={"embeding_dim": 4}))
    with pytest.raises(ConfigError, match="embeding_dim"):
        run_bench(config, tmp_path / "out", log=lambda _: None)


def test_demo_runs_through_the_bench_runner(tmp_path: Path, tiny_dir: Path) -> None:
    from mtrec.bench.demo import run_demo
    from mtrec.training.config import TrainConfig

    result = run_demo(tmp_path / "demo", data=str(tiny_dir), models=["mmoe"],
                      train=TrainConfig(epochs=1, batch_size=64, num_threads=1, prefetch=0), log=lambda _: None)
    assert "| mmoe |" in result.table
    assert result.report == tmp_path / "demo" / "results.md" and (tmp_path / "demo" / "auc.png") in result.plots
    report = result.report.read_text()
    assert "## What the table shows" in report and result.summary.strip() in report
    assert report.index("## What the table shows") < report.index("| mmoe |")


def test_an_interrupted_run_is_resumed(tmp_path: Path, tiny_dir: Path) -> None:
    config = parse_bench_config(_bench(tmp_path, tiny_dir, models=["mmoe"], seeds=[0]))
    run_bench(config, tmp_path / "out", log=lambda _: None)
    run = tmp_path / "out" / "runs" / "tiny" / "mmoe" / "seed0"
    (run / "metrics.json").unlink()  # as if stopped before the end: config.json written, no metrics
    logs: list[str] = []
    results = run_bench(config, tmp_path / "out", log=logs.append)
    assert any("resuming" in line for line in logs)
    assert (run / "metrics.json").is_file() and results["runs"][0]["resumed"]


@pytest.mark.parametrize("path", sorted((Path(__file__).resolve().parents[1] / "configs" / "bench").glob("*.yaml")),
                         ids=lambda p: p.name)
def test_shipped_bench_configs_are_valid(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every config under configs/bench parses, and every model entry's options are ones the model takes. A
    config with ``tuned:`` names studies that `mtrec tune` makes first: its other keys are checked."""
    monkeypatch.chdir(path.parents[2])  # the configs name dataset configs relative to the repository root
    data = read_config_file(path)
    if "tuned" in data:
        with pytest.raises(ConfigError, match=r"tuned"):  # no studies in a fresh checkout
            load_bench_config(path)
        data.pop("tuned")
    config = parse_bench_config(data, origin=str(path))
    for entry in config.model_entries():
        config.options_for(entry)


def test_models_and_seeds_select_what_trains_now(tmp_path: Path, tiny_dir: Path) -> None:
    config = parse_bench_config(_bench(tmp_path, tiny_dir))
    results = run_bench(config, tmp_path / "out", log=lambda _: None, only_seeds=[0])
    assert {(r["model"], r["seed"]) for r in results["runs"]} == {("shared_bottom", 0), ("mmoe-2", 0)}
    assert results["pending_runs"] == 2
    results = run_bench(config, tmp_path / "out", log=lambda _: None, only_models=["mmoe-2"])
    assert {(r["model"], r["seed"]) for r in results["runs"]} == {
        ("shared_bottom", 0), ("mmoe-2", 0), ("mmoe-2", 1)}  # the report covers every finished run
    assert results["pending_runs"] == 1


def test_datasets_select_what_trains_and_what_is_prepared(tmp_path: Path, tiny_dir: Path) -> None:
    datasets = [{"data": str(tiny_dir), "label": "tiny"}, {"config": str(_toy_dataset_config(tmp_path))}]
    config = parse_bench_config(_bench(tmp_path, tiny_dir, models=["shared_bottom"], seeds=[0], datasets=datasets))
    results = run_bench(config, tmp_path / "out", log=lambda _: None, only_datasets=["tiny"])
    assert [(r["data"], r["model"]) for r in results["runs"]] == [("tiny", "shared_bottom")]
    assert results["pending_runs"] == 1 and not (tmp_path / "out" / "data" / "toy").exists()
    results = run_bench(config, tmp_path / "out", log=lambda _: None, only_datasets=["toy"])
    assert {r["data"] for r in results["runs"]} == {"tiny", "toy"} and results["pending_runs"] == 0
    results = run_bench(config, tmp_path / "out", log=lambda _: None, only_datasets=["tiny"])
    assert len(results["runs"]) == 2  # the report still covers toy's finished run, read from its prepared copy


@pytest.mark.parametrize(("args", "message"), [
    (["--datasets", "toy"], "--datasets: 'toy' is not a dataset of this bench (tiny)"),
    (["--models", "mmoe"], "--models: 'mmoe' is not a model of this bench (shared_bottom, mmoe-2)"),
    (["--seeds", "7"], "--seeds: 7 is not a seed of this bench (0, 1)"),
    (["--seeds", "one"], "--seeds: expected comma-separated integers, got 'one'"),
])
def test_bad_selection_is_one_line(args: list[str], message: str, tmp_path: Path, tiny_dir: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bench.yaml"
    path.write_text(yaml.safe_dump(_bench(tmp_path, tiny_dir)))
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", str(path), "--out", str(tmp_path / "out"), *args])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_demo_summary_says_where_the_headline_models_stand() -> None:
    from mtrec.bench.demo import summary

    def run(model: str, click: float, conversion: float, best_epoch: int, epochs_run: int) -> dict[str, Any]:
        return {"model": model, "registry_name": model, "tasks": ["click", "conversion"], "seed": 0,
                "best_epoch": best_epoch, "epochs_run": epochs_run,
                "test": {"click": {"auc": click}, "conversion": {"auc": conversion}},
                "oracle": {"click": {"auc": 0.82}, "conversion": {"auc": 0.86}}}

    runs = [run("mmoe", 0.770, 0.810, 2, 4), run("dcrnn", 0.780, 0.805, 3, 5), run("dtrn", 0.760, 0.800, 1, 3),
            run("ple", 0.775, 0.815, 4, 5)]
    text = summary(runs, "synthetic:conflict:100000")
    assert "3 of 4 runs stopped early on the validation score (the others reached the epoch limit" in text
    all_stopped = [*runs[:3], runs[3] | {"epochs_run": 6}]  # ple's best epoch 4 no longer its last
    assert "4 of 4 runs stopped early on the validation score." in summary(all_stopped, "synthetic:easy")
    assert "click dcrnn (0.7800, 0.0400 below the oracle); conversion ple (0.8150, 0.0450 below the oracle)" in text
    assert "dcrnn ranks 1st of 4 on click (0.7800), 3rd of 4 on conversion (0.8050)" in text
    assert "dtrn ranks 4th of 4 on click (0.7600), 4th of 4 on conversion (0.8000); its best validation " \
           "epoch was 1" in text
    assert "On `conflict`" in text and "On `conflict`" not in summary(runs, "synthetic:easy:1000")
