"""``train.compile``: a compiled training step trains like the eager one, and its run saves, reloads and
exports as an eager run does."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from fakes import tiny_dataset
from mtrec.cli import main
from mtrec.export.onnx import random_features
from mtrec.training.checkpoint import load_model
from mtrec.training.config import ConfigError, RunConfig, TrainConfig
from mtrec.training.run import train_run

pytestmark = [
    pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None,
                       reason="torch.compile's inductor backend needs a C++ compiler on CPU, and none is on PATH"),
    pytest.mark.slow,  # compiling the step takes about 15 s of CPU
]


def run(root: Path, name: str, compile_step: bool, precision: str = "fp32") -> dict:  # type: ignore[type-arg]
    """One epoch of a small MMoE on a tiny dataset (180 train rows: batches of 64, 64 and 52), with or
    without ``train.compile``, in ``precision`` (fp32: compiled and eager agree to 1e-5; bf16 kernels
    that inductor fuses round differently from eager ones)."""
    config = RunConfig(model="mmoe", data=str(root / "data"), model_options={"expert_sizes": [16], "tower_sizes": [8]},
                       train=TrainConfig(epochs=1, batch_size=64, num_threads=1, prefetch=0, compile=compile_step,
                                         precision=precision))
    return train_run(config, root / name, log=lambda _: None)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same seeded run, eager (``eager``), compiled (``compiled``) and compiled in bf16 (``compiled_bf16``)."""
    root = tmp_path_factory.mktemp("compile")
    tiny_dataset(rows=300, seed=4).save(root / "data")
    run(root, "eager", compile_step=False)
    run(root, "compiled", compile_step=True)
    run(root, "compiled_bf16", compile_step=True, precision="bf16")
    return root


def history(run_dir: Path) -> dict:  # type: ignore[type-arg]
    return json.loads((run_dir / "history.jsonl").read_text().splitlines()[0])


def test_compiled_training_gives_the_eager_losses_and_weights(runs: Path) -> None:
    eager, compiled = history(runs / "eager"), history(runs / "compiled")
    for task, loss in eager["train_loss"].items():
        assert compiled["train_loss"][task] == pytest.approx(loss, rel=1e-5)
    for task, metrics in eager["valid"].items():
        assert compiled["valid"][task]["auc"] == pytest.approx(metrics["auc"], abs=1e-5)
    with safe_open(runs / "eager" / "model.safetensors", "pt") as e, \
            safe_open(runs / "compiled" / "model.safetensors", "pt") as c:
        assert sorted(c.keys()) == sorted(e.keys())  # no "_orig_mod." prefix
        for key in e.keys():  # noqa: SIM118 (safe_open has keys(), not iteration)
            assert (c.get_tensor(key) - e.get_tensor(key)).abs().max() < 1e-5, key


def test_a_compiled_bf16_run_trains_like_the_fp32_one(runs: Path) -> None:
    eager, compiled = history(runs / "eager"), history(runs / "compiled_bf16")
    assert json.loads((runs / "compiled_bf16" / "metrics.json").read_text())["precision"] == "bf16"
    for task, loss in eager["train_loss"].items():
        assert compiled["train_loss"][task] == pytest.approx(loss, rel=2e-2)
        assert compiled["train_loss"][task] != loss  # it did compute in bf16


def test_a_compiled_run_reloads_and_exports_with_parity(runs: Path, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    model, config = load_model(runs / "compiled")
    eager, _ = load_model(runs / "eager")
    assert config.train.compile
    features = random_features(model.schema, 50, seed=1)
    with torch.no_grad():
        got, expected = model(features), eager(features)
    for task, probs in expected.items():
        assert (got[task] - probs).abs().max() < 1e-5, task
    out = tmp_path / "model.onnx"
    with pytest.raises(SystemExit) as exit_info:
        main(["export", str(runs / "compiled"), "--out", str(out), "--inputs", "ids"])
        raise SystemExit(0)
    assert not exit_info.value.code
    assert "parity ok" in capsys.readouterr().out and out.stat().st_size > 0


def test_compile_is_refused_with_sharded_tables() -> None:
    with pytest.raises(ConfigError, match="compile"):
        TrainConfig.parse({"compile": True, "embedding_sharding": "table_wise", "embedding_optimizer": "adagrad"})
