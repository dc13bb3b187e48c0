"""The multi-scenario models' defining mechanisms: STAR's star topology and partitioned normalization,
HiNet's scenario extraction layer, M3oE's scenario experts and two-level fusion, and PEPNet's scenario as
its domain input."""

from __future__ import annotations

import pytest
import torch

from fakes import tiny_dataset, with_scenario
from mtrec.data.batches import gather_batch
from mtrec.models import ModelConfigError, create_model
from mtrec.models.hinet import HiNet
from mtrec.models.m3oe import M3oE
from mtrec.models.pepnet import PEPNet
from mtrec.models.star import STAR, PartitionedNorm, StarLinear
from mtrec.nn.recording import recording

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data():  # type: ignore[no-untyped-def]
    return with_scenario(tiny_dataset(rows=120, seed=5))


def batch_features(data):  # type: ignore[no-untyped-def]
    return gather_batch(data, data.splits["train"]).features


def outputs(model: torch.nn.Module, features) -> torch.Tensor:  # type: ignore[no-untyped-def]
    with torch.no_grad():
        return torch.stack(list(model(features).values()))  # [T, B]


def changed_rows(before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
    return (before - after).abs().amax(0) > 1e-6  # [B]


@pytest.mark.parametrize("name", ["star", "hinet", "m3oe"])
def test_scenario_models_refuse_a_dataset_without_a_scenario(name: str) -> None:
    with pytest.raises(ModelConfigError, match=f"^{name} is a multi-scenario model: its dataset needs a scenario"):
        create_model(name, tiny_dataset(rows=20).schema)


def test_star_layer_starts_as_the_shared_layer_and_each_partner_serves_its_scenario() -> None:
    torch.manual_seed(0)
    layer = StarLinear(4, 3, 2)
    x, scenario = torch.randn(8, 3), torch.tensor([0, 1, 2, 3, 2, 2, 1, 0])
    assert torch.allclose(layer(x, scenario), x @ layer.weight + layer.bias, atol=1e-6)
    with torch.no_grad():
        layer.scenario_weight[2].mul_(3.0)
    moved = (layer(x, scenario) - (x @ layer.weight + layer.bias)).abs().amax(1) > 1e-6
    assert moved.tolist() == (scenario == 2).tolist()
    assert torch.allclose(layer(x, scenario)[scenario == 2], x[scenario == 2] @ (3 * layer.weight) + layer.bias,
                          atol=1e-5)


def test_partitioned_normalization_uses_each_scenarios_statistics() -> None:
    torch.manual_seed(0)
    norm = PartitionedNorm(3, 2, momentum=1.0)
    scenario = torch.tensor([0] * 50 + [2] * 50)
    x = torch.randn(100, 2) + (scenario == 2).float().unsqueeze(1) * 10.0  # scenario 2 shifted by 10
    y = norm(x, scenario)
    for s in (0, 2):
        rows = y[scenario == s]
        assert rows.mean(0).abs().max() < 1e-5
        assert torch.allclose(rows.var(0, unbiased=False), torch.ones(2), atol=1e-3)
    assert norm.running_mean[2].mean() > 9 and norm.running_mean[0].abs().max() < 1  # scenario 1: no rows, kept
    assert torch.equal(norm.running_mean[1], torch.zeros(2))
    norm.eval()
    assert torch.allclose(norm(x, scenario), y, atol=1e-4)  # momentum 1: the running stats are the batch's


def test_star_scenario_partners_change_only_their_scenarios_rows(data) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    model = create_model("star", data.schema, hidden_sizes=[16, 8], aux_sizes=[4]).eval()
    assert isinstance(model, STAR)
    features = batch_features(data)
    target = int(features.scenario[0])
    before = outputs(model, features)
    with torch.no_grad():
        model.layers[0].scenario_weight[target].mul_(1.5)
    assert changed_rows(before, outputs(model, features)).tolist() == (features.scenario == target).tolist()


def test_hinet_attends_to_the_other_scenarios_only(data) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    model = create_model("hinet", data.schema, expert_sizes=[8], task_expert_sizes=[8], tower_sizes=[4])
    assert isinstance(model, HiNet)
    scenario = torch.tensor([2, 3, 4, 7])
    weights = model.attention(scenario)  # [4, S]
    assert torch.allclose(weights.sum(1), torch.ones(4))
    assert weights[torch.arange(4), scenario].abs().max() == 0
    assert (weights.sum(0) > 0).sum() == model.attention.embedding.num_embeddings
    with recording(model) as records:
        model(batch_features(data))
    blocks = {r.block for r in records.records}
    assert {"shared_gates", "attention", "task_level.0.task_gates"} <= blocks  # what mtrec inspect reads


def test_hinet_rows_read_their_own_scenarios_specific_expert(data) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    model = create_model("hinet", data.schema, expert_sizes=[8], task_expert_sizes=[8], tower_sizes=[4]).eval()
    assert isinstance(model, HiNet)
    features = batch_features(data)
    x = model.embedding.all_fields(features).flatten(1)
    target = int(features.scenario[0])
    with torch.no_grad():
        before = model.scenario_layer(x, features.scenario)
        model.scenario_experts.layers[0].bias[target].add_(1.0)
        after = model.scenario_layer(x, features.scenario)
    H = before.shape[1] // 3
    assert torch.equal(before[:, :H], after[:, :H])  # the scenario-shared part
    own_moved = (before[:, H:2 * H] - after[:, H:2 * H]).abs().amax(1) > 0
    assert own_moved.tolist() == (features.scenario == target).tolist()
    others_moved = (before[:, 2 * H:] - after[:, 2 * H:]).abs().amax(1) > 0
    assert others_moved.tolist() == (features.scenario != target).tolist()  # through the attention


def test_m3oe_scenario_experts_serve_only_their_scenario(data) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    model = create_model("m3oe", data.schema, expert_sizes=[8], tower_sizes=[4]).eval()
    assert isinstance(model, M3oE)
    features = batch_features(data)
    target = int(features.scenario[0])
    before = outputs(model, features)
    per_group = model.scenario_module.per_group
    with torch.no_grad():
        model.scenario_module.experts.layers[0].bias[target * per_group].add_(1.0)
    assert changed_rows(before, outputs(model, features)).tolist() == (features.scenario == target).tolist()


def test_m3oe_second_level_fuses_the_modules_by_its_weights(data) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    model = create_model("m3oe", data.schema, expert_sizes=[8], tower_sizes=[4]).eval()
    assert isinstance(model, M3oE)
    features = batch_features(data)
    with torch.no_grad():
        model.fusion.copy_(torch.tensor([[-1e4, -1e4, 0.0]]).expand_as(model.fusion))  # the task module only
        before = outputs(model, features)
        for p in (*model.shared_experts.parameters(), *model.scenario_module.parameters()):
            p.add_(0.5)
        assert torch.allclose(before, outputs(model, features))
        for p in model.task_module.parameters():
            p.add_(0.5)
        assert not torch.allclose(before, outputs(model, features))


def test_pepnet_takes_the_scenario_as_its_domain_input(data) -> None:  # type: ignore[no-untyped-def]
    with_domain = create_model("pepnet", data.schema)
    assert isinstance(with_domain, PEPNet)
    assert with_domain.domain_index.tolist() == [data.schema.scenario_column]
    plain = create_model("pepnet", tiny_dataset(rows=20).schema)
    assert isinstance(plain, PEPNet) and plain.domain_index.numel() == 0
