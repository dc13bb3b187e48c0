"""Baseline models: AITM's transfer, CGC/PLE structure, OMoE's one gate, single-task independence, and
every baseline with or without sequence features (the objectives ESMM and AITM train with are tested in
test_objectives.py)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from fakes import default_objective, tiny_dataset
from mtrec.data.batches import Batch, BatchIterator
from mtrec.data.dataset import PreparedDataset
from mtrec.models import create_model
from mtrec.nn.experts import ExpertLevel, ProgressiveLayers, task_layout

BASELINES = ["single_task", "omoe", "cgc", "ple", "esmm", "aitm"]


pytestmark = pytest.mark.usefixtures("one_thread")


def first_batch(dataset: PreparedDataset, size: int = 64) -> Batch:
    return next(iter(BatchIterator(dataset, "train", size, shuffle=False)))


@pytest.fixture(scope="module")
def data() -> PreparedDataset:
    return tiny_dataset()


# ---- AITM -------------------------------------------------------------------------------------------

def test_aitm_transfers_information_from_the_earlier_task(data: PreparedDataset) -> None:
    torch.manual_seed(0)
    model = create_model("aitm", data.schema)
    batch = first_batch(data)
    model(batch.features)["conversion"].sum().backward()
    first_layer = model.towers.layers[0].weight.grad  # [T, in, out]
    assert first_layer is not None
    assert first_layer[0].abs().sum() > 0  # the click tower feeds the conversion output
    model.zero_grad()
    model(batch.features)["click"].sum().backward()
    assert model.towers.layers[0].weight.grad[1].abs().sum() == 0  # but not the other way round


# ---- CGC / PLE --------------------------------------------------------------------------------------

def shapes(model: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {name: tuple(p.shape) for name, p in model.named_parameters()}


def test_ple_with_one_level_has_cgc_structure(data: PreparedDataset) -> None:
    options = {"num_task_experts": 2, "num_shared_experts": 3, "expert_sizes": (32, 16), "tower_sizes": (8,)}
    cgc = create_model("cgc", data.schema, **options)
    ple1 = create_model("ple", data.schema, num_levels=1, **options)
    assert shapes(cgc) == shapes(ple1)
    assert not any("shared_gate" in name for name in shapes(cgc))
    ple2 = create_model("ple", data.schema, num_levels=2, **options)
    gated = sorted({name.split(".")[2] for name in shapes(ple2) if "shared_gate" in name})
    assert gated == ["0"]  # only the lower level has a shared gate
    assert sum(p.numel() for p in ple2.parameters()) > sum(p.numel() for p in cgc.parameters())


def test_extraction_layer_counts_its_experts() -> None:
    layer = ExpertLevel(10, task_layout(3, 2, 4, sees_all=False), expert_sizes=(8, 6), shared_gate=True)
    assert layer.task_experts.n == 6 and layer.shared_experts.n == 4
    tasks, shared = layer(torch.randn(5, 10))
    assert tasks.shape == (3, 5, 6) and shared is not None and shared.shape == (5, 6)


def test_extraction_layer_per_task_inputs() -> None:
    torch.manual_seed(0)
    layer = ExpertLevel(10, task_layout(2, 1, 2, sees_all=False), expert_sizes=(8,))
    x = torch.randn(5, 10)
    same, _ = layer(x)
    per_task, _ = layer(torch.stack([x, x]))
    torch.testing.assert_close(per_task, same)  # identical per-task inputs = one shared input
    different, _ = layer(torch.stack([x, torch.randn(5, 10)]))
    torch.testing.assert_close(different[0], same[0])  # task 0 reads only its own input
    assert not torch.allclose(different[1], same[1])
    with pytest.raises(ValueError, match=r"\[I=2, B, in\]"):
        layer(torch.randn(3, 5, 10))


def test_progressive_layers_with_per_task_inputs_need_a_shared_input_below_the_top() -> None:
    stack = ProgressiveLayers(10, num_tasks=2, num_levels=2, expert_sizes=(8,))
    with pytest.raises(ValueError, match="shared_input"):
        stack(torch.randn(2, 5, 10))
    assert stack(torch.randn(2, 5, 10), torch.randn(5, 10)).shape == (2, 5, 8)


# ---- OMoE, single-task ------------------------------------------------------------------------------

def test_omoe_feeds_one_mixture_to_every_task(data: PreparedDataset) -> None:
    torch.manual_seed(0)
    model = create_model("omoe", data.schema)
    with torch.no_grad():
        for layer in model.towers.layers:  # make task 1's tower a copy of task 0's
            layer.weight[1] = layer.weight[0]
            layer.bias[1] = layer.bias[0]
    outputs = model(first_batch(data).features)
    torch.testing.assert_close(outputs["click"], outputs["conversion"])
    mmoe = create_model("mmoe", data.schema)
    assert model.gates.n_gates == 1 and mmoe.gates.n_gates == 2


def test_single_task_networks_share_nothing(data: PreparedDataset) -> None:
    torch.manual_seed(0)
    model = create_model("single_task", data.schema, embedding_dim=4)
    batch = first_batch(data)
    model(batch.features)["click"].sum().backward()
    table = model.embedding.table.weight.grad  # [V, T*d]: task k owns columns k*d .. (k+1)*d
    assert table is not None
    assert table[:, :4].abs().sum() > 0 and table[:, 4:].abs().sum() == 0
    assert model.embedding.dense_weight.grad is not None
    assert model.embedding.dense_weight.grad[:, 4:].abs().sum() == 0
    for layer in model.networks.layers:
        assert layer.weight.grad is not None
        assert layer.weight.grad[1].abs().sum() == 0
    assert model.shared_parameters() == []


# ---- every baseline, with and without sequences --------------------------------------------------------

@pytest.mark.parametrize("name", BASELINES)
@pytest.mark.parametrize("sequences", [True, False])
def test_baseline_trains_one_step(name: str, sequences: bool, data: PreparedDataset) -> None:
    dataset = data if sequences else dataclasses.replace(
        data, schema=dataclasses.replace(data.schema, sequences=()), sequences={}
    )
    torch.manual_seed(0)
    model = create_model(name, dataset.schema, embedding_dim=4)
    batch = first_batch(dataset)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    losses = default_objective(model).losses(model(batch.features), batch)
    assert set(dataset.schema.task_names) <= set(losses)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    torch.stack(list(losses.values())).sum().backward()
    optimizer.step()
    moved = [n for n, p in model.named_parameters() if not torch.equal(p, before[n])]
    assert len(moved) == len(before), sorted(set(before) - set(moved))
    probs = default_objective(model).predictions(model(batch.features))
    for task in dataset.schema.task_names:
        assert probs[task].shape == (len(batch),)
        assert bool(((probs[task] >= 0) & (probs[task] <= 1)).all())
