"""Task-weighting strategies: fixed, uncertainty (learned log-variances) and GradNorm, and the trainer
applying them without knowing the model or the strategy."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from fakes import default_objective, tiny_dataset, with_scenario
from mtrec.bench.runner import parse_bench_config, run_bench
from mtrec.data.batches import Batch, BatchIterator
from mtrec.models import MultiTaskModel, create_model, list_models
from mtrec.objectives.weighting import WeightingConfigError, create_weighting, list_weightings
from mtrec.training.checkpoint import WEIGHTS
from mtrec.training.config import ConfigError, RunConfig, TrainConfig
from mtrec.training.run import train_run
from mtrec.training.trainer import Trainer
from procs import max_weight_difference, torchrun_train

pytestmark = pytest.mark.usefixtures("one_thread")


class TwoScales(MultiTaskModel):
    """A shared linear layer read by two tasks whose losses differ only by a scale of 10."""

    def __init__(self) -> None:
        super().__init__(tiny_dataset().schema)
        self.shared = nn.Linear(4, 4)

    def task_losses(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.shared(x).pow(2).mean()
        return {"click": 10.0 * h, "conversion": h}

    def shared_parameters(self) -> list[nn.Parameter]:
        return list(self.shared.parameters())


def test_strategies_are_registered() -> None:
    assert {"fixed", "uncertainty", "gradnorm"} <= set(list_weightings())


def test_fixed_weights_reject_unknown_task_names() -> None:
    with pytest.raises(WeightingConfigError, match="buy"):
        create_weighting("fixed", ["click", "conversion"], weights={"click": 1.0, "buy": 2.0})


def test_fixed_weights_combine_as_a_weighted_sum() -> None:
    fixed = create_weighting("fixed", ["click", "conversion"], weights={"conversion": 3.0})
    losses = {"click": torch.tensor(0.5), "conversion": torch.tensor(0.25)}
    torch.testing.assert_close(fixed.combine(losses, TwoScales().shared_parameters()), torch.tensor(0.5 + 0.75))


def test_unknown_strategy_or_option_is_a_clear_error() -> None:
    with pytest.raises(WeightingConfigError, match="unknown weighting 'nope'"):
        create_weighting("nope", ["click"])
    with pytest.raises(WeightingConfigError, match="gradnorm"):
        create_weighting("gradnorm", ["click"], beta=2.0)
    with pytest.raises(WeightingConfigError, match="alpha"):
        create_weighting("gradnorm", ["click"], alpha=-1.0)


def test_uncertainty_log_variances_get_gradients_and_move() -> None:
    strategy = create_weighting("uncertainty", ["click", "conversion"])
    losses = {"click": torch.tensor(2.0), "conversion": torch.tensor(0.1)}
    total = strategy.combine(losses, TwoScales().shared_parameters())
    torch.testing.assert_close(total, torch.tensor(2.1))  # s = 0: exp(0) * L + 0
    total.backward()
    grad = strategy.log_variances.grad
    assert grad is not None
    torch.testing.assert_close(grad, torch.tensor([1 - 2.0, 1 - 0.1]))  # d/ds (exp(-s) L + s) = 1 - L
    optimizer = torch.optim.SGD(strategy.parameters(), lr=0.1)
    for _ in range(200):
        optimizer.zero_grad()
        strategy.combine(losses, TwoScales().shared_parameters()).backward()
        optimizer.step()
    # the optimum is s = log L: the high-loss task gets the small weight exp(-s) = 1 / L
    torch.testing.assert_close(strategy.log_variances.detach(), torch.log(torch.tensor([2.0, 0.1])),
                               atol=1e-2, rtol=0)
    weights = strategy.current_weights()
    assert weights["click"] < 1 < weights["conversion"]


def test_gradnorm_balances_gradient_norms_and_keeps_weights_normalised() -> None:
    model = TwoScales()
    strategy = create_weighting("gradnorm", ["click", "conversion"], alpha=1.0, lr=0.02)
    x = torch.randn(32, 4)
    history = []
    for _ in range(100):
        strategy.combine(model.task_losses(x), model.shared_parameters())
        weights = strategy.current_weights()
        history.append(weights)
        assert min(weights.values()) > 0
        assert sum(weights.values()) == pytest.approx(2.0)
    assert history[0] != history[-1]
    # equal training rates, so the target is equal weighted norms: w_click * 10 n = w_conversion * n
    final = history[-1]
    assert final["conversion"] / final["click"] == pytest.approx(10.0, rel=0.25)


def test_gradnorm_uses_the_weights_of_the_step_in_the_loss() -> None:
    model = TwoScales()
    strategy = create_weighting("gradnorm", ["click", "conversion"])
    x = torch.randn(8, 4)
    losses = model.task_losses(x)
    before = strategy.current_weights()
    total = strategy.combine(losses, model.shared_parameters())
    expected = before["click"] * losses["click"] + before["conversion"] * losses["conversion"]
    torch.testing.assert_close(total, expected)
    total.backward()  # the in-place weight update must not break the graph
    assert model.shared.weight.grad is not None


def test_gradnorm_needs_shared_parameters() -> None:
    data = tiny_dataset()
    model = create_model("single_task", data.schema, embedding_dim=4)
    batch = next(iter(BatchIterator(data, "train", 32)))
    strategy = create_weighting("gradnorm", data.schema.task_names)
    with pytest.raises(WeightingConfigError, match=r"shares none"):
        strategy.combine(default_objective(model).losses(model(batch.features), batch), model.shared_parameters())


def shares_with_every_task(name: str, batch: Batch) -> bool:
    torch.manual_seed(0)
    model = create_model(name, with_scenario(tiny_dataset()).schema)
    shared = model.shared_parameters()
    if not shared:
        return True
    own = {id(p) for p in model.parameters()}
    assert all(id(p) in own for p in shared)
    losses = default_objective(model).losses(model(batch.features), batch)
    for task in model.task_names:
        grads = torch.autograd.grad(losses[task], shared, retain_graph=True, allow_unused=True)
        if not any(g is not None and g.abs().sum() > 0 for g in grads):
            return False
    return True


@pytest.mark.parametrize("name", list_models())
def test_shared_parameters_are_reached_by_every_task(name: str) -> None:
    data = with_scenario(tiny_dataset())  # scenario models need one
    batch = next(iter(BatchIterator(data, "train", 64)))
    assert shares_with_every_task(name, batch), f"{name}.shared_parameters() not reached by every task"


@pytest.mark.parametrize("weighting", ["uncertainty", "gradnorm"])
def test_trainer_applies_a_strategy_from_config(weighting: str) -> None:
    torch.manual_seed(0)
    data = tiny_dataset(rows=400)
    model = create_model("mmoe", data.schema, embedding_dim=4, expert_sizes=(16,), tower_sizes=(8,))
    config = TrainConfig(epochs=3, batch_size=32, patience=5, weighting=weighting,
                         weighting_options={"lr": 0.05} if weighting == "gradnorm" else {}, device="cpu")
    result = Trainer(model, config, log=lambda _: None).fit(data)
    weights = [row["task_weights"] for row in result.history]
    assert weights[0] != weights[-1]
    assert all(w > 0 for row in weights for w in row.values())
    if weighting == "gradnorm":
        assert all(sum(row.values()) == pytest.approx(2.0) for row in weights)


def test_a_bench_compares_weightings_through_per_model_train_settings(tmp_path: Path, tiny_dir: Path) -> None:
    small = {"embedding_dim": 4, "expert_sizes": [8], "tower_sizes": [4]}
    config = parse_bench_config({
        "name": "w", "datasets": [{"data": str(tiny_dir), "label": "tiny"}], "seeds": [0],
        "train": {"epochs": 1, "batch_size": 64, "num_threads": 1, "prefetch": 0},
        "models": [{"name": "mmoe", "label": f"mmoe+{w}", "options": small, "train": {"weighting": w}}
                   for w in ("fixed", "uncertainty", "gradnorm")],
    })
    results = run_bench(config, tmp_path / "out", log=lambda _: None)
    for weighting in ("fixed", "uncertainty", "gradnorm"):
        run = json.loads((tmp_path / "out" / "runs" / "tiny" / f"mmoe_{weighting}" / "seed0" / "config.json")
                         .read_text())
        assert run["train"]["weighting"] == weighting
    assert {r["model"] for r in results["runs"]} == {"mmoe+fixed", "mmoe+uncertainty", "mmoe+gradnorm"}
    assert "train {'weighting': 'gradnorm'}" in (tmp_path / "out" / "results.md").read_text()
    with pytest.raises(ConfigError, match=r"models\[0\]\.train.*bogus"):
        parse_bench_config({"datasets": ["synthetic"], "models": [{"name": "mmoe", "train": {"bogus": 1}}]})


@pytest.mark.parametrize(("weighting", "options"), [("gradnorm", {"lr": 0.05}), ("cagrad", {"c": 0.5}),
                                                  ("multibalance", {"relax": 0.7})])
def test_a_gradient_strategy_takes_the_same_steps_in_two_gloo_processes_as_in_one(
    tmp_path: Path, weighting: str, options: dict[str, float]
) -> None:
    """torchrun, 2 processes: GradNorm and the gradient-level strategies (CAGrad here) average the ranks'
    task gradients (and losses) first, MultiBalance sums the ranks' squared norms on the representation, so
    their weights and the model follow the one-process run with the same global batch."""
    data = tiny_dataset(rows=240, seed=5)
    data.save(tmp_path / "data")
    # fp32: on a CPU with bf16 support precision auto trains in bf16, whose rounding differs by rank count
    config = {"model": "mmoe", "data": str(tmp_path / "data"),
              "model_options": {"expert_sizes": [16], "tower_sizes": [8], "num_experts": 2, "embedding_dim": 4},
              "train": {"epochs": 2, "batch_size": 24, "lr": 0.01, "num_threads": 1, "prefetch": 0,
                        "eval_batch_size": 16, "precision": "fp32", "weighting": weighting,
                        "weighting_options": options}}
    (tmp_path / "run.json").write_text(json.dumps(config))
    proc = torchrun_train(2, "--config", str(tmp_path / "run.json"), "--out", str(tmp_path / "two"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    train_run(RunConfig.from_dict(config), tmp_path / "one", log=lambda _: None)

    def weights(run: str) -> list[list[float]]:
        rows = (tmp_path / run / "history.jsonl").read_text().splitlines()
        return [list(json.loads(row)["task_weights"].values()) for row in rows]

    one, two = weights("one"), weights("two")
    if weighting == "gradnorm":
        assert one[0] != [1.0, 1.0]  # GradNorm moved the weights
    np.testing.assert_allclose(two, one, atol=1e-5)
    assert max_weight_difference(tmp_path / "one" / WEIGHTS, tmp_path / "two" / WEIGHTS) < 1e-5


def test_fixed_weights_naming_an_unknown_task_are_refused_naming_the_file_and_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from mtrec.cli import main

    config = tmp_path / "run.yaml"
    config.write_text("model: mmoe\ntrain:\n  weighting: fixed\n  weighting_options:\n    weights: {clik: 2.0}\n")
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--data", "synthetic:easy:300", "--config", str(config), "--out", str(tmp_path / "run")])
    assert exit_info.value.code == 2
    line = capsys.readouterr().err.strip()
    assert line == (f"error: {config}: train.weighting_options.weights: names unknown task(s) ['clik']; "
                    f"tasks: ['click', 'conversion']")
