"""The trainer, early stopping, checkpoints and weighting, in process on tiny data."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from fakes import tiny_dataset, with_scenario
from mtrec.data.batches import gather_batch
from mtrec.models import create_model, list_models
from mtrec.objectives.weighting import create_weighting
from mtrec.training.build import build_run, resolve_config
from mtrec.training.callbacks import EarlyStopping, TrainerCallback
from mtrec.training.checkpoint import ArtifactError, load_model
from mtrec.training.config import ConfigError, RunConfig, TrainConfig
from mtrec.training.footprint import check_fits, model_bytes
from mtrec.training.progress import EpochProgress
from mtrec.training.run import train_run
from mtrec.training.rundir import RunDirectory
from mtrec.training.state import TrainState
from mtrec.training.trainer import FitResult, Trainer


def quiet(_: str) -> None:
    pass


def run(tmp: Path, name: str, seed: int = 0, epochs: int = 2) -> dict:  # type: ignore[type-arg]
    config = RunConfig(model="mmoe", data="tiny",
                       train=TrainConfig(epochs=epochs, batch_size=64, seed=seed, num_threads=1, prefetch=1))
    return train_run(config, tmp / name, dataset=tiny_dataset(rows=600), log=quiet)


def test_seeded_runs_repeat_exactly(tmp_path: Path) -> None:
    a, b, c = run(tmp_path, "a"), run(tmp_path, "b"), run(tmp_path, "c", seed=1)
    assert a["test"] == b["test"]
    assert a["test"] != c["test"]


def test_saved_model_is_the_best_epoch_and_reloads(tmp_path: Path) -> None:
    metrics = run(tmp_path, "r", epochs=4)
    history = [json.loads(line) for line in (tmp_path / "r" / "history.jsonl").read_text().splitlines()]
    scores = [row["valid_score"]["mean"] for row in history]
    assert metrics["best_epoch"] == int(np.argmax(scores))
    model, config = load_model(tmp_path / "r")
    assert config.model == "mmoe"
    data = tiny_dataset(rows=600)
    batch = gather_batch(data, data.splits["test"])
    with torch.no_grad():
        probs = model(batch.features)
    from mtrec.metrics import auc

    labels = batch.labels["click"].numpy()
    assert auc(labels, probs["click"].numpy()) == pytest.approx(metrics["test"]["click"]["auc"], abs=1e-6)


def test_early_stopping_counts_patience() -> None:
    stopper = EarlyStopping(patience=1)
    assert stopper.update({"mean": 0.5}, 0) == ["mean"] and not stopper.should_stop
    assert not stopper.update({"mean": 0.4}, 1) and not stopper.should_stop
    assert not stopper.update({"mean": 0.45}, 2) and stopper.should_stop
    assert stopper.best_epoch == {"mean": 0}


def test_early_stopping_per_task_goes_on_while_any_task_improves() -> None:
    stopper = EarlyStopping(patience=0)
    assert stopper.update({"click": 0.6, "conversion": 0.7}, 0) == ["click", "conversion"]
    assert stopper.update({"click": 0.5, "conversion": 0.8}, 1) == ["conversion"] and not stopper.should_stop
    assert not stopper.update({"click": 0.55, "conversion": 0.75}, 2) and stopper.should_stop
    assert stopper.best_epoch == {"click": 0, "conversion": 1}


def test_model_file_that_is_not_safetensors_is_refused(tmp_path: Path) -> None:
    run(tmp_path, "r", epochs=1)
    (tmp_path / "r" / "model.safetensors").write_bytes(b"\x80\x04garbage")
    with pytest.raises(ArtifactError, match="not a valid safetensors model file"):
        load_model(tmp_path / "r")
    with pytest.raises(ArtifactError, match="run directory not found"):
        load_model(tmp_path / "nothing")


def test_fixed_weighting_weights_and_errors() -> None:
    weighting = create_weighting("fixed", ["click", "conversion"], weights={"conversion": 3.0})
    losses = {"click": torch.tensor(1.0), "conversion": torch.tensor(2.0)}
    assert float(weighting.combine(losses, None)) == 7.0  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"unknown task\(s\) \['buy'\]"):
        create_weighting("fixed", ["click"], weights={"buy": 1.0})
    with pytest.raises(ValueError, match="unknown weighting 'magic'"):
        create_weighting("magic", ["click"])


def test_roc_plot_without_any_two_class_task_warns_nothing(tmp_path: Path) -> None:
    import warnings

    from mtrec.training.plots import plot_roc

    rng = np.random.default_rng(0)
    probs = {"click": rng.random(50), "buy": rng.random(50)}
    labels = {"click": np.ones(50, np.float32), "buy": np.zeros(50, np.float32)}  # as on a tiny sample
    masks = {task: np.ones(50, np.float32) for task in probs}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plot_roc(probs, labels, masks, tmp_path / "roc.png")
    assert (tmp_path / "roc.png").stat().st_size > 1000


class Recorder(TrainerCallback):
    """Records what the hooks receive."""

    def __init__(self) -> None:
        self.steps: list[int] = []
        self.rows: list[dict] = []  # type: ignore[type-arg]
        self.best_epochs: dict[str, int] = {}

    def on_step_end(self, trainer: Trainer, state: TrainState, terms: dict[str, torch.Tensor] | None) -> None:
        assert terms is not None and set(trainer.model.task_names) <= set(terms)
        self.steps.append(state.global_step)

    def on_epoch_end(self, trainer: Trainer, state: TrainState, row: dict) -> None:  # type: ignore[type-arg]
        self.rows.append(row)

    def on_fit_end(self, trainer: Trainer, result: FitResult) -> None:
        self.best_epochs = result.best_epochs


def test_callbacks_see_every_step_epoch_and_the_result(tmp_path: Path) -> None:
    recorder = Recorder()
    config = RunConfig(model="mmoe", data="tiny",
                       train=TrainConfig(epochs=2, batch_size=64, patience=5, num_threads=1, prefetch=0))
    train_run(config, tmp_path / "r", dataset=tiny_dataset(rows=600), log=quiet, callbacks=[recorder])
    history = [json.loads(line) for line in (tmp_path / "r" / "history.jsonl").read_text().splitlines()]
    assert recorder.steps == list(range(1, len(recorder.steps) + 1)) and len(recorder.steps) % 2 == 0
    assert [row["epoch"] for row in recorder.rows] == [row["epoch"] for row in history] == [0, 1]
    assert recorder.best_epochs.keys() == {"click", "conversion"}


def test_train_fraction_trains_on_a_fixed_subset_of_the_train_rows(tmp_path: Path) -> None:
    data = tiny_dataset(rows=600)
    quarter = data.split_rows("train", 0.25)
    assert len(quarter) == round(0.25 * data.split_size("train")) == data.split_size("train", 0.25)
    assert set(quarter) < set(data.splits["train"])
    np.testing.assert_array_equal(quarter, data.split_rows("train", 0.25))  # the same rows every time
    logged: list[str] = []
    recorder = Recorder()
    config = RunConfig(model="mmoe", data="tiny", train=TrainConfig(
        epochs=1, batch_size=16, train_fraction=0.25, num_threads=1, prefetch=0))
    train_run(config, tmp_path / "r", dataset=data, log=logged.append, callbacks=[recorder])
    assert len(recorder.steps) == -(-len(quarter) // 16)  # one epoch of the subset's batches
    assert any(f"{len(quarter):,} train rows (0.25 of" in line for line in logged)
    with pytest.raises(ConfigError, match=r"train\.train_fraction"):
        TrainConfig.parse({"train_fraction": 0.0})


def test_build_run_leaves_its_config_as_it_is() -> None:
    config = RunConfig(model="esmm")
    before = config.model_dump()
    model, objective, weighting = build_run(config, tiny_dataset().schema)
    assert config.model_dump() == before
    assert weighting.current_weights().keys() == set(model.task_names)
    assert model.default_objective[0] == "entire_space" and objective is not None
    resolved = resolve_config(config)
    assert resolved.train.objective == "entire_space" and resolved.model_options and config.train.objective == ""


def trainer_on_tiny(tmp_path: Path, log: Callable[[str], None], **train: Any) -> tuple[Trainer, FitResult]:
    data = tiny_dataset(rows=600)
    config = TrainConfig(epochs=1, batch_size=64, num_threads=1, prefetch=0, **train)
    model = create_model("mmoe", data.schema)
    trainer = Trainer(model, config, RunDirectory(tmp_path / "run"), log=log)
    return trainer, trainer.fit(data)


def test_progress_lines_where_output_is_not_a_terminal(tmp_path: Path) -> None:
    lines: list[str] = []
    trainer, _ = trainer_on_tiny(tmp_path, lines.append, progress_seconds=1e-9)
    progress = [line for line in lines if "samples/s" in line]
    assert len(progress) == trainer.steps_per_epoch  # stderr is not a terminal under pytest: one per step
    assert progress[-1].startswith("epoch 0: 360/360 samples (100%)") and "0:00 left" in progress[-1]
    assert re.search(r"train loss click \d\.\d{4} conversion \d\.\d{4}$", progress[-1])
    lines.clear()
    trainer_on_tiny(tmp_path / "quiet", lines.append, progress_seconds=0)
    assert not [line for line in lines if "samples/s" in line]


def test_progress_bar_on_a_terminal_shows_the_running_loss_per_task() -> None:
    progress = EpochProgress(3, 1000, 0, ["click", "conversion"], 30.0, lambda _: None, enabled=True,
                             interactive=True)
    progress.bar.mininterval = 0
    progress.update(100, lambda: torch.tensor([1.0, 3.0]), steps=2)
    assert progress.bar.n == 100 and progress.bar.total == 1000 and progress.bar.desc == "epoch 3"
    assert progress.bar.postfix == "click 0.5000 conversion 1.5000"
    progress.close()


@pytest.mark.parametrize(("minutes", "checkpoints"), [(0.0, 1), (1e-9, 6)])  # 6 steps in the epoch
def test_checkpoints_are_also_written_by_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, minutes: float,
                                              checkpoints: int) -> None:
    written: list[int] = []
    write = RunDirectory.write_resume

    def counted(self: RunDirectory, state: dict[str, Any]) -> None:
        written.append(state["progress"]["global_step"])
        write(self, state)

    monkeypatch.setattr(RunDirectory, "write_resume", counted)
    trainer, _ = trainer_on_tiny(tmp_path, quiet, checkpoint_every=0, checkpoint_minutes=minutes)
    assert trainer.steps_per_epoch == 6 and written == list(range(7 - checkpoints, 7))


def test_footprint_counts_what_each_model_allocates_and_leaves_the_rng_alone() -> None:
    schema = with_scenario(tiny_dataset()).schema  # scenario models need one
    for name in list_models():
        torch.manual_seed(0)
        estimate = model_bytes(name, schema, {})
        after = torch.rand(1)
        torch.manual_seed(0)
        model = create_model(name, schema)
        assert estimate == sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()]), name
        torch.manual_seed(0)
        assert torch.equal(after, torch.rand(1))


def test_a_model_beyond_the_machines_memory_names_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    schema = tiny_dataset().schema
    size = model_bytes("mmoe", schema, {})
    monkeypatch.setattr("mtrec.resources.machine_memory", lambda: 5 * size)
    monkeypatch.setattr("mtrec.training.footprint.machine_memory", lambda: 5 * size)
    check_fits("mmoe", schema, {}, copies=5)
    with pytest.raises(ConfigError, match=r"model 'mmoe' \(5 copies .* model_options.tower_sizes = \[4096\]\) "
                                          r"needs about .* MiB of memory; this machine has"):
        check_fits("mmoe", schema, {"tower_sizes": [4096]}, copies=5)
