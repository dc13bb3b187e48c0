"""MultiBalance: the task gradients on the shared representation are rescaled to the balanced magnitudes
and passed down to the shared bottom, the towers keep their plain gradients, ranks step as one process,
and the trainer records the representation only inside a training step."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fakes import tiny_dataset
from mtrec import collectives
from mtrec.data.batches import BatchIterator
from mtrec.data.source import load_data
from mtrec.models import create_model
from mtrec.nn.embedding import capturing
from mtrec.objectives.weighting import WeightingConfigError, create_weighting
from mtrec.training.config import TrainConfig
from mtrec.training.trainer import Trainer

pytestmark = pytest.mark.usefixtures("one_thread")
TASKS = ["click", "conversion"]


class SharedBottom(nn.Module):
    """``Z = tanh(x A)`` shared; task ``k``'s loss ``scale_k * mean((Z v_k - y_k)^2)`` (``scale`` makes one
    task's gradients much larger than the other's)."""

    def __init__(self) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.bottom = nn.Parameter(torch.randn(5, 4, generator=generator))
        self.towers = nn.Parameter(torch.randn(2, 4, generator=generator))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x @ self.bottom)  # Z [B, 4]

    def losses(self, z: torch.Tensor, y: torch.Tensor, scale: tuple[float, float]) -> dict[str, torch.Tensor]:
        return {t: scale[k] * ((z @ self.towers[k] - y[:, k]) ** 2).mean() for k, t in enumerate(TASKS)}


def data(rows: int = 16, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(rows, 5, generator=generator), torch.randn(rows, 2, generator=generator)


def test_the_shared_representation_gets_the_balanced_task_gradients_and_the_towers_their_own() -> None:
    model = SharedBottom()
    x, y = data()
    scale = (1.0, 20.0)  # the auxiliary task's gradients are far larger
    z = model(x)
    losses = model.losses(z, y, scale)
    g = [torch.autograd.grad(losses[t], z, retain_graph=True)[0] for t in TASKS]  # dL_k/dZ [B, 4]
    towers = [torch.autograd.grad(losses[t], model.towers, retain_graph=True)[0] for t in TASKS]
    strategy = create_weighting("multibalance", TASKS, main="click", relax=1.0)
    total = strategy.combine(losses, [], [z])
    torch.testing.assert_close(total, losses["click"] + losses["conversion"])
    z_grad, bottom_grad, towers_grad = torch.autograd.grad(total, [z, model.bottom, model.towers])
    # relax = 1: the auxiliary gradient on Z is brought to the main task's norm, the main one is kept
    s = float(g[0].norm() / g[1].norm())
    assert s < 0.2
    balanced = g[0] + s * g[1]
    torch.testing.assert_close(z_grad, balanced)
    assert float((s * g[1]).norm()) == pytest.approx(float(g[0].norm()), rel=1e-5)
    # the shared bottom receives the balanced gradient through Z; the towers their plain task gradients
    torch.testing.assert_close(bottom_grad, torch.autograd.grad(model(x), model.bottom, balanced)[0])
    torch.testing.assert_close(towers_grad, towers[0] + towers[1])
    assert strategy.current_weights() == pytest.approx({"click": 1.0, "conversion": s}, rel=1e-5)


def test_relax_interpolates_and_the_norms_are_averaged_over_steps() -> None:
    model = SharedBottom()
    x, y = data()
    strategy = create_weighting("multibalance", TASKS, relax=0.5, beta=0.5)
    norms = []
    for scale in ((1.0, 10.0), (1.0, 2.0)):
        z = model(x)
        losses = model.losses(z, y, scale)
        norms.append(torch.stack([torch.autograd.grad(losses[t], z, retain_graph=True)[0].norm() for t in TASKS]))
        strategy.combine(losses, [], [z])
    averaged = 0.5 * norms[0] + 0.5 * norms[1]
    want = 0.5 * float(averaged[0] / averaged[1]) + 0.5
    assert strategy.current_weights()["conversion"] == pytest.approx(want, rel=1e-5)
    restored = create_weighting("multibalance", TASKS, relax=0.5, beta=0.5)
    restored.load_state_dict(strategy.state_dict())
    assert torch.equal(restored.norms, strategy.norms) and restored.has_norms


def test_ranks_applying_a_step_exactly_as_one_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """Three simulated ranks, each with its own rows and its task losses scaled as ``step_mean`` scales
    them (its rows' sum over the step's rows, times the world size): the mean of their shared-bottom
    gradients (what DDP applies) is the one-process step's."""
    x, y = data(rows=12)
    scale = (1.0, 20.0)

    def bottom_gradient(rows: slice, world_size: int) -> torch.Tensor:
        model = SharedBottom()
        z = model(x[rows])
        share = world_size * z.shape[0] / x.shape[0]  # the rank's mean -> its share of the step's mean
        losses = {t: share * loss for t, loss in model.losses(z, y[rows], scale).items()}
        create_weighting("multibalance", TASKS, relax=0.7).combine(losses, [], [z]).backward()
        assert model.bottom.grad is not None
        return model.bottom.grad

    want = bottom_gradient(slice(None), 1)
    ranks = [slice(0, 4), slice(4, 8), slice(8, 12)]
    reduced: list[torch.Tensor] = []
    monkeypatch.setattr(collectives, "world_size", lambda: 3)
    monkeypatch.setattr(collectives, "all_reduce_", lambda t, op="sum": reduced.append(t.clone()) or t)
    for rows in ranks:  # a first pass records each rank's squared norms
        bottom_gradient(rows, 3)
    total = torch.stack(reduced).sum(0)
    monkeypatch.setattr(collectives, "all_reduce_", lambda t, op="sum": t.copy_(total))
    got = torch.stack([bottom_gradient(rows, 3) for rows in ranks]).mean(0)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


