"""Every registered model, through the registry: the contract each architecture must keep."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fakes import default_objective, tiny_dataset, with_regression_task, with_scenario
from mtrec.data.batches import gather_batch
from mtrec.models import BUILT_IN, ModelConfigError, create_model, list_models, model_class, model_options
from mtrec.objectives import create_objective, list_objectives

MODELS = list_models()


def test_the_built_in_table_names_the_module_registering_each_model() -> None:
    """Listing and describing models reads BUILT_IN without importing them; asking for one imports the module
    it names, which must register exactly the names the table gives it."""
    for name, entry in BUILT_IN.items():
        assert model_class(name).__module__ == f"mtrec.models.{entry.module}", name
        assert entry.description and "\n" not in entry.description, name
    assert list_models() == sorted(BUILT_IN)  # every module imported now: no name registered beyond the table


@pytest.fixture(scope="module")
def data():  # type: ignore[no-untyped-def]
    return with_scenario(tiny_dataset(rows=200, seed=1))  # scenario models need one; others read it as a field


def build(name: str, schema):  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    return create_model(name, schema)


@pytest.mark.parametrize("name", MODELS)
def test_outputs_are_task_logits_of_shape_b(name: str, data) -> None:  # type: ignore[no-untyped-def]
    model = build(name, data.schema)
    batch = gather_batch(data, np.arange(32))
    outputs = model(batch.features)
    assert list(outputs) == data.schema.task_names
    for key, value in outputs.items():
        assert value.shape == (32,), key
        assert torch.isfinite(value).all(), key
    probs = default_objective(model).predictions(outputs)
    assert list(probs) == data.schema.task_names
    for p in probs.values():
        assert ((p >= 0) & (p <= 1)).all()


@pytest.mark.parametrize("name", MODELS)
def test_every_parameter_gets_a_gradient(name: str, data) -> None:  # type: ignore[no-untyped-def]
    model = build(name, data.schema)
    batch = gather_batch(data, np.arange(64))
    loss = sum(default_objective(model).losses(model(batch.features), batch).values())
    loss.backward()  # type: ignore[union-attr]
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, f"parameters without gradient: {missing}"
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())  # type: ignore[arg-type]


@pytest.mark.parametrize("name", MODELS)
def test_eval_is_deterministic(name: str, data) -> None:  # type: ignore[no-untyped-def]
    model = build(name, data.schema).eval()
    batch = gather_batch(data, np.arange(48))
    with torch.no_grad():
        first, second = model(batch.features), model(batch.features)
    for key in first:
        torch.testing.assert_close(first[key], second[key], rtol=0, atol=0)


@pytest.mark.parametrize("name", MODELS)
def test_a_few_steps_lower_the_loss(name: str, data) -> None:  # type: ignore[no-untyped-def]
    model = build(name, data.schema)
    batch = gather_batch(data, np.arange(64))
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    objective = default_objective(model)

    def total() -> torch.Tensor:
        return sum(objective.losses(model(batch.features), batch).values())  # type: ignore[return-value]

    model.train()
    with torch.no_grad():
        before = float(total())
    for _ in range(15):
        optimizer.zero_grad()
        total().backward()
        optimizer.step()
    with torch.no_grad():
        after = float(total())
    assert after < before - 1e-3, (before, after)


@pytest.mark.parametrize("objective", list_objectives())
@pytest.mark.parametrize("name", MODELS)
def test_every_model_trains_a_step_with_every_objective(name: str, objective: str, data) -> None:  # type: ignore[no-untyped-def]
    model = build(name, data.schema)
    loss_of = create_objective(objective, data.schema)
    batch = gather_batch(data, np.arange(64))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    losses = loss_of.losses(model(batch.features), batch)
    assert set(data.schema.task_names) <= set(losses) and all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()  # type: ignore[union-attr]
    optimizer.step()
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())
    with torch.no_grad():
        predictions = loss_of.predictions(model(batch.features))
    assert all(((p >= 0) & (p <= 1)).all() for p in predictions.values())


@pytest.mark.parametrize("name", MODELS)
def test_every_model_learns_and_serves_a_regression_task(name: str, data) -> None:  # type: ignore[no-untyped-def]
    mixed = with_regression_task(data)
    model = build(name, mixed.schema)
    objective = default_objective(model)
    batch = gather_batch(mixed, np.arange(64))
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    spend = []
    for _ in range(10):
        losses = objective.losses(model(batch.features), batch)
        spend.append(float(losses["spend"].detach()))
        optimizer.zero_grad()
        sum(losses.values()).backward()  # type: ignore[union-attr]
        optimizer.step()
    assert spend[-1] < spend[0]
    with torch.no_grad():
        outputs = model(batch.features)
        predictions = objective.predictions(outputs)
    # the value itself (no sigmoid), observed after click: expected per impression, times p(click)
    torch.testing.assert_close(predictions["spend"], outputs["spend"] * torch.sigmoid(outputs["click"]))


def test_variants_are_entrypoints_over_their_base_class() -> None:
    from mtrec.models import model_class
    from mtrec.models.dcrnn import DCRNN
    from mtrec.models.mmoe import MMoE
    from mtrec.models.ple import PLE

    assert model_class("omoe") is MMoE and model_options("omoe")["gate_per_task"] is False
    assert model_class("cgc") is PLE and model_options("cgc")["num_levels"] == 1
    assert model_class("dcrnn_hard") is DCRNN and model_options("dcrnn_hard")["sharing"] == "hard"
    assert model_options("omoe", {"num_experts": 3})["num_experts"] == 3


def test_list_models_filters_by_pattern() -> None:
    assert list_models("dcrnn*") == ["dcrnn", "dcrnn_hard"]
    assert list_models("mmoe", "omoe") == ["mmoe", "omoe"]
    assert list_models("nothing*") == []


def test_unknown_model_and_option_are_named() -> None:
    with pytest.raises(ModelConfigError, match=r"unknown model 'nope'.*mmoe"):
        model_options("nope")
    with pytest.raises(ModelConfigError, match=r"no option.*'bogus'"):
        model_options("mmoe", {"bogus": 1})


class CountingTable(torch.nn.Module):
    """A feature embedding's table that counts its calls."""

    def __init__(self, table: torch.nn.Module) -> None:
        super().__init__()
        self.inner = table
        self.calls = 0

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.inner(ids)


@pytest.mark.parametrize("name", MODELS)
def test_every_model_looks_a_batch_up_in_one_table_call(name: str, data) -> None:  # type: ignore[no-untyped-def]
    """Sharded tables need every row of a forward pass from one lookup (their update runs in its backward):
    each model calls its table once per forward pass."""
    model = build(name, data.schema).eval()
    features = gather_batch(data, np.arange(32)).features
    block = model.embedding
    block.table = CountingTable(block.table)
    with torch.no_grad():
        model(features)
        assert block.table.calls == 1
        model(features)
    assert block.table.calls == 2
