"""PCGrad, CAGrad and MetaBalance: the surrogate loss gives the shared parameters the strategy's direction
(and the others the plain gradient), on one process and, with the ranks' gradients averaged, exactly
under data parallelism."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fakes import tiny_dataset
from mtrec import collectives
from mtrec.models import create_model
from mtrec.objectives.gradient_balancing import cagrad_weights, gradcraft_project, pcgrad_project
from mtrec.objectives.weighting import WeightingConfigError, create_weighting
from mtrec.training.config import TrainConfig
from mtrec.training.trainer import Trainer

pytestmark = pytest.mark.usefixtures("one_thread")
TASKS = ["click", "conversion"]


class Linear(nn.Module):
    """Task losses ``L_k = g_k . theta + h_k . own_k``: their gradients on the shared ``theta`` are the
    given ``g_k``, on the task's own parameter ``h_k``."""

    def __init__(self, dim: int = 3) -> None:
        super().__init__()
        self.theta = nn.Parameter(torch.zeros(dim))
        self.own = nn.Parameter(torch.zeros(2, dim))

    def losses(self, grads: torch.Tensor, own: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        own = torch.ones_like(self.own) if own is None else own
        return {t: grads[k] @ self.theta + own[k] @ self.own[k] for k, t in enumerate(TASKS)}


def step_gradient(name: str, grads: torch.Tensor, **options: object) -> torch.Tensor:
    """The shared parameters' gradient of one ``combine`` + backward on :class:`Linear`."""
    model = Linear(grads.shape[1])
    strategy = create_weighting(name, TASKS, **options)
    strategy.combine(model.losses(grads), [model.theta]).backward()
    assert model.theta.grad is not None
    return model.theta.grad


CONFLICT = torch.tensor([[1.0, 0.0, 0.0], [-1.0, 1.0, 0.0]])  # g_1 . g_2 = -1


def test_pcgrad_leaves_no_pair_of_projected_gradients_in_conflict() -> None:
    generator = torch.Generator().manual_seed(0)
    for _ in range(50):
        grads = torch.randn(2, 6, generator=generator)
        projected = pcgrad_project(grads, generator)
        assert float(projected[0] @ projected[1]) >= -1e-6
        if float(grads[0] @ grads[1]) >= 0:  # no conflict: nothing changes
            torch.testing.assert_close(projected, grads)
        else:  # each projected gradient is orthogonal to the gradient it conflicted with
            assert abs(float(projected[0] @ grads[1])) < 1e-5 and abs(float(projected[1] @ grads[0])) < 1e-5
    # by hand: g1' = g1 + 0.5 g2 = (0.5, 0.5, 0), g2' = g2 + g1 = (0, 1, 0); the step is their sum
    torch.testing.assert_close(step_gradient("pcgrad", CONFLICT), torch.tensor([0.5, 1.5, 0.0]))


def test_the_surrogate_keeps_the_loss_value_and_the_task_parameters_gradient() -> None:
    model = Linear()
    strategy = create_weighting("pcgrad", TASKS)
    torch.manual_seed(0)
    with torch.no_grad():
        model.theta.normal_()
        model.own.normal_()
    losses = model.losses(CONFLICT, own=torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]))
    total = strategy.combine(losses, [model.theta])
    torch.testing.assert_close(total, losses["click"] + losses["conversion"])
    total.backward()
    torch.testing.assert_close(model.own.grad, torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]))


def test_cagrad_with_c_zero_is_the_mean_gradient() -> None:
    torch.testing.assert_close(step_gradient("cagrad", CONFLICT, c=0.0), CONFLICT.mean(0))


def test_cagrad_improves_the_worst_task_within_its_ball() -> None:
    grads = torch.tensor([[3.0, 0.2, 0.0], [-1.0, 1.0, 0.5]])
    mean = grads.mean(0)
    for c in (0.2, 0.5, 0.9):
        d = step_gradient("cagrad", grads, c=c)
        assert float((d - mean).norm()) <= c * float(mean.norm()) + 1e-4
        assert float((grads @ d).min()) > float((grads @ mean).min())  # the worst-off task gains
    # the dual weights minimise F(w) = g_w . g_0 + c |g_0| |g_w| (a grid over the two-task simplex)
    gram, c = grads @ grads.T, 0.5

    def objective(w: torch.Tensor) -> torch.Tensor:
        gw = w @ grads
        return gw @ mean + c * mean.norm() * gw.norm()

    grid = min(float(objective(torch.tensor([a, 1 - a]))) for a in torch.linspace(0, 1, 2001).tolist())
    assert float(objective(cagrad_weights(gram, c))) == pytest.approx(grid, abs=1e-3)


def test_metabalance_scales_an_auxiliary_gradient_toward_the_main_tasks_norm() -> None:
    grads = torch.tensor([[1.0, 0.0, 0.0], [0.0, 10.0, 0.0]])  # main click |g| = 1, auxiliary |g| = 10
    full = step_gradient("metabalance", grads, main="click", relax=1.0)
    torch.testing.assert_close(full, torch.tensor([1.0, 1.0, 0.0]))  # auxiliary brought to norm 1
    half = step_gradient("metabalance", grads, main="click", relax=0.5)
    torch.testing.assert_close(half, torch.tensor([1.0, 5.5, 0.0]))  # 0.5 * 1 + 0.5 * 10
    small = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.1, 0.0]])  # a small auxiliary gradient is scaled up
    torch.testing.assert_close(step_gradient("metabalance", small, main="click", relax=1.0),
                               torch.tensor([1.0, 1.0, 0.0]))
    with pytest.raises(WeightingConfigError, match="main task 'buy'"):
        create_weighting("metabalance", TASKS, main="buy")


