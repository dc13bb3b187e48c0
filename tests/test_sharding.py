"""Embedding tables sharded with TorchRec under torchrun (2 gloo processes on loopback, tiny data).

Needs the optional install (``make setup-torchrec``; CI has it): without TorchRec these tests skip.
A sharded run must train the same model as a one-process plain run with the same table optimizer (the
sharded tables' fused exact Adagrad is the plain run's torch Adagrad), hold on each rank only its
shards, resume after a kill, and leave a full ``model.safetensors`` that exports with parity.
"""

from __future__ import annotations

import json
import re
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.distributed as dist
from click.testing import CliRunner
from safetensors.torch import load_file

from fakes import tiny_dataset
from mtrec.cli import cli
from mtrec.features.schema import DatasetSchema, DenseFeature, SparseFeature, TaskSpec
from mtrec.models import create_model
from mtrec.training.checkpoint import WEIGHTS, load_model
from mtrec.training.config import ConfigError, RunConfig, TrainConfig
from mtrec.training.resume import RESUME, load_resume
from mtrec.training.run import train_run
from procs import max_weight_difference, torchrun, torchrun_train

pytest.importorskip("torchrec", reason="TorchRec is not installed: run `make setup-torchrec` (CI does)")

OPTIONS = {
    "mmoe": {"expert_sizes": [16], "tower_sizes": [8], "num_experts": 2, "embedding_dim": 8},
    "dtrn": {"embedding_dim": 8, "ffn_dim": 16, "hyper_sizes": [8], "tower_sizes": [8]},
}
# Largest weight difference allowed after the 12 steps, against one plain process. Measured: mmoe 1.8e-5,
# dtrn 1.2e-3 (2-process DDP without sharding: 6e-5). The ranks sum a table row's gradient in another
# order than one process does; Adam and Adagrad divide each gradient by its own running magnitude, so a
# weight whose gradient is near zero turns those float differences into visible ones. Test AUC and
# logloss agreed to 6 decimals in both.
WEIGHT_TOLERANCE = {"mmoe": 1e-4, "dtrn": 5e-3}


def config(data: Path, model: str, sharding: str, **train: Any) -> dict[str, Any]:
    """A tiny run: 144 train rows, an odd global batch (25: every step has a padding row), 6 steps per
    epoch, checkpoints after steps 3, 6 (epoch end), 9 and 12; in fp32 unless ``train`` says otherwise."""
    return {"model": model, "data": str(data), "model_options": OPTIONS[model],
            "train": {"epochs": 2, "batch_size": 25, "lr": 0.02, "num_threads": 1, "prefetch": 0, "patience": 5,
                      "checkpoint_every": 3, "eval_batch_size": 16, "embedding_optimizer": "adagrad",
                      "embedding_lr": 0.02,
                      "embedding_sharding": sharding, "precision": "fp32", **train}}


def launch(tmp: Path, cfg: dict[str, Any], out: Path, *extra: str) -> None:
    (tmp / f"{out.name}.json").write_text(json.dumps(cfg))
    proc = torchrun_train(2, "--config", str(tmp / f"{out.name}.json"), "--out", str(out), *extra)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


