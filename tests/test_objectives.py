"""Objectives as objects: masked, all rows (with AITM's calibrator), the entire space for any model and
chain depth; the registry of objectives; a model's default objective and the config's override."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from fakes import default_objective, tiny_dataset
from mtrec.data.batches import Batch, BatchIterator
from mtrec.data.dataset import PreparedDataset
from mtrec.features.schema import DatasetSchema, TaskSpec
from mtrec.models import create_model
from mtrec.objectives import ObjectiveConfigError, create_objective, list_objectives
from mtrec.objectives.objective import EntireSpace

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data() -> PreparedDataset:
    return tiny_dataset()


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


def test_registry_lists_the_objectives_and_names_bad_options(data: PreparedDataset) -> None:
    assert {"masked", "all_rows", "entire_space"} <= set(list_objectives())
    with pytest.raises(ObjectiveConfigError, match="unknown objective 'nope'"):
        create_objective("nope", data.schema)
    with pytest.raises(ObjectiveConfigError, match=r"no option.*'weight'"):
        create_objective("masked", data.schema, weight=1.0)
    with pytest.raises(ObjectiveConfigError, match="calibrator_weight: must be >= 0"):
        create_objective("all_rows", data.schema, calibrator_weight=-1.0)


def test_models_declare_their_default_objective(data: PreparedDataset) -> None:
    assert create_model("esmm", data.schema).default_objective == ("entire_space", {})
    assert create_model("aitm", data.schema).default_objective == ("all_rows", {"calibrator_weight": 0.6})
    assert create_model("mmoe", data.schema).default_objective == ("masked", {})


def test_masked_learns_a_later_task_on_the_earlier_tasks_positives(data: PreparedDataset) -> None:
    batch = first_batch(data)
    outputs = {"click": torch.randn(64), "conversion": torch.randn(64)}
    losses = create_objective("masked", data.schema).losses(outputs, batch)
    clicked = batch.labels["click"] > 0
    expected = F.binary_cross_entropy_with_logits(outputs["conversion"][clicked], batch.labels["conversion"][clicked])
    torch.testing.assert_close(losses["conversion"], expected)


def test_entire_space_on_mmoe_is_the_product_of_ctr_and_cvr(data: PreparedDataset) -> None:
    torch.manual_seed(0)
    model = create_model("mmoe", data.schema)
    objective = create_objective("entire_space", data.schema)
    assert isinstance(objective, EntireSpace)
    batch = first_batch(data)
    outputs = model(batch.features)
    p_ctr, p_cvr = torch.sigmoid(outputs["click"]), torch.sigmoid(outputs["conversion"])
    torch.testing.assert_close(objective.entire_space(outputs)["conversion"], p_ctr * p_cvr, atol=1e-6, rtol=1e-4)
    losses = objective.losses(outputs, batch)
    expected = F.binary_cross_entropy(p_ctr * p_cvr, batch.labels["conversion"])  # every row, not only clicks
    torch.testing.assert_close(losses["conversion"], expected)
    click = F.binary_cross_entropy_with_logits(outputs["click"], batch.labels["click"])
    torch.testing.assert_close(losses["click"], click)
    predictions = objective.predictions(outputs)
    assert torch.equal(predictions["conversion"], p_cvr)  # pCVR is evaluated and served


def test_entire_space_chains_deeper_tasks(data: PreparedDataset) -> None:
    schema = with_tasks(data.schema, TaskSpec("click"), TaskSpec("cart", observed_after="click"),
                        TaskSpec("buy", observed_after="cart"))
    torch.manual_seed(0)
    model = create_model("ple", schema)
    batch = relabelled(first_batch(data), schema)
    outputs = model(batch.features)
    objective = create_objective("entire_space", schema)
    p = {t: torch.sigmoid(outputs[t]) for t in ("click", "cart", "buy")}
    product = p["click"] * p["cart"] * p["buy"]
    torch.testing.assert_close(objective.entire_space(outputs)["buy"], product, atol=1e-6, rtol=1e-4)
    expected = F.binary_cross_entropy(product, batch.labels["buy"])
    torch.testing.assert_close(objective.losses(outputs, batch)["buy"], expected)


def test_entire_space_without_chained_tasks_is_plain_bce(data: PreparedDataset) -> None:
    schema = with_tasks(data.schema, TaskSpec("click"), TaskSpec("conversion"))
    batch = relabelled(first_batch(data), schema)
    outputs = {"click": torch.randn(64), "conversion": torch.randn(64)}
    expected = F.binary_cross_entropy_with_logits(outputs["conversion"], batch.labels["conversion"])
    torch.testing.assert_close(create_objective("entire_space", schema).losses(outputs, batch)["conversion"], expected)


def test_esmm_trains_in_the_entire_space_by_default(data: PreparedDataset) -> None:
    model = create_model("esmm", data.schema)
    batch = first_batch(data)
    outputs = model(batch.features)
    got = default_objective(model).losses(outputs, batch)
    want = create_objective("entire_space", data.schema).losses(outputs, batch)
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in got)


def test_calibrator_is_zero_when_the_later_task_is_no_likelier(data: PreparedDataset) -> None:
    objective = create_objective("all_rows", data.schema, calibrator_weight=0.5)
    batch = first_batch(data, 16)
    click = torch.linspace(-2, 2, 16)
    below = {"click": click, "conversion": click - torch.rand(16)}  # p_conversion <= p_click everywhere
    assert objective.losses(below, batch)["calibrator"].item() == 0.0
    equal = {"click": click, "conversion": click.clone()}
    assert objective.losses(equal, batch)["calibrator"].item() == 0.0
    above = {"click": click, "conversion": click + 1.0}
    excess = (torch.sigmoid(click + 1.0) - torch.sigmoid(click)).mean()
    torch.testing.assert_close(objective.losses(above, batch)["calibrator"], 0.5 * excess)


def test_calibrator_needs_a_weight_and_an_observed_after_pair(data: PreparedDataset) -> None:
    batch = first_batch(data, 16)
    outputs = {"click": torch.zeros(16), "conversion": torch.ones(16)}
    assert "calibrator" not in create_objective("all_rows", data.schema).losses(outputs, batch)
    unordered = with_tasks(data.schema, TaskSpec("click"), TaskSpec("conversion"))
    assert "calibrator" not in create_objective("all_rows", unordered, calibrator_weight=0.6).losses(outputs, batch)
    clash = with_tasks(data.schema, TaskSpec("click"), TaskSpec("calibrator", observed_after="click"))
    with pytest.raises(ObjectiveConfigError, match="calibrator"):
        create_objective("all_rows", clash)


def test_all_rows_learns_every_task_on_all_impressions_and_serves_the_conditional(data: PreparedDataset) -> None:
    torch.manual_seed(0)
    model = create_model("aitm", data.schema)
    batch = first_batch(data)
    outputs = model(batch.features)
    objective = default_objective(model)
    expected = F.binary_cross_entropy_with_logits(outputs["conversion"], batch.labels["conversion"])
    torch.testing.assert_close(objective.losses(outputs, batch)["conversion"], expected)  # every row
    ratio = torch.sigmoid(outputs["conversion"]) / torch.sigmoid(outputs["click"])
    torch.testing.assert_close(objective.predictions(outputs)["conversion"], ratio.clamp(0, 1))
