"""Gradient conflict in history.jsonl and TensorBoard event files (train.log_gradient_conflict, log_to)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from mtrec.cli import main
from mtrec.training.config import RunConfig, TrainConfig
from mtrec.training.run import train_run

pytestmark = pytest.mark.usefixtures("one_thread")


def train(data: Path, out: Path, **settings: object) -> dict[str, object]:
    config = RunConfig(model="mmoe", data=str(data), train=TrainConfig(epochs=2, batch_size=32, **settings))
    return train_run(config, out, log=lambda _: None, overwrite=True)


def history(run: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]


def test_gradient_conflict_goes_into_the_history_and_leaves_the_run_unchanged(tiny_dir: Path, tmp_path: Path) -> None:
    plain = train(tiny_dir, tmp_path / "plain", weighting="uncertainty")
    logged = train(tiny_dir, tmp_path / "logged", weighting="uncertainty", log_gradient_conflict=True, log_every=2)
    assert logged["test"] == plain["test"]  # the probe changes neither the weights nor the random stream
    rows = history(tmp_path / "logged")
    steps = [m["step"] for row in rows for m in row["gradient_cosine"]]  # type: ignore[attr-defined]
    assert steps and steps == sorted(steps) and all(s % 2 == 0 for s in steps)
    cosines = [m["click vs conversion"] for row in rows for m in row["gradient_cosine"]]  # type: ignore[attr-defined]
    assert all(-1 <= c <= 1 for c in cosines) and len(set(cosines)) > 1
    assert (tmp_path / "logged" / "gradient_conflict.png").stat().st_size > 1000
    assert "gradient_cosine" not in history(tmp_path / "plain")[0]


def test_tensorboard_files_are_readable_by_tensorboards_event_reader(tiny_dir: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    train(tiny_dir, run, weighting="gradnorm", log_to=["tensorboard"], log_gradient_conflict=True, log_every=1)
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    for tag in ("loss/click", "loss/conversion", "learning_rate/adam", "valid/click/auc", "valid/conversion/auc",
                "task_weight/click", "task_weight/conversion", "gradient_cosine/click vs conversion",
                "test/click/auc", "epoch_loss/click"):
        assert tag in tags, (tag, sorted(tags))
    valid = events.Scalars("valid/click/auc")
    expected = [row["valid"]["click"]["auc"] for row in history(run)]  # type: ignore[index]
    assert [e.value for e in valid] == pytest.approx(expected, rel=1e-6)  # TensorBoard stores float32
    assert len(events.Scalars("loss/click")) == valid[-1].step  # log_every 1: one point per step
    # a fresh run into the same directory starts its curves anew
    train(tiny_dir, run, log_to=["tensorboard"])
    assert len(list((run / "tensorboard").iterdir())) == 1


def test_an_unknown_log_target_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "run.yaml"
    config.write_text("model: mmoe\ndata: synthetic:easy:2000\ntrain: {log_to: [wandb]}\n")
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--config", str(config), "--out", str(tmp_path / "run")])
    assert exit_info.value.code == 2
    assert "train.log_to" in capsys.readouterr().err
