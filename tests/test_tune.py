"""``mtrec tune``: the search space is checked like a run config, studies are seeded, resumable and pruned at
epoch granularity, every trial is a normal run directory, and a shared PostgreSQL storage lets two processes
work on one study."""

from __future__ import annotations

import csv
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml

from mtrec.cli import main
from mtrec.training.config import RunConfig
from mtrec.training.nonfinite import NonFiniteLossError
from mtrec.tune import TuneError, load_tune_config, tune
from mtrec.tune.study import PruningCallback, epoch_score, run_score
from procs import child_env

pytestmark = pytest.mark.usefixtures("one_thread")

CONFIG = """
model: mmoe
data: synthetic:easy:1500
trials: 3
seed: 0
train: {epochs: 2, batch_size: 256, num_threads: 1}
model_options: {num_experts: 2, expert_sizes: [16], tower_sizes: [8]}
space:
  lr: {low: 1e-3, high: 3e-2, log: true}
  embedding_dim: {choices: [4, 8]}
"""


def write(tmp_path: Path, text: str, name: str = "tune.yaml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def rows(out: Path) -> list[dict[str, str]]:
    with open(out / "trials.csv", newline="") as f:
        return list(csv.DictReader(f))


# ---- the search space ----------------------------------------------------------------------------------
@pytest.mark.parametrize(("space", "expected"), [
    ("{}", "space: name at least one parameter to search"),
    ("{num_layers: {low: 1, high: 3}}", "space.num_layers: unknown parameter"),
    ("{lr: {low: 0.1, high: 0.01}}", "low 0.1 is above high 0.01"),
    ("{lr: {low: 0.0, high: 0.1, log: true}}", "a log range needs low > 0"),
    ("{lr: {low: 0.01}}", "needs both 'low' and 'high'"),
    ("{lr: {choices: [0.1], low: 0.1, high: 1.0}}", "either 'choices' or a range"),
    ("{dropout: {low: 0.0, high: 1.5}}", "space.dropout: the value 1.5 is refused"),
    ("{dropout: {choices: [0.1, 1.0]}}", "space.dropout: the value 1.0 is refused"),
    ("{epochs: {choices: [1, 2]}, lr: {low: 1e-3, high: 1e-2}}", "space.epochs: contradictory"),
    ("{seed: {choices: [0, 1]}}", "space.seed: the seed is not searched"),
])
def test_a_bad_space_is_one_line_naming_the_key(tmp_path: Path, space: str, expected: str) -> None:
    text = CONFIG.split("space:")[0] + f"space: {space}\n"
    with pytest.raises(TuneError) as info:
        load_tune_config(write(tmp_path, text))
    message = str(info.value)
    assert expected in message and "\n" not in message and "tune.yaml" in message


def test_the_space_sorts_names_into_model_options_and_train_settings(tmp_path: Path) -> None:
    config = load_tune_config(write(tmp_path, CONFIG))
    run = config.run_config({"lr": 0.02, "embedding_dim": 4})
    assert run.train.lr == 0.02 and run.train.epochs == 2
    assert run.model_options["embedding_dim"] == 4 and run.model_options["num_experts"] == 2


# ---- scores and pruning --------------------------------------------------------------------------------
def test_scores_follow_the_selection_keys() -> None:
    history = [{"epoch": 0, "valid_score": {"a": 0.6, "b": 0.7}}, {"epoch": 1, "valid_score": {"a": 0.8, "b": 0.5}}]
    assert epoch_score(history[1]) == pytest.approx(0.65)
    assert run_score(history) == pytest.approx((0.8 + 0.7) / 2)  # each key's own best epoch


def test_the_pruning_callback_reports_each_epoch_and_stops_when_told() -> None:
    class Trial:
        def __init__(self) -> None:
            self.reported: list[tuple[float, int]] = []

        def report(self, value: float, step: int) -> None:
            self.reported.append((value, step))

        def should_prune(self) -> bool:
            return len(self.reported) >= 2

    trial = Trial()
    callback = PruningCallback(trial)
    callback.on_epoch_end(None, None, {"epoch": 0, "valid_score": {"mean": 0.6}})
    with pytest.raises(optuna.TrialPruned):
        callback.on_epoch_end(None, None, {"epoch": 1, "valid_score": {"mean": 0.55}})
    assert trial.reported == [(0.6, 0), (0.55, 1)]


# ---- a study end to end --------------------------------------------------------------------------------
def test_a_study_writes_runs_best_config_table_and_plots_and_continues(tmp_path: Path) -> None:
    config = write(tmp_path, CONFIG)
    out = tmp_path / "study"
    study, written = tune(config, out, log=lambda _: None)
    assert {p.name for p in written} == {"trials.csv", "best.yaml", "history.png", "importances.png"}
    table = rows(out)
    assert [r["number"] for r in table] == ["0", "1", "2"]
    assert all(r["state"] in ("COMPLETE", "PRUNED") for r in table)
    for r in table:  # every trial is a normal run directory
        assert (out / r["run_dir"] / "config.json").is_file()
    best = yaml.safe_load((out / "best.yaml").read_text())
    run = RunConfig.from_dict(best)  # what `mtrec train --config` reads
    assert run.model == "mmoe" and run.train.lr == pytest.approx(study.best_trial.params["lr"])
    assert (out / "study.db").is_file()
    # a second invocation with more trials continues the same study
    study, _ = tune(config, out, trials=4, log=lambda _: None)
    assert [r["number"] for r in rows(out)] == ["0", "1", "2", "3"]
    assert len(study.trials) == 4


def test_the_sampler_is_seeded(tmp_path: Path) -> None:
    config = write(tmp_path, CONFIG.replace("trials: 3", "trials: 2"))
    params = [[t.params for t in tune(config, tmp_path / f"s{i}", log=lambda _: None)[0].trials] for i in range(2)]
    assert params[0] == params[1]


def test_a_study_killed_mid_trial_continues(tmp_path: Path) -> None:
    config = write(tmp_path, CONFIG.replace("trials: 3", "trials: 1"))
    out = tmp_path / "study"
    tune(config, out, log=lambda _: None)
    # a process killed during trial 1 leaves it RUNNING in the storage
    storage = optuna.storages.RDBStorage(f"sqlite:///{out / 'study.db'}")
    optuna.load_study(study_name="mmoe", storage=storage).ask()
    messages: list[str] = []
    study, _ = tune(config, out, trials=2, log=messages.append)
    states = [t.state.name for t in study.trials]
    assert states[1] == "FAIL" and states.count("COMPLETE") + states.count("PRUNED") == 2
    assert any("left running" in m for m in messages)


def test_a_diverging_trial_is_pruned_and_recorded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import mtrec.training.run as run_module

    def diverge(*args: Any, **kwargs: Any) -> None:
        raise NonFiniteLossError("non-finite loss of task 'click' at epoch 0 step 3; stopped before writing")

    monkeypatch.setattr(run_module, "train_run", diverge)
    out = tmp_path / "study"
    study, written = tune(write(tmp_path, CONFIG.replace("trials: 3", "trials: 2")), out, log=lambda _: None)
    assert [t.state.name for t in study.trials] == ["PRUNED", "PRUNED"]
    assert all("non-finite loss of task 'click'" in r["pruned_because"] for r in rows(out))
    assert not (out / "best.yaml").exists() and {p.name for p in written} == {"trials.csv"}


def test_a_study_is_continued_only_with_its_own_config(tmp_path: Path) -> None:
    out = tmp_path / "study"
    tune(write(tmp_path, CONFIG.replace("trials: 3", "trials: 1")), out, log=lambda _: None)
    other = write(tmp_path, CONFIG.replace("trials: 3", "trials: 1").replace("[4, 8]", "[4, 16]"), "other.yaml")
    with pytest.raises(TuneError, match="started with other settings"):
        tune(other, out, log=lambda _: None)


def test_an_unreachable_storage_is_one_line(tmp_path: Path) -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"postgresql://nobody@127.0.0.1:{port}/study"
    with pytest.raises(TuneError) as info:
        tune(write(tmp_path, CONFIG), tmp_path / "study", storage=url, log=lambda _: None)
    assert f"--storage {url}: cannot be used" in str(info.value) and "\n" not in str(info.value)


# ---- several processes on one PostgreSQL study ---------------------------------------------------------
def _postgres_binaries() -> Path | None:
    for candidate in (*sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb")), shutil.which("initdb")):
        if candidate and Path(candidate).is_file():
            return Path(candidate).parent
    return None


@pytest.fixture
def postgres() -> Iterator[str]:
    """A throw-away PostgreSQL server on a free loopback port; its URL. Its folder is made directly under the
    temporary directory, which the server's own user (when the test runs as root) can reach."""
    bin_dir = _postgres_binaries()
    if bin_dir is None:
        pytest.skip("no PostgreSQL server binaries (initdb, pg_ctl) on this machine: apt-get install postgresql")
    root = Path(tempfile.mkdtemp(prefix="mtrec-pg-"))
    data = root / "data"
    user_prefix: list[str] = []
    if os.geteuid() == 0:  # the server refuses to run as root
        if shutil.which("runuser") is None or subprocess.run(["id", "postgres"], capture_output=True).returncode:
            pytest.skip("running as root without a 'postgres' user to run the PostgreSQL server as")
        shutil.chown(root, "postgres")
        root.chmod(0o700)
        user_prefix = ["runuser", "-u", "postgres", "--"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    subprocess.run([*user_prefix, str(bin_dir / "initdb"), "-D", str(data), "-U", "tune", "--auth=trust"],
                   check=True, capture_output=True, timeout=120)
    subprocess.run([*user_prefix, str(bin_dir / "pg_ctl"), "-D", str(data), "-w", "-l", str(root / "log"),
                    "-o", f"-p {port} -k {root} -c listen_addresses=127.0.0.1", "start"],
                   check=True, capture_output=True, timeout=120)
    try:
        yield f"postgresql://tune@127.0.0.1:{port}/postgres"  # the database every new cluster has
    finally:
        subprocess.run([*user_prefix, str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                       capture_output=True, timeout=60)
        shutil.rmtree(root, ignore_errors=True)


def test_two_processes_share_one_study_through_postgresql(tmp_path: Path, postgres: str) -> None:
    config = write(tmp_path, CONFIG.replace("trials: 3", "trials: 4"))
    code = ("import sys; from mtrec.tune import tune; "
            "tune(sys.argv[1], sys.argv[2], storage=sys.argv[3], log=lambda _: None)")
    workers = [subprocess.Popen([sys.executable, "-c", code, config, str(tmp_path / f"w{i}"), postgres],
                                env=child_env(), stderr=subprocess.PIPE, text=True) for i in range(2)]
    for w in workers:
        _, err = w.communicate(timeout=300)
        assert w.returncode == 0, err
    study = optuna.load_study(study_name="mmoe", storage=postgres)
    finished = [t for t in study.trials if t.state.name in ("COMPLETE", "PRUNED")]
    assert len(finished) >= 4  # each worker stops once the study holds 4 (one may finish a last one)
    assert all(rows(tmp_path / f"w{i}") for i in range(2))  # both wrote the shared table
    ran_here = [len(list((tmp_path / f"w{i}" / "trials").glob("*"))) for i in range(2)]
    assert sum(ran_here) == len(study.trials)  # each trial ran in exactly one of the two processes


# ---- the command line ----------------------------------------------------------------------------------
@pytest.mark.parametrize(("text", "expected"), [
    (CONFIG.split("space:")[0] + "space: {}\n", "space: name at least one parameter to search"),
    (CONFIG.replace("embedding_dim: {choices", "num_layers: {choices"), "space.num_layers: unknown parameter"),
    (CONFIG.replace("low: 1e-3, high: 3e-2", "low: 3e-2, high: 1e-3"), "low 0.03 is above high 0.001"),
])
def test_the_command_refuses_a_bad_config_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                      text: str, expected: str) -> None:
    with pytest.raises(SystemExit) as info:
        main(["tune", write(tmp_path, text), "--out", str(tmp_path / "study")])
    err = capsys.readouterr().err
    assert info.value.code == 2 and expected in err and err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "study").exists()  # nothing written


def test_the_command_runs_a_study(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    main(["tune", write(tmp_path, CONFIG), "--out", str(tmp_path / "study"), "--trials", "2"])
    out = capsys.readouterr().out
    assert "2 finished trials" in out and (tmp_path / "study" / "best.yaml").is_file()


# ---- tuned models in a benchmark -----------------------------------------------------------------------
def _studies(tmp_path: Path, trials: dict[str, int]) -> Path:
    root = tmp_path / "tuned"
    for model, n in trials.items():
        text = CONFIG.replace("model: mmoe", f"model: {model}").replace(
            "model_options: {num_experts: 2, expert_sizes: [16], tower_sizes: [8]}", "model_options: {}")
        tune(write(tmp_path, text, f"{model}.yaml"), root / model, trials=n, log=lambda _: None)
    return root


def test_a_bench_trains_each_model_with_its_tuned_configuration(tmp_path: Path) -> None:
    from mtrec.bench.runner import parse_bench_config, run_bench

    root = _studies(tmp_path, {"mmoe": 2, "shared_bottom": 2})
    config = parse_bench_config({"models": ["mmoe", "shared_bottom"], "datasets": ["synthetic:easy:1500"],
                                 "seeds": [0], "train": {"epochs": 1, "num_threads": 1}, "tuned": str(root)})
    results = run_bench(config, tmp_path / "bench", log=lambda _: None)
    for run in results["runs"]:
        best = yaml.safe_load((root / run["model"] / "best.yaml").read_text())
        used = RunConfig.load(Path(run["run_dir"]) / "config.json")
        assert used.train.lr == pytest.approx(best["train"]["lr"])  # searched: the study's choice
        assert used.model_options["embedding_dim"] == best["model_options"]["embedding_dim"]
        assert used.train.epochs == 1  # fixed: the bench's
    report = (tmp_path / "bench" / "results.md").read_text()
    assert "the same budget for every model (2 finished trials each" in report


def test_a_bench_refuses_unequal_or_missing_studies(tmp_path: Path) -> None:
    from mtrec.bench.runner import parse_bench_config
    from mtrec.training.config import ConfigError

    root = _studies(tmp_path, {"mmoe": 2, "shared_bottom": 1})
    bench = {"models": ["mmoe", "shared_bottom"], "datasets": ["synthetic:easy:1500"], "tuned": str(root)}
    with pytest.raises(ConfigError, match=r"unequal budgets \(mmoe 2, shared_bottom 1 finished trials\)"):
        parse_bench_config(bench)
    with pytest.raises(ConfigError, match="ple is not a finished study"):
        parse_bench_config({**bench, "models": ["mmoe", "ple"]})


SHIPPED = sorted((Path(__file__).resolve().parents[1] / "configs" / "tune").glob("*.yaml"))


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_tune_configs_are_valid(path: Path) -> None:
    """Every study config under configs/tune parses and its space names only what the model and the trainer
    take (checked against the model's signature, as ``mtrec tune`` does before the first trial)."""
    config = load_tune_config(str(path))
    assert path.stem.endswith(f"_{config.model}")


def test_shipped_studies_of_a_dataset_have_equal_budgets() -> None:
    """The studies of one dataset (configs/tune/<dataset>_<model>.yaml) give every model the same trials,
    sampler seed, fixed train settings and shared search ranges: the budget the tuned comparison relies on."""
    by_dataset: dict[str, list[Any]] = {}
    for path in SHIPPED:
        config = load_tune_config(str(path))
        by_dataset.setdefault(path.stem.removesuffix(f"_{config.model}"), []).append(config.file)
    assert {"census_standard", "taobao_userbehavior"} <= set(by_dataset)
    for dataset, files in by_dataset.items():
        for key in ("trials", "seed", "train", "data"):
            assert len({repr(getattr(f, key)) for f in files}) == 1, (dataset, key)
        for shared in ("lr", "weight_decay", "dropout"):
            assert len({repr(f.space[shared]) for f in files}) == 1, (dataset, shared)
