"""Baseline models: ESMM's entire space, AITM's transfer and calibrator, CGC/PLE structure, OMoE's one
gate, single-task independence, and every baseline with or without sequence features."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from fakes import tiny_dataset
from mtrec.data.batches import Batch, BatchIterator
from mtrec.data.dataset import PreparedDataset
from mtrec.features.schema import DatasetSchema, TaskSpec
from mtrec.models import ModelConfigError, create_model
from mtrec.nn.experts import ExtractionLayer, ProgressiveLayers

BASELINES = ["single_task", "omoe", "cgc", "ple", "esmm", "aitm"]


pytestmark = pytest.mark.usefixtures("one_thread")


def first_batch(dataset: PreparedDataset, size: int = 64) -> Batch:
    return next(iter(BatchIterator(dataset, "train", size, shuffle=False)))


def with_tasks(schema: DatasetSchema, *tasks: TaskSpec) -> DatasetSchema:
    return dataclasses.replace(schema, tasks=tasks)


def relabelled(batch: Batch, schema: DatasetSchema) -> Batch:
    """The batch with labels for ``schema``'s tasks: click, and each later task = the earlier's label
    times a coin flip (so a chained task's label is 1 only where its chain happened)."""
    gen = torch.Generator().manual_seed(0)
    labels = {}
    for task in schema.tasks:
        if task.observed_after is None:
            labels[task.name] = batch.labels["click"]
        else:
            coin = (torch.rand(len(batch), generator=gen) < 0.5).float()
            labels[task.name] = labels[task.observed_after] * coin
    masks = {t.name: labels[t.observed_after] if t.observed_after else torch.ones(len(batch))
             for t in schema.tasks}
    return dataclasses.replace(batch, labels=labels, masks=masks)


@pytest.fixture(scope="module")
def data() -> PreparedDataset:
    return tiny_dataset()


# ---- ESMM -------------------------------------------------------------------------------------------

def test_esmm_ctcvr_is_the_product_of_ctr_and_cvr(data: PreparedDataset) -> None:
    torch.manual_seed(0)
    model = create_model("esmm", data.schema)
    outputs = model(first_batch(data))
    product = torch.sigmoid(outputs["click"]) * torch.sigmoid(outputs["conversion"])
    torch.testing.assert_close(torch.sigmoid(outputs["ctcvr"]), product, atol=1e-6, rtol=1e-4)
    probs = model.probabilities(outputs)
    assert list(probs) == ["click", "conversion"]
    assert torch.equal(probs["conversion"], torch.sigmoid(outputs["conversion"]))  # pCVR is served


def test_esmm_loss_is_on_click_and_ctcvr_over_all_impressions(data: PreparedDataset) -> None:
    torch.manual_seed(0)
    model = create_model("esmm", data.schema)
    batch = first_batch(data)
    outputs = model(batch)
    losses = model.losses(outputs, batch)
    assert set(losses) == {"click", "conversion"}
    ctcvr = torch.sigmoid(outputs["click"]) * torch.sigmoid(outputs["conversion"])
    expected = F.binary_cross_entropy(ctcvr, batch.labels["conversion"])  # every row, not only clicks
    torch.testing.assert_close(losses["conversion"], expected)
    torch.testing.assert_close(
        losses["click"], F.binary_cross_entropy_with_logits(outputs["click"], batch.labels["click"])
    )


def test_esmm_chains_deeper_tasks_and_names_each_product(data: PreparedDataset) -> None:
    schema = with_tasks(data.schema, TaskSpec("click"), TaskSpec("cart", observed_after="click"),
                        TaskSpec("buy", observed_after="cart"))
    torch.manual_seed(0)
    model = create_model("esmm", schema)
    batch = relabelled(first_batch(data), schema)
    outputs = model(batch)
    assert {"ctcvr_cart", "ctcvr_buy"} <= set(outputs)
    p = {t: torch.sigmoid(outputs[t]) for t in ("click", "cart", "buy")}
    product = p["click"] * p["cart"] * p["buy"]
    torch.testing.assert_close(torch.sigmoid(outputs["ctcvr_buy"]), product, atol=1e-6, rtol=1e-4)
    loss = model.losses(outputs, batch)["buy"]
    torch.testing.assert_close(loss, F.binary_cross_entropy(product, batch.labels["buy"]))


def test_esmm_without_chained_tasks_is_plain_bce_with_no_derived_output(data: PreparedDataset) -> None:
    schema = with_tasks(data.schema, TaskSpec("click"), TaskSpec("conversion"))
    model = create_model("esmm", schema)
    batch = relabelled(first_batch(data), schema)
    outputs = model(batch)
    assert set(outputs) == {"click", "conversion"}
    expected = F.binary_cross_entropy_with_logits(outputs["conversion"], batch.labels["conversion"])
    torch.testing.assert_close(model.losses(outputs, batch)["conversion"], expected)


def test_esmm_rejects_a_task_named_like_its_derived_output(data: PreparedDataset) -> None:
    schema = with_tasks(data.schema, TaskSpec("click"), TaskSpec("ctcvr", observed_after="click"))
    with pytest.raises(ModelConfigError, match="ctcvr"):
        create_model("esmm", schema)


# ---- AITM -------------------------------------------------------------------------------------------

def test_aitm_calibrator_is_zero_when_the_later_task_is_no_likelier(data: PreparedDataset) -> None:
    model = create_model("aitm", data.schema, calibrator_weight=0.5)
    batch = first_batch(data, 16)
    click = torch.linspace(-2, 2, 16)
    below = {"click": click, "conversion": click - torch.rand(16)}  # p_conversion <= p_click everywhere
    assert model.losses(below, batch)["calibrator"].item() == 0.0
    equal = {"click": click, "conversion": click.clone()}
    assert model.losses(equal, batch)["calibrator"].item() == 0.0
    above = {"click": click, "conversion": click + 1.0}
    excess = (torch.sigmoid(click + 1.0) - torch.sigmoid(click)).mean()
    torch.testing.assert_close(model.losses(above, batch)["calibrator"], 0.5 * excess)
    assert model.losses(above, batch)["calibrator"].item() > 0


def test_aitm_calibrator_weight_is_an_option_and_needs_an_observed_after_pair(data: PreparedDataset) -> None:
    batch = first_batch(data, 16)
    outputs = {"click": torch.zeros(16), "conversion": torch.ones(16)}
    assert "calibrator" not in create_model("aitm", data.schema, calibrator_weight=0.0).losses(outputs, batch)
    unordered = with_tasks(data.schema, TaskSpec("click"), TaskSpec("conversion"))
    assert "calibrator" not in create_model("aitm", unordered).losses(outputs, batch)
    with pytest.raises(ModelConfigError, match="calibrator_weight"):
        create_model("aitm", data.schema, calibrator_weight=-1.0)


def test_aitm_learns_every_task_on_all_impressions_and_serves_the_conditional(data: PreparedDataset) -> None:
    torch.manual_seed(0)
    model = create_model("aitm", data.schema)
    batch = first_batch(data)
    outputs = model(batch)
    losses = model.losses(outputs, batch)
    expected = F.binary_cross_entropy_with_logits(outputs["conversion"], batch.labels["conversion"])
    torch.testing.assert_close(losses["conversion"], expected)  # every row, not only clicked ones
    probs = model.probabilities(outputs)
    ratio = torch.sigmoid(outputs["conversion"]) / torch.sigmoid(outputs["click"])
    torch.testing.assert_close(probs["conversion"], ratio.clamp(0, 1))


def test_aitm_transfers_information_from_the_earlier_task(data: PreparedDataset) -> None:
    torch.manual_seed(0)
    model = create_model("aitm", data.schema)
    batch = first_batch(data)
    model(batch)["conversion"].sum().backward()
    first_layer = model.towers.layers[0].weight.grad  # [T, in, out]
    assert first_layer is not None
    assert first_layer[0].abs().sum() > 0  # the click tower feeds the conversion output
    model.zero_grad()
    model(batch)["click"].sum().backward()
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
    layer = ExtractionLayer(10, num_tasks=3, num_task_experts=2, num_shared_experts=4, expert_sizes=(8, 6),
                            shared_gate=True)
    assert layer.task_experts.n == 6 and layer.shared_experts.n == 4
    tasks, shared = layer(torch.randn(5, 10))
    assert tasks.shape == (3, 5, 6) and shared is not None and shared.shape == (5, 6)


def test_extraction_layer_per_task_inputs() -> None:
    torch.manual_seed(0)
    layer = ExtractionLayer(10, num_tasks=2, num_task_experts=1, num_shared_experts=2, expert_sizes=(8,))
    x = torch.randn(5, 10)
    same, _ = layer(x)
    per_task, _ = layer(torch.stack([x, x]))
    torch.testing.assert_close(per_task, same)  # identical per-task inputs = one shared input
    different, _ = layer(torch.stack([x, torch.randn(5, 10)]))
    torch.testing.assert_close(different[0], same[0])  # task 0 reads only its own input
    assert not torch.allclose(different[1], same[1])
    with pytest.raises(ValueError, match=r"\[T=2, B, in\]"):
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
    outputs = model(first_batch(data))
    torch.testing.assert_close(outputs["click"], outputs["conversion"])
    mmoe = create_model("mmoe", data.schema)
    assert model.gates.n_gates == 1 and mmoe.gates.n_gates == 2


def test_single_task_networks_share_nothing(data: PreparedDataset) -> None:
    torch.manual_seed(0)
    model = create_model("single_task", data.schema, embedding_dim=4)
    batch = first_batch(data)
    model(batch)["click"].sum().backward()
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
    losses = model.losses(model(batch), batch)
    assert set(dataset.schema.task_names) <= set(losses)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    torch.stack(list(losses.values())).sum().backward()
    optimizer.step()
    moved = [n for n, p in model.named_parameters() if not torch.equal(p, before[n])]
    assert len(moved) == len(before), sorted(set(before) - set(moved))
    probs = model.probabilities(model(batch))
    for task in dataset.schema.task_names:
        assert probs[task].shape == (len(batch),)
        assert bool(((probs[task] >= 0) & (probs[task] <= 1)).all())
