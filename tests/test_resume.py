"""Resumable training: the checkpoint format, and a run killed with SIGKILL then resumed."""

from __future__ import annotations

import json
import math
import signal
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from fakes import tiny_dataset
from mtrec.cli import cli
from mtrec.models import create_model
from mtrec.training.checkpoint import WEIGHTS, load_model
from mtrec.training.config import ConfigError, RunConfig, TrainConfig
from mtrec.training.resume import RESUME, ResumeError, decode_state, encode_state, load_resume, save_resume
from mtrec.training.run import train_run
from mtrec.training.rundir import RunDirectory
from mtrec.training.trainer import Trainer
from procs import max_weight_difference, run_python


def test_nested_state_round_trips_without_pickle(tmp_path: Path) -> None:
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    model(torch.randn(4, 3)).sum().backward()
    optimizer.step()
    state = {"optimizer": optimizer.state_dict(), "best": -math.inf, "rng": np.random.get_state(),
             "history": [{"auc": float("nan"), "weights": (1.0, 2)}], "empty": {}}
    save_resume(tmp_path / RESUME, state)
    loaded = load_resume(tmp_path / RESUME)
    assert loaded["best"] == -math.inf and math.isnan(loaded["history"][0]["auc"])
    assert loaded["history"][0]["weights"] == (1.0, 2) and loaded["empty"] == {}
    assert loaded["rng"][0] == "MT19937" and np.array_equal(loaded["rng"][1], state["rng"][1])
    saved_opt, got_opt = state["optimizer"], loaded["optimizer"]
    assert got_opt["param_groups"] == saved_opt["param_groups"]
    assert set(got_opt["state"]) == {0, 1}  # integer keys survive
    for pid, entries in saved_opt["state"].items():
        for key, value in entries.items():
            torch.testing.assert_close(got_opt["state"][pid][key], value, rtol=0, atol=0)
    fresh = torch.optim.Adam(torch.nn.Linear(3, 2).parameters(), lr=0.5)
    fresh.load_state_dict(got_opt)  # what a resumed run does
    assert fresh.param_groups[0]["lr"] == 0.01


def test_unstorable_state_and_bad_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(ResumeError, match="cannot store object at /a/b"):
        encode_state({"a": {"b": object()}}, {})
    (tmp_path / "bad.safetensors").write_bytes(b"\x10\x00\x00\x00not a header")
    with pytest.raises(ResumeError, match="not a readable resume checkpoint"):
        load_resume(tmp_path / "bad.safetensors")
    tensors: dict[str, torch.Tensor] = {}
    skeleton = encode_state({"w": torch.ones(2)}, tensors)
    assert decode_state(skeleton, tensors)["w"].tolist() == [1.0, 1.0]


# ---- killed and resumed ---------------------------------------------------------------------------
def run_config(data_dir: Path, **train: Any) -> dict[str, Any]:
    return {"model": "shared_bottom", "data": str(data_dir),
            "model_options": {"embedding_dim": 4, "bottom_sizes": [16], "tower_sizes": [8]},
            "train": {"epochs": 3, "batch_size": 16, "lr": 0.01, "patience": 5, "num_threads": 1,
                      "prefetch": 0, "checkpoint_every": 4, **train}}


# The child trains through the CLI and SIGKILLs itself at a chosen moment: entering optimizer step
# KILL_AT (mid-epoch), or half-way through writing the KILL_AT-th resume checkpoint.
KILLER = """
import os, signal, sys
from pathlib import Path
import mtrec.training.tensorfile as tensorfile
import mtrec.training.trainer as trainer
moment, kill_at = sys.argv[1], int(sys.argv[2])
if moment == "step":
    step = trainer.Trainer._step
    def killing_step(self, batch, state):
        if state.global_step == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        return step(self, batch, state)
    trainer.Trainer._step = killing_step
else:
    save_file, calls = tensorfile.save_file, []
    def killing_save(tensors, path, metadata=None):
        save_file(tensors, path, metadata=metadata)
        if metadata is not None:  # a resume checkpoint (model weights carry no metadata)
            calls.append(path)
            if len(calls) == kill_at:
                os.truncate(path, os.path.getsize(path) // 2)
                os.kill(os.getpid(), signal.SIGKILL)
    tensorfile.save_file = killing_save
from mtrec.cli import main
sys.argv = ["mtrec", "train", *sys.argv[3:]]
main()
"""


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    root = tmp_path_factory.mktemp("resume")
    tiny_dataset(rows=240, seed=2).save(root / "data")
    metrics = train_run(RunConfig.from_dict(run_config(root / "data")), root / "whole", log=lambda _: None)
    return root, metrics


