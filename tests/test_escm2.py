"""ESCM² objectives (escm2_ips, escm2_dr): clipped IPS weights, no gradient into the propensity, the DR
imputation tower learning; usable with any model through the trainer."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from fakes import tiny_dataset
from mtrec.data.batches import gather_batch
from mtrec.features.schema import TaskSpec
from mtrec.models import create_model
from mtrec.objectives import ObjectiveConfigError, create_objective
from mtrec.objectives.escm2 import COUNTERFACTUAL, IMPUTATION
from mtrec.training.config import TrainConfig
from mtrec.training.trainer import Trainer

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data():  # type: ignore[no-untyped-def]
    return tiny_dataset(rows=200, seed=4)


def logits(batch, click_scale: float = 1.0) -> dict[str, torch.Tensor]:  # type: ignore[no-untyped-def]
    """Leaf logits that need gradients: a spread of click logits (some far below the clip) and conversion."""
    n = len(batch)
    torch.manual_seed(1)
    return {"click": (click_scale * torch.linspace(-8, 3, n)).requires_grad_(),
            "conversion": torch.randn(n).requires_grad_()}


def test_ips_weights_are_clipped_and_zero_off_the_clicked_rows(data) -> None:  # type: ignore[no-untyped-def]
    objective = create_objective("escm2_ips", data.schema, propensity_clip=0.1)
    batch = gather_batch(data, np.arange(120))
    outputs = logits(batch)
    propensity = objective.propensities(outputs)["conversion"]
    weights = objective.ips_weights(outputs, batch)["conversion"]
    clicked = batch.masks["conversion"] > 0
    assert propensity.min() == pytest.approx(0.1) and propensity.max() <= 1.0
    assert weights.max() <= 1 / 0.1 + 1e-5
    assert torch.all(weights[~clicked] == 0)
    torch.testing.assert_close(weights[clicked], 1 / torch.sigmoid(outputs["click"].detach()[clicked]).clamp_min(0.1))
    tiny = clicked & (torch.sigmoid(outputs["click"].detach()) < 0.1)
    assert tiny.any() and torch.allclose(weights[tiny], torch.tensor(10.0))  # the clip is in force


@pytest.mark.parametrize("name", ["escm2_ips", "escm2_dr"])
def test_the_counterfactual_risk_gives_the_propensity_no_gradient(name: str, data) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    objective = create_objective(name, data.schema)
    batch = gather_batch(data, np.arange(120))
    outputs = logits(batch, click_scale=0.3)
    losses = objective.losses(outputs, batch)
    assert set(losses) == {"click", "conversion", COUNTERFACTUAL} | ({IMPUTATION} if name == "escm2_dr" else set())
    losses[COUNTERFACTUAL].backward(retain_graph=True)
    assert outputs["click"].grad is None or outputs["click"].grad.abs().max() == 0
    assert outputs["conversion"].grad is not None and outputs["conversion"].grad.abs().max() > 0
    if name == "escm2_dr":  # the imputed CVR enters the risk under stop-gradient: the risk never trains the tower
        assert all(p.grad is None or p.grad.abs().max() == 0 for p in objective.parameters())
        outputs["conversion"].grad = None
        losses[IMPUTATION].backward()  # and the tower's loss never trains the CVR estimate
        assert outputs["conversion"].grad is None or outputs["conversion"].grad.abs().max() == 0


def test_dr_imputation_tower_trains(data) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    objective = create_objective("escm2_dr", data.schema)
    batch = gather_batch(data, np.arange(160))
    outputs = {k: v.detach() for k, v in logits(batch, click_scale=0.3).items()}
    optimizer = torch.optim.Adam(objective.parameters(), lr=0.01)
    before = {k: v.clone() for k, v in objective.state_dict().items()}
    history = []
    for _ in range(40):
        loss = objective.losses(outputs, batch)[IMPUTATION]
        history.append(float(loss.detach()))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert history[-1] < 0.5 * history[0], history[::10]
    assert any(not torch.equal(before[k], v) for k, v in objective.state_dict().items())


def test_escm2_needs_a_chained_task_and_a_free_term_name(data) -> None:  # type: ignore[no-untyped-def]
    independent = dataclasses.replace(data.schema, tasks=(TaskSpec("click"), TaskSpec("conversion")))
    with pytest.raises(ObjectiveConfigError, match="escm2_ips: needs a binary task observed after another"):
        create_objective("escm2_ips", independent)
    clash = dataclasses.replace(data.schema, tasks=(TaskSpec("click"), TaskSpec("imputation", observed_after="click")))
    with pytest.raises(ObjectiveConfigError, match=r"\['imputation'\] clash"):
        create_objective("escm2_dr", clash)
    with pytest.raises(ObjectiveConfigError, match="propensity_clip"):
        create_objective("escm2_ips", data.schema, propensity_clip=0.0)


def test_the_trainer_trains_the_imputation_tower_with_any_model() -> None:
    data = tiny_dataset(rows=300, seed=6)
    torch.manual_seed(0)
    model = create_model("shared_bottom", data.schema, embedding_dim=4, bottom_sizes=[8], tower_sizes=[4])
    config = TrainConfig(epochs=1, batch_size=64, objective="escm2_dr", device="cpu", prefetch=0)
    trainer = Trainer(model, config, log=lambda _: None)
    before = {k: v.clone() for k, v in trainer.objective.state_dict().items()}
    result = trainer.fit(data)
    assert all(np.isfinite(v) for v in result.history[0]["train_loss"].values())
    assert any(not torch.equal(before[k], v) for k, v in trainer.objective.state_dict().items())