SHARDED_RUNS = [("table_wise", "mmoe"), ("column_wise", "dtrn"), ("auto", "mmoe")]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One plain process per model and one sharded 2-process run per (sharding, model) of SHARDED_RUNS."""
    root = tmp_path_factory.mktemp("sharding")
    tiny_dataset(rows=240, seed=5).save(root / "data")
    dirs = {"root": root}
    for model in {m for _, m in SHARDED_RUNS}:
        dirs[f"plain_{model}"] = root / f"plain_{model}"
        train_run(RunConfig.from_dict(config(root / "data", model, "none")), dirs[f"plain_{model}"],
                  log=lambda _: None)
    for sharding, model in SHARDED_RUNS:
        dirs[sharding] = root / sharding
        launch(root, config(root / "data", model, sharding), dirs[sharding])
    dirs["plain_bf16"], dirs["table_wise_bf16"] = root / "plain_bf16", root / "table_wise_bf16"
    train_run(RunConfig.from_dict(config(root / "data", "mmoe", "none", precision="bf16")), dirs["plain_bf16"],
              log=lambda _: None)
    launch(root, config(root / "data", "mmoe", "table_wise", precision="bf16"), dirs["table_wise_bf16"])
    return dirs


@pytest.mark.parametrize(("sharding", "model"), SHARDED_RUNS)
def test_a_sharded_run_trains_the_same_model_as_one_plain_process(runs: dict[str, Path], sharding: str,
                                                                  model: str) -> None:
    plain, sharded = runs[f"plain_{model}"], runs[sharding]
    assert max_weight_difference(plain / WEIGHTS, sharded / WEIGHTS) < WEIGHT_TOLERANCE[model]
    want = json.loads((plain / "metrics.json").read_text())
    got = json.loads((sharded / "metrics.json").read_text())
    assert got["machine"]["processes"] == 2 and got["samples_seen"] == want["samples_seen"] == 2 * 144
    for task, metrics in want["test"].items():
        assert got["test"][task]["auc"] == pytest.approx(metrics["auc"], abs=1e-4)
        assert got["test"][task]["logloss"] == pytest.approx(metrics["logloss"], abs=1e-4)


def test_a_sharded_bf16_run_trains_like_one_plain_bf16_process(runs: dict[str, Path]) -> None:
    """bf16 (autocast around the model; TorchRec's lookups stay float32) under sharding: the same run as
    one process, up to bf16's rounding, which the ranks' other batch shapes change."""
    want = json.loads((runs["plain_bf16"] / "metrics.json").read_text())
    got = json.loads((runs["table_wise_bf16"] / "metrics.json").read_text())
    assert got["precision"] == want["precision"] == "bf16"
    assert got["samples_seen"] == want["samples_seen"]
    assert max_weight_difference(runs["plain_bf16"] / WEIGHTS, runs["table_wise_bf16"] / WEIGHTS) < 5e-2
    for task, metrics in want["test"].items():
        assert got["test"][task]["auc"] == pytest.approx(metrics["auc"], abs=2e-2)


def test_each_rank_holds_only_its_shards(runs: dict[str, Path]) -> None:
    """metrics.json records the plan and each rank's table bytes; each rank's checkpoint file holds only the
    shards the plan gives that rank."""
    schema = json.loads((runs["table_wise"] / "schema.json").read_text())
    total = 4 * 8 * (30 + 40 + 8)  # float32 x width 8 x the tiny schema's three tables
    assert len(schema["sparse"]) == 3
    for sharding in ("table_wise", "column_wise", "auto"):
        embedding = json.loads((runs[sharding] / "metrics.json").read_text())["embedding"]
        plan, per_rank = embedding["plan"], embedding["rank_table_bytes"]
        assert embedding["sharding"] == sharding and set(plan) == {"user_id", "item_id", "category"}
        assert sum(per_rank) == total and max(per_rank) < total
        assert embedding["rank_table_optimizer_bytes"] == per_rank  # Adagrad: one sum of squares per weight
        for rank in (0, 1):
            held = load_resume(runs[sharding] / f"resume-shard{rank}of2-step12.safetensors")["model"]
            tables = {re.sub(r"@.*", "", k).split(".")[-2]: v.shape for k, v in held.items() if "@" in k}
            mine = {t for t, p in plan.items() if rank in p["ranks"]}
            assert set(tables) == mine
            assert sum(4 * int(np.prod(s)) for s in tables.values()) == per_rank[rank]
        if sharding == "table_wise":
            assert all(len(p["ranks"]) == 1 for p in plan.values())
        elif sharding == "column_wise":  # every rank holds half of every table's columns
            assert all(p["ranks"] == [0, 1] and [s["sizes"][1] for s in p["shards"]] == [4, 4] for p in plan.values())
            assert per_rank == [total // 2, total // 2]
    plain = json.loads((runs["plain_mmoe"] / "metrics.json").read_text())["embedding"]
    assert plain["sharding"] == "none" and plain["rank_table_bytes"] == [total]


# Each rank SIGKILLs itself when rank 0 is about to write resume.safetensors for the step-9 checkpoint:
# both ranks' files of step 9 are complete, the main file still names step 6 (the end of epoch 0).
KILLER = """
import os, signal, sys
import mtrec.training.rundir as rundir
save_resume = rundir.save_resume
def killing_save(path, state):
    if path.name == "resume.safetensors" and state["progress"]["global_step"] == 9:
        os.kill(os.getpid(), signal.SIGKILL)
    save_resume(path, state)
rundir.save_resume = killing_save
from mtrec.cli import main
sys.argv = ["mtrec", "train", *sys.argv[1:]]
main()
"""


def test_a_sharded_run_killed_while_checkpointing_resumes_to_the_uninterrupted_result(
    runs: dict[str, Path], tmp_path: Path
) -> None:
    cfg = config(runs["root"] / "data", "mmoe", "table_wise")
    (tmp_path / "run.json").write_text(json.dumps(cfg))
    (tmp_path / "killer.py").write_text(KILLER)
    out = tmp_path / "run"
    killed = torchrun(2, str(tmp_path / "killer.py"), "--config", str(tmp_path / "run.json"), "--out", str(out))
    assert killed.returncode != 0 and "SIGKILL" in killed.stdout + killed.stderr, killed.stderr[-3000:]
    main = load_resume(out / RESUME)
    assert main["shards"]["step"] == 6 and (main["progress"]["epoch"], main["progress"]["step"]) == (1, 0)
    assert {p.name for p in out.glob("resume-shard*")} == {
        f"resume-shard{r}of2-step{s}.safetensors" for r in (0, 1) for s in (6, 9)}

    launch(tmp_path, cfg, out, "--resume")
    resumed = json.loads((out / "metrics.json").read_text())
    whole = json.loads((runs["table_wise"] / "metrics.json").read_text())
    assert resumed["samples_seen"] == whole["samples_seen"] and resumed["epochs_run"] == 2
    assert max_weight_difference(out / WEIGHTS, runs["table_wise"] / WEIGHTS) < 1e-6
    for task, metrics in whole["test"].items():
        assert resumed["test"][task] == pytest.approx(metrics, abs=1e-6)
    assert {p.name for p in out.glob("resume-shard*")} == {f"resume-shard{r}of2-step12.safetensors" for r in (0, 1)}


def test_a_sharded_runs_model_file_is_the_full_model_and_exports_with_parity(runs: dict[str, Path],
                                                                              tmp_path: Path) -> None:
    for sharding, model in (("table_wise", "mmoe"), ("column_wise", "dtrn")):
        run = runs[sharding]
        weights, plain = load_file(str(run / WEIGHTS)), load_file(str(runs[f"plain_{model}"] / WEIGHTS))
        assert weights.keys() == plain.keys()  # the plain layout: one stacked table
        table = weights["embedding.table.weight"]
        assert table.shape == (78, 8) and torch.isfinite(table).all()
        load_model(run)  # the plain model, through the registry
        result = CliRunner().invoke(cli, ["export", str(run), "--out", str(tmp_path / f"{sharding}.onnx"),
                                          "--inputs", "ids"])
        assert result.exit_code == 0 and "parity ok" in result.output, result.output


def test_sharded_tables_return_the_rows_of_the_stacked_table() -> None:
    """Unsharded (one process), the TorchRec lookup gives what the stacked nn.Embedding gives, for ids of
    any shape and any mix of tables, and leaves the RNG where it was."""
    from mtrec.training.sharding import ShardedTables

    tables = {"user": (0, 5), "item": (5, 7), "category": (12, 3)}
    weight = torch.randn(15, 4)
    state = torch.get_rng_state()
    lookup = ShardedTables(tables, weight, gradient_scale=0.5)
    assert torch.equal(torch.get_rng_state(), state)
    ids = torch.tensor([[[0, 14], [5, 11]], [[12, 4], [7, 7]], [[13, 0], [2, 6]]])  # [3, 2, 2]
    rows = lookup(ids)
    assert rows.shape == (3, 2, 2, 4)
    torch.testing.assert_close(rows, weight[ids], rtol=0, atol=0)


def test_column_wise_needs_a_width_divisible_by_the_ranks() -> None:
    from mtrec.training.distributed import DistContext
    from mtrec.training.sharding import Sharded

    sharded = Sharded(create_model("mmoe", tiny_dataset(rows=20).schema, embedding_dim=5), torch.device("cpu"),
                      TrainConfig(embedding_sharding="column_wise", embedding_optimizer="sgd"))
    sharded.ctx = DistContext(rank=0, world_size=2)
    with pytest.raises(ConfigError, match="column_wise splits each table's 5 columns over 2 ranks"):
        sharded._constraints({"item_id": 5})


@pytest.fixture
def one_rank_group() -> Iterator[None]:
    """A gloo process group of this process alone (what torchrun would set up, with one rank)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


@pytest.mark.usefixtures("one_rank_group")
def test_auto_plans_within_the_memory_budget_or_names_it() -> None:
    """A 1M x 8 table: 32 MiB of weights and 32 MiB of Adagrad state, on one rank."""
    from mtrec.training.sharding import Sharded

    schema = DatasetSchema(sparse=(SparseFeature("item", 1_000_000),), dense=(DenseFeature("x"),),
                           tasks=(TaskSpec("click"),))
    for budget in (40, 80):
        model = create_model("shared_bottom", schema, embedding_dim=8, bottom_sizes=[8], tower_sizes=[4])
        sharded = Sharded(model, torch.device("cpu"), TrainConfig(
            embedding_sharding="auto", embedding_optimizer="adagrad", embedding_memory_mb=budget))
        step = torch.nn.ModuleDict({"model": model})  # what the trainer wraps: a module holding the model
        if budget == 40:
            with pytest.raises(ConfigError, match=r"planner found no plan \(train.embedding_memory_mb: 40\)"):
                sharded.wrap(step)
        else:
            sharded.wrap(step)
            assert sharded.plan["item"]["ranks"] == [0]
