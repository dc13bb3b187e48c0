"""PEPNet, AdaTT, STEM-Net and HoME: each model's defining property (the registry tests in test_models.py
cover the contract every model keeps)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fakes import tiny_dataset, with_regression_task, with_scenario
from mtrec.data.batches import gather_batch
from mtrec.models import ModelConfigError, create_model
from mtrec.models.home import group_of_tasks
from mtrec.nn.experts import ExpertLevel, task_layout
from mtrec.nn.normalized import NormalizedParallelMLP

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data():  # type: ignore[no-untyped-def]
    return with_scenario(tiny_dataset(rows=200, seed=2))  # scenario models need one; others read it as a field


def batch_of(data, rows: int = 64):  # type: ignore[no-untyped-def]
    return gather_batch(data, np.arange(rows))


def table_rows(schema, table: str) -> slice:  # type: ignore[no-untyped-def]
    """The rows of ``table`` in the shared embedding table."""
    start = 0
    for name, size in schema.table_sizes().items():
        if name == table:
            return slice(start, start + size)
        start += size
    raise KeyError(table)


def grad_or_zero(p: torch.nn.Parameter) -> torch.Tensor:
    return torch.zeros_like(p) if p.grad is None else p.grad


# ---- STEM-Net --------------------------------------------------------------------------------------
def test_stem_a_tasks_loss_gives_no_gradient_to_another_tasks_table_and_experts(data) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    d, m = 4, 2
    model = create_model("stem", data.schema, embedding_dim=d, num_task_experts=m, expert_sizes=(16,),
                         tower_sizes=(16,))
    batch = batch_of(data)
    for i, j in ((0, 1), (1, 0)):
        model.zero_grad()
        model(batch.features)[model.task_names[i]].sum().backward()
        table = grad_or_zero(model.embedding.table.weight)
        dense = grad_or_zero(model.embedding.dense_weight)
        own, other = slice(i * d, (i + 1) * d), slice(j * d, (j + 1) * d)
        shared = slice(2 * d, 3 * d)
        assert table[:, other].abs().max() == 0 and dense[:, other].abs().max() == 0
        assert table[:, own].abs().max() > 0 and table[:, shared].abs().max() > 0
        level = model.levels[0]
        for layer in level.task_experts.layers:
            assert grad_or_zero(layer.weight)[j * m:(j + 1) * m].abs().max() == 0
            assert grad_or_zero(layer.weight)[i * m:(i + 1) * m].abs().max() > 0
        assert grad_or_zero(level.shared_experts.layers[0].weight).abs().max() > 0
    # all forward: task 0's output still depends on task 1's experts (their values, not their gradients)
    with torch.no_grad():
        before = model(batch.features)["click"]
        level.task_experts.layers[-1].bias[m:] += 1.0
        assert not torch.allclose(model(batch.features)["click"], before)


# ---- PEPNet ----------------------------------------------------------------------------------------
def test_pepnet_gates_lie_in_zero_gamma(data) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    model = create_model("pepnet", data.schema, embedding_dim=4, tower_sizes=(8, 4), gamma=2.0,
                         domain_features=["category"])
    fields = model.embedding.all_fields(batch_of(data).features)
    with torch.no_grad():
        model.epnet.second.bias.fill_(3.0)  # push the gates toward gamma
        domain = model.domain_gate(fields)
        personal = (domain.unsqueeze(-1) * fields).flatten(1)
        gates = [domain, *model.tower_gates(fields, personal)]
    for gate in gates:
        assert gate.min() > 0 and gate.max() < 2.0
    assert domain.max() > 1.0  # a gate can amplify, not only suppress


def test_pepnet_gates_send_no_gradient_into_embeddings_read_under_stop_gradient(data) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    schema = data.schema
    model = create_model("pepnet", schema, embedding_dim=4, tower_sizes=(8,), domain_features=["category"])
    fields = model.embedding.all_fields(batch_of(data).features)
    model.domain_gate(fields).sum().backward()
    table = grad_or_zero(model.embedding.table.weight)
    assert table[table_rows(schema, "category")].abs().max() > 0  # the domain feature, read as it is
    for other in ("user_id", "item_id"):  # read only under stop-gradient
        assert table[table_rows(schema, other)].abs().max() == 0
    assert grad_or_zero(model.embedding.dense_weight).abs().max() == 0

    model.zero_grad()
    fields = model.embedding.all_fields(batch_of(data).features)
    personal = (model.domain_gate(fields).unsqueeze(-1) * fields).flatten(1)
    torch.stack([g.sum() for g in model.tower_gates(fields, personal)]).sum().backward()
    assert all(p.grad is None or p.grad.abs().max() == 0 for p in model.epnet.parameters())  # sg(O_ep)
    table = grad_or_zero(model.embedding.table.weight)
    assert table[table_rows(schema, "user_id")].abs().max() > 0  # persona features: user and item ids
    assert table[table_rows(schema, "category")].abs().max() == 0


def test_pepnet_names_an_unknown_feature() -> None:
    with pytest.raises(ModelConfigError, match=r"persona_features \['nope'\]"):
        create_model("pepnet", tiny_dataset().schema, persona_features=["nope"])


# ---- AdaTT -----------------------------------------------------------------------------------------
def test_adatt_residual_path_reproduces_a_hand_computed_output() -> None:
    level = ExpertLevel(2, task_layout(2, 2, 0, sees_all=True), expert_sizes=(2,), residual=True)
    with torch.no_grad():
        layer = level.task_experts.layers[0]
        layer.weight.copy_(torch.stack([k * torch.eye(2) for k in (1.0, 2.0, 3.0, 4.0)]))  # expert k: k * x
        layer.bias.zero_()
        level.residual_weights.copy_(torch.tensor([[0.5, 2.0], [1.0, -1.0]]))
    x = torch.tensor([[1.0, 2.0]])  # [B=1, 2], positive: the ReLU passes it
    everything = level.expert_outputs(x, x)  # [4, 1, 2]
    fused, shared = level(x)
    gated = torch.einsum("ebh,tbe->tbh", everything, level.task_gates(x))
    # task 0: 0.5 * 1x + 2 * 2x = 4.5x; task 1: 1 * 3x - 1 * 4x = -x
    torch.testing.assert_close(fused - gated, torch.tensor([[[4.5, 9.0]], [[-1.0, -2.0]]]))
    assert shared is None


def test_adatt_single_expert_residual_weight_is_fixed_to_one() -> None:
    level = ExpertLevel(3, task_layout(2, 1, 1, sees_all=True), expert_sizes=(4,), shared_gate=True,
                        residual=True)
    assert torch.equal(level.residual_weights, torch.ones(2, 1))
    assert "residual_weights" not in dict(level.named_parameters())


# ---- HoME ------------------------------------------------------------------------------------------
def test_home_expert_outputs_are_normalised() -> None:
    torch.manual_seed(0)
    experts = NormalizedParallelMLP(3, 4, (6,)).train()
    x = torch.randn(128, 4)
    pre = experts.norms[0](experts.layers[0](x.expand(3, -1, -1)))  # [E, B, H]
    torch.testing.assert_close(pre.mean(1), torch.zeros(3, 6), atol=1e-5, rtol=0)
    torch.testing.assert_close(pre.var(1, unbiased=False), torch.ones(3, 6), atol=1e-3, rtol=0)
    before = experts(x)
    with torch.no_grad():  # an expert on a 100 times larger scale gives the same outputs
        experts.layers[0].weight[1] *= 100.0
        experts.layers[0].bias[1] *= 100.0
    torch.testing.assert_close(experts(x), before, atol=1e-4, rtol=1e-4)
    assert experts(x[:1]).shape == (3, 1, 6)  # a batch of one row (running statistics) does not fail


def test_home_mask_removes_other_groups_experts_from_a_tasks_gate() -> None:
    data = with_regression_task(tiny_dataset(rows=120, seed=3))  # tasks click, conversion, spend
    torch.manual_seed(0)
    model = create_model("home", data.schema, embedding_dim=4, expert_sizes=(8,), tower_sizes=(4,),
                         task_groups=[["click"], ["conversion", "spend"]], num_global_experts=2)
    batch = gather_batch(data, np.arange(32))
    # task-level experts: group 0, group 1, task 0, 1, 2 (one each), then the 2 global ones
    allowed = {"click": (0, 2, 5, 6), "conversion": (1, 3, 5, 6), "spend": (1, 4, 5, 6)}
    assert model.task_level.layout.visible == tuple(allowed[t] for t in model.task_names)
    v = model.embedding.all_fields(batch.features).flatten(1)
    groups, _ = model.meta(v)  # [G, B, H]
    weights = model.task_level.gate_weights(groups)  # [T, B, 4]: over the visible experts only
    assert torch.all(weights > 0)
    torch.testing.assert_close(weights.sum(-1), torch.ones(3, 32))
    # behaviour: click's output does not depend on the other group's task-level experts
    model.zero_grad()
    model(batch.features)["click"].sum().backward()
    local = model.task_level.task_experts.experts.layers[0].weight.grad  # group 0, group 1, tasks 0-2
    assert local is not None
    assert local[[1, 3, 4]].abs().max() == 0 and local[[0, 2]].abs().max() > 0


def test_home_task_groups_must_cover_every_task_once() -> None:
    assert group_of_tasks(["a", "b", "c"], None) == [0, 1, 2]
    assert group_of_tasks(["a", "b", "c"], [["b"], ["a", "c"]]) == [1, 0, 1]
    with pytest.raises(ModelConfigError, match=r"missing \['c'\].*repeated \['a'\]"):
        group_of_tasks(["a", "b", "c"], [["a", "b"], ["a"]])


@pytest.mark.parametrize(("name", "options", "message"), [
    ("adatt", {"num_levels": 0}, "num_levels: must be >= 1, got 0"),
    ("adatt", {"num_shared_experts": -1}, "num_shared_experts: must be >= 0, got -1"),
    ("stem", {"dropout": 1.5}, "dropout: must be < 1.0, got 1.5"),
    ("pepnet", {"gamma": -1.0}, "gamma: must be > 0.0, got -1.0"),
    ("pepnet", {"tower_sizes": [0]}, "tower_sizes[0]: must be >= 1, got 0"),
    ("home", {"sequence_pooling": "max"}, "sequence_pooling: must be one of 'mean' or 'attention', got 'max'"),
    ("mmoe", {"expert_sizes": []}, "expert_sizes: must have at least 1 item(s), got []"),
    ("dtrn", {"backbone": "moe"}, "backbone: must be one of 'towers', 'mmoe' or 'ple', got 'moe'"),
])
def test_zoo_options_are_checked_against_their_typed_signature(name: str, options: dict[str, object],
                                                                message: str) -> None:
    with pytest.raises(ModelConfigError) as error:
        create_model(name, tiny_dataset(rows=20).schema, **options)
    assert f"model '{name}': {message}" in str(error.value)


def test_expert_levels_record_every_gate_over_all_their_experts(data) -> None:  # type: ignore[no-untyped-def]
    from mtrec.nn.recording import EXPERT_WEIGHTS, recording

    torch.manual_seed(0)
    model = create_model("ple", data.schema, num_task_experts=2, num_shared_experts=1, expert_sizes=(8,))
    with recording(model) as records:
        model(batch_of(data).features)
    weights = {r.block: r.values for r in records.records if r.kind == EXPERT_WEIGHTS}
    task_gates = weights["extraction.levels.0.task_gates"]  # [T, B, 2*2 + 1]
    assert task_gates.shape == (2, 64, 5)
    torch.testing.assert_close(task_gates.sum(-1), torch.ones(2, 64))
    assert torch.all(task_gates[0, :, 2:4] == 0) and torch.all(task_gates[1, :, 0:2] == 0)  # other task's
    assert torch.all(task_gates[0, :, [0, 1, 4]] > 0) and torch.all(task_gates[1, :, [2, 3, 4]] > 0)
    assert weights["extraction.levels.0.shared_gate"].shape == (1, 64, 5)