def test_a_short_training_run_on_synthetic_data_decreases_the_loss() -> None:
    data = load_data("synthetic:easy:2000")
    torch.manual_seed(0)
    model = create_model("shared_bottom", data.schema, embedding_dim=4)
    config = TrainConfig(epochs=2, batch_size=128, weighting="multibalance", device="cpu", prefetch=0)
    result = Trainer(model, config, log=lambda _: None).fit(data)
    losses = [sum(row["train_loss"].values()) for row in result.history]
    assert losses[-1] < losses[0]
    weights = result.history[-1]["task_weights"]
    assert weights[data.schema.task_names[0]] == 1.0 and weights[data.schema.task_names[1]] != 1.0
    embedding = model.shared_representation()
    assert embedding is not None and embedding.captured is None  # recording stops with the step


def test_the_embedding_records_its_output_only_inside_capturing() -> None:
    data = tiny_dataset()
    model = create_model("mmoe", data.schema, embedding_dim=4, expert_sizes=(8,), tower_sizes=(4,))
    batch = next(iter(BatchIterator(data, "train", 32)))
    embedding = model.shared_representation()
    assert embedding is model.embedding
    with capturing(embedding) as captured:
        model(batch.features)
    fields, history = captured  # one embed() call: the fields and the stacked histories
    assert fields.shape == (32, embedding.num_fields, 4) and history.shape[0] == 32 and history.shape[-1] == 4
    assert embedding.captured is None
    model(batch.features)  # outside a step (evaluation, prediction, export): nothing is recorded
    assert len(captured) == 2


def test_a_model_without_a_shared_representation_and_a_compiled_step_are_refused() -> None:
    data = tiny_dataset()
    model = create_model("single_task", data.schema, embedding_dim=4)
    assert model.shared_representation() is None
    strategy = create_weighting("multibalance", data.schema.task_names)
    losses = {t: p.sum() for t, p in zip(data.schema.task_names, model.parameters(), strict=False)}
    with pytest.raises(WeightingConfigError, match="multibalance needs a model whose tasks share a representation"):
        strategy.combine(losses, model.shared_parameters(), [])
    with pytest.raises(ValueError, match=r"compile: true cannot be used with train\.weighting: multibalance"):
        TrainConfig(compile=True, weighting="multibalance")