def test_metabalance_averages_the_norms_over_steps_and_keeps_them_in_its_state() -> None:
    strategy = create_weighting("metabalance", TASKS, relax=1.0, beta=0.5)
    model = Linear()
    for aux in (10.0, 2.0):
        strategy.combine(model.losses(torch.tensor([[1.0, 0, 0], [0, aux, 0]])), [model.theta])
    assert strategy.current_weights()["conversion"] == pytest.approx(1 / 6)  # m_aux = 0.5 * 10 + 0.5 * 2
    restored = create_weighting("metabalance", TASKS, relax=1.0, beta=0.5)
    restored.load_state_dict(strategy.state_dict())
    assert torch.equal(restored.norms, strategy.norms) and restored.has_norms


@pytest.mark.parametrize(("name", "options"), [("pcgrad", {}), ("cagrad", {"c": 0.5}),
                                               ("metabalance", {"relax": 0.7}), ("gradcraft", {})])
def test_ranks_applying_a_strategy_step_exactly_as_one_process(name: str, options: dict[str, float],
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Three simulated ranks, each with its own share of the step's gradients (their mean is the step's):
    the mean over ranks of their surrogate gradients (what DDP applies) is the one-process step."""
    torch.manual_seed(0)
    per_rank = torch.randn(3, 2, 4)  # [rank, task, P]
    per_rank[:, 1] -= 2 * per_rank[:, 0]  # make the tasks conflict
    want = step_gradient(name, per_rank.mean(0), **options)
    total = per_rank.flatten(1).sum(0)  # what the all-reduce returns: the sum of the ranks' [T*P]

    def all_reduce_(tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
        return tensor.copy_(total.view_as(tensor))

    monkeypatch.setattr(collectives, "world_size", lambda: 3)
    monkeypatch.setattr(collectives, "all_reduce_", all_reduce_)
    got = torch.stack([step_gradient(name, per_rank[r], **options) for r in range(3)]).mean(0)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["pcgrad", "cagrad", "metabalance", "gradcraft"])
def test_the_trainer_applies_a_gradient_strategy(name: str) -> None:
    data = tiny_dataset(rows=300, seed=7)
    torch.manual_seed(0)
    model = create_model("mmoe", data.schema, embedding_dim=4, expert_sizes=(16,), tower_sizes=(8,))
    config = TrainConfig(epochs=2, batch_size=32, weighting=name, device="cpu", prefetch=0)
    result = Trainer(model, config, log=lambda _: None).fit(data)
    losses = [sum(row["train_loss"].values()) for row in result.history]
    assert losses[-1] < losses[0]
    if name == "metabalance":
        assert result.history[-1]["task_weights"]["click"] == 1.0
        assert result.history[-1]["task_weights"]["conversion"] != 1.0


def test_a_model_that_shares_nothing_is_refused() -> None:
    data = tiny_dataset()
    model = create_model("single_task", data.schema, embedding_dim=4)
    strategy = create_weighting("pcgrad", data.schema.task_names)
    losses = {t: p.sum() for t, p in zip(data.schema.task_names, model.parameters(), strict=False)}
    with pytest.raises(WeightingConfigError, match="pcgrad needs a model with shared parameters"):
        strategy.combine(losses, model.shared_parameters())


def test_gradcraft_aligns_magnitudes_to_the_largest_norm_where_nothing_conflicts() -> None:
    grads = torch.tensor([[3.0, 4.0, 0.0], [0.0, 0.5, 0.0]])  # norms 5 and 0.5, no conflict
    torch.testing.assert_close(gradcraft_project(grads), torch.tensor([[3.0, 4.0, 0.0], [0.0, 5.0, 0.0]]))
    torch.testing.assert_close(step_gradient("gradcraft", grads), torch.tensor([3.0, 9.0, 0.0]))


def test_gradcraft_resolves_every_conflict_at_once_where_pcgrad_leaves_the_sum_in_conflict() -> None:
    """Three tasks whose gradients conflict pairwise: PCGrad's sum can still oppose a task; GradCraft's
    crafted gradients oppose no task, so neither does their sum (global direction balance)."""
    torch.manual_seed(0)
    worst_pcgrad = 0.0
    for _ in range(200):
        grads = torch.randn(3, 4) * torch.rand(3, 1) * 10
        aligned = grads * (grads.norm(dim=1).max() / grads.norm(dim=1)).unsqueeze(1)
        crafted = gradcraft_project(grads)
        tolerance = 1e-4 * float(aligned.norm(dim=1).max()) ** 2
        assert float((crafted @ aligned.T).min()) >= -tolerance  # no crafted g'_i opposes any task
        assert float((crafted.sum(0) @ grads.T).min()) >= -tolerance
        worst_pcgrad = min(worst_pcgrad, float((pcgrad_project(grads).sum(0) @ grads.T).min()))
    assert worst_pcgrad < -1e-3  # PCGrad, one conflict at a time, does not guarantee it


def test_gradcraft_projects_off_the_span_of_all_conflicting_gradients() -> None:
    grads = torch.tensor([[1.0, 1.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]]) * torch.tensor([[1.0], [3 ** 0.5],
                                                                                              [3 ** 0.5]])
    crafted = gradcraft_project(grads)  # equal norms; task 0 conflicts with 1 and 2: keep only the z part
    torch.testing.assert_close(crafted[0], torch.tensor([0.0, 0.0, 1.0]))
    # task 1 conflicts with task 0 only; projected off it, it would oppose task 2: projected off both
    torch.testing.assert_close(crafted[1] @ grads[[0, 2]].T, torch.zeros(2), atol=1e-6, rtol=0)
    assert float(crafted[1] @ grads[1]) > 0
