"""The `mtrec` command line, end to end in a subprocess: the contract other tools rely on."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from mtrec.cli import main
from mtrec.models import list_models
from mtrec.training.checkpoint import load_model


def mtrec(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mtrec", *args], capture_output=True, text=True, timeout=300)


def test_models_lists_the_registry_with_a_description_each() -> None:
    result = mtrec("models")
    assert result.returncode == 0
    lines = result.stdout.splitlines()
    assert [line.split()[0] for line in lines] == list_models()
    assert all(len(line.split()) > 3 for line in lines), lines


HEAVY_MODULES = ("torch", "numpy", "pyarrow", "sklearn", "matplotlib", "onnx", "onnxruntime", "fastapi", "uvicorn")


def test_start_up_imports_no_heavy_module() -> None:
    """`mtrec --help`, `mtrec models` and argument errors stay fast: the CLI and the model list load none of
    torch, the data stack or the serving stack (benchmarks/startup.py times them)."""
    probe = ("import sys; from mtrec.cli import cli, main; from mtrec.models import list_models, model_description; "
             "[model_description(n) for n in list_models()]; "
             f"print(','.join(m for m in {HEAVY_MODULES!r} if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ""


def test_train_writes_the_run_directory(tiny_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = mtrec("train", "--model", "mmoe", "--data", str(tiny_dir), "--out", str(out),
                   "--epochs", "2", "--batch-size", "32", "--seed", "3")
    assert result.returncode == 0, result.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["model"] == "mmoe"
    assert metrics["tasks"] == ["click", "conversion"]
    for task in metrics["tasks"]:
        assert 0.0 <= metrics["test"][task]["auc"] <= 1.0
        assert metrics["test"][task]["logloss"] > 0
    assert metrics["train_samples_per_s"] > 0
    assert metrics["params"] == sum(p.numel() for p in load_model(out)[0].parameters())
    for name in ("model.safetensors", "schema.json", "config.json", "history.jsonl", "learning_curves.png",
                 "roc.png"):
        assert (out / name).stat().st_size > 0, name
    config = json.loads((out / "config.json").read_text())
    assert config["train"]["seed"] == 3 and config["model_options"]["num_experts"] == 4


def test_config_file_and_flags_combine(tiny_dir: Path, tmp_path: Path) -> None:
    config = tmp_path / "run.yaml"
    config.write_text("model: shared_bottom\nmodel_options: {bottom_sizes: [32]}\ntrain: {epochs: 5, lr: 0.01}\n")
    out = tmp_path / "run"
    result = mtrec("train", "--config", str(config), "--data", str(tiny_dir), "--out", str(out), "--epochs", "1")
    assert result.returncode == 0, result.stderr
    saved = json.loads((out / "config.json").read_text())
    assert saved["model"] == "shared_bottom" and saved["model_options"]["bottom_sizes"] == [32]
    assert saved["train"]["epochs"] == 1 and saved["train"]["lr"] == 0.01


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "nope", "--data", "synthetic"], "unknown model 'nope'; registered models:"),
        (["--model", "mmoe", "--data", "/no/such/dir"], "neither 'synthetic[:PRESET[:ROWS]]' nor an existing"),
        (["--model", "mmoe", "--data", "synthetic:easy:many"], "ROWS must be an integer"),
        (["--data", "synthetic"], "no model given"),
        (["--model", "star", "--data", "synthetic:easy:200"], "star is a multi-scenario model: its dataset needs"),
        (["--model", "mmoe", "--data", "synthetic", "--epochs", "0"], "--epochs: must be >= 1, got 0"),
    ],
)
def test_bad_input_gives_one_clear_line(
    args: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["train", *args, "--out", str(tmp_path / "run")])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_mismatched_dataset_is_named(tiny_dir: Path, tmp_path: Path) -> None:
    (tiny_dir / "labels.npy").write_bytes(b"not an array")
    result = mtrec("train", "--model", "mmoe", "--data", str(tiny_dir), "--out", str(tmp_path / "run"))
    assert result.returncode == 2
    assert "labels.npy has 12 bytes, but 2,048 bytes were written: the file is damaged" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("args", "models"),
    [
        ([], ["shared_bottom", "mmoe", "ple", "esmm", "dcrnn", "dtrn"]),
        (["--models", "all"], list_models()),
        (["--models", "mmoe, ple"], ["mmoe", "ple"]),
    ],
)
def test_demo_trains_the_headline_models_and_key_baselines_unless_told(
    args: list[str], models: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The default demo is the short one (headline models and key baselines, batch 256, early stopping at
    the first epoch without improvement, one thread); ``--models all`` keeps every registered model."""
    import mtrec.bench.demo
    from mtrec.bench.runner import BenchConfig

    seen: list[BenchConfig] = []
    monkeypatch.setattr(mtrec.bench.demo, "run_bench", lambda config, *_, **__: seen.append(config) or {"runs": []})
    monkeypatch.setattr(mtrec.bench.demo, "write_samples", lambda *_: None)
    main(["demo", "--out", str(tmp_path / "demo"), *args])
    (config,) = seen
    assert [m.name for m in config.model_entries()] == models
    assert [d.spec for d in config.datasets] == ["synthetic:conflict:60000"]
    assert config.train["epochs"] == 10 and config.train["patience"] == 0 and config.train["num_threads"] == 1
    assert config.train["batch_size"] == 256