@pytest.mark.parametrize(("moment", "kill_at"), [("step", 14), ("write", 4)])
def test_a_run_killed_mid_epoch_resumes_to_the_uninterrupted_result(
    uninterrupted: tuple[Path, dict[str, Any]], tmp_path: Path, moment: str, kill_at: int
) -> None:
    """144 train rows, batch 16: 9 steps per epoch; checkpoints after steps 4, 8, 9 (epoch end), 13...
    ``step 14``: killed inside epoch 1, two steps after the checkpoint of step 12. ``write 4``: killed half-way
    through writing the step-12 checkpoint, so the previous (end of epoch 0) must still be the one read."""
    root, whole = uninterrupted
    config = run_config(root / "data")
    (tmp_path / "run.json").write_text(json.dumps(config))
    out = tmp_path / "run"
    args = ["--config", str(tmp_path / "run.json"), "--out", str(out)]
    killed = run_python(KILLER, moment, str(kill_at), *args)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]

    progress = load_resume(out / RESUME)["progress"]
    assert (progress["epoch"], progress["step"]) == ((1, 3) if moment == "step" else (1, 0))
    if moment == "write":
        assert list(out.glob(f".{RESUME}.*.tmp"))  # the torn write is left behind, never renamed

    result = CliRunner().invoke(cli, ["train", *args, "--resume"], catch_exceptions=False)
    assert result.exit_code == 0 and "resumed from" in result.output, result.output
    resumed = json.loads((out / "metrics.json").read_text())
    assert resumed["samples_seen"] == whole["samples_seen"] == 3 * 144
    assert resumed["epochs_run"] == 3 and len((out / "history.jsonl").read_text().splitlines()) == 3
    assert not list(out.glob(".*.tmp"))
    model, _ = load_model(out)  # the best checkpoint is valid and loadable
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert max_weight_difference(out / WEIGHTS, root / "whole" / WEIGHTS) < 1e-6
    for task, metrics in whole["test"].items():
        assert resumed["test"][task] == pytest.approx(metrics, abs=1e-6, nan_ok=True)


def test_resume_refuses_other_settings_but_may_add_epochs(
    uninterrupted: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    root, _ = uninterrupted
    out = tmp_path / "run"
    short = run_config(root / "data", epochs=1)
    train_run(RunConfig.from_dict(short), out, log=lambda _: None)
    assert load_resume(out / RESUME)["progress"]["epoch"] == 1
    with pytest.raises(ResumeError, match=r"train.batch_size: 16 -> 32"):
        train_run(RunConfig.from_dict(run_config(root / "data", epochs=2, batch_size=32)), out,
                  log=lambda _: None, resume=True)
    other_model = {**short, "model_options": {**short["model_options"], "embedding_dim": 8}}
    with pytest.raises(ConfigError, match=r"cannot resume.*model_options"):
        train_run(RunConfig.from_dict(other_model), out, log=lambda _: None, resume=True)
    # more epochs may be asked for: the run continues from epoch 1
    logs: list[str] = []
    more = train_run(RunConfig.from_dict(run_config(root / "data", epochs=2)), out, log=logs.append, resume=True)
    assert any("resumed from" in line and "epoch 1 step 0" in line for line in logs)
    assert more["samples_seen"] == 2 * 144 and more["epochs_run"] == 2


@pytest.mark.parametrize("weighting", ["uncertainty", "gradnorm"])
def test_resume_restores_the_weighting_strategy(tmp_path: Path, weighting: str) -> None:
    """Learned weights (uncertainty) and GradNorm's state (its buffers, and the non-tensor flag that its
    initial losses are taken) come back: stopping after epoch 1 and resuming matches the uninterrupted run."""
    data = tiny_dataset(rows=240, seed=4)

    def fit(out: Path, epochs: int, resume: bool = False) -> Trainer:
        torch.manual_seed(0)
        model = create_model("shared_bottom", data.schema, embedding_dim=4, bottom_sizes=[8], tower_sizes=[4])
        config = TrainConfig(epochs=epochs, batch_size=16, lr=0.01, num_threads=1, prefetch=0, patience=5,
                             weighting=weighting)
        trainer = Trainer(model, config, RunDirectory(out), log=lambda _: None)
        trainer.fit(data, resume=resume)
        return trainer

    whole = fit(tmp_path / "whole", 2)
    fit(tmp_path / "parts", 1)
    resumed = fit(tmp_path / "parts", 2, resume=True)
    want, got = whole.weighting.state_dict(), resumed.weighting.state_dict()
    assert want.keys() == got.keys()
    for key, value in want.items():
        if isinstance(value, torch.Tensor):
            torch.testing.assert_close(got[key], value, rtol=0, atol=1e-6)
        else:
            assert got[key] == value, key
    assert max_weight_difference(tmp_path / "parts" / WEIGHTS, tmp_path / "whole" / WEIGHTS) < 1e-6
