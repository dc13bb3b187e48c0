"""DCRNN: the Cross-RNN cell by hand, tied weights, what each sharing mode shares, the task chain, objectives."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fakes import tiny_dataset
from mtrec.data.batches import gather_batch
from mtrec.models import ModelConfigError, create_model
from mtrec.models.dcrnn import DCRNN
from mtrec.nn.cross import CrossRNNCell, CrossTaskPart
from mtrec.objectives import create_objective
from mtrec.training.config import TrainConfig
from mtrec.training.trainer import Trainer

LN3 = math.log(3.0)  # sigmoid(ln 3) = 0.75 exactly


@pytest.fixture(autouse=True, scope="module")
def one_thread():  # type: ignore[no-untyped-def]
    """Tiny tensors: one thread avoids OpenMP hand-offs (the field GRU's small steps slow 50x on a busy
    machine with two)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def data():  # type: ignore[no-untyped-def]
    return tiny_dataset(rows=200, seed=3)


def build(schema, **options) -> DCRNN:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    model = create_model("dcrnn", schema, embedding_dim=4, deep_sizes=(16,), deep_task_sizes=(8,),
                         tower_sizes=(8,), **options)
    assert isinstance(model, DCRNN)
    return model


def set_cell(cell: CrossRNNCell, weight: list[list[float]] | None, bias: list[float],
             gate_x: list[list[float]] | None = None, gate_h: list[list[float]] | None = None) -> None:
    """Fix a one-cell, width-2 cell's parameters (weights in ``h @ W`` orientation; gate parts default 0)."""
    with torch.no_grad():
        if weight is not None:
            assert cell.weight is not None
            cell.weight.copy_(torch.tensor([weight]))
        cell.bias.copy_(torch.tensor([[bias]]))
        cell.gate_x.copy_(torch.tensor([gate_x or [[0.0, 0.0], [0.0, 0.0]]]))
        cell.gate_h.copy_(torch.tensor([gate_h or [[0.0, 0.0], [0.0, 0.0]]]))
        cell.gate_bias.zero_()


X0 = torch.tensor([[1.0, 2.0]])  # [B=1, D=2]
W = [[1.0, 1.0], [0.0, 1.0]]  # h @ W = [h1, h1 + h2]
B = [0.0, 1.0]


# ---- the cell, by hand -------------------------------------------------------------------------------

def test_cell_two_steps_by_hand_with_a_half_open_gate() -> None:
    cell = CrossRNNCell(2)
    set_cell(cell, W, B)  # gate logits 0: g = 1/2
    # step 1: h0 = x0 = [1, 2]; W h0 + b = [1, 4]; c1 = x0 * [1, 4] + h0 = [2, 10]; h1 = (c1 + h0) / 2
    torch.testing.assert_close(cell(X0, 1), torch.tensor([[[1.5, 6.0]]]))
    # step 2: W h1 + b = [1.5, 8.5]; c2 = [1.5, 17] + [1.5, 6] = [3, 23]; h2 = ([3, 23] + [1.5, 6]) / 2
    torch.testing.assert_close(cell(X0, 2), torch.tensor([[[2.25, 14.5]]]))
    torch.testing.assert_close(cell(X0, 0), X0.unsqueeze(0))  # h_0 = x0


def test_cell_gate_reads_x0_and_the_state() -> None:
    cell = CrossRNNCell(2)
    # gate logits = x0 W_gx + h W_gh = [0, 2 * ln3 / 2] + [1 * ln3, 0] = [ln3, ln3]: g = [0.75, 0.75]
    set_cell(cell, W, B, gate_x=[[0.0, 0.0], [0.0, LN3 / 2]], gate_h=[[LN3, 0.0], [0.0, 0.0]])
    # h1 = h0 + g * x0 * (W h0 + b) = [1, 2] + 0.75 * [1, 8]
    torch.testing.assert_close(cell(X0, 1), torch.tensor([[[1.75, 8.0]]]))


def test_cell_task_part_gate_bias_and_adapter_by_hand() -> None:
    cell = CrossRNNCell(2)
    set_cell(cell, W, B, gate_x=[[0.0, 0.0], [0.0, LN3 / 2]])  # gate logits [0, ln3] before the part
    part = CrossTaskPart(2, adapter_rank=1)
    assert part.adapter_down is not None and part.adapter_up is not None
    with torch.no_grad():
        part.gate_bias.copy_(torch.tensor([-LN3, 0.0]))  # g = [sigmoid(-ln3), 0.75] = [0.25, 0.75]
        part.adapter_down.copy_(torch.tensor([[1.0], [0.0]]))
        part.adapter_up.copy_(torch.tensor([[0.0, 1.0]]))  # adapter: h A B = [0, h_1] = [0, 1]
    # W h0 + b + adapter = [1, 4] + [0, 1] = [1, 5]; h1 = [1, 2] + [0.25, 0.75] * [1, 10]
    torch.testing.assert_close(cell(X0, 1, part=part), torch.tensor([[[1.25, 9.5]]]))


def test_cell_low_rank_weight_by_hand() -> None:
    cell = CrossRNNCell(2, rank=1)
    assert cell.weight is None and cell.down is not None and cell.up is not None
    set_cell(cell, None, B)
    with torch.no_grad():
        cell.down.copy_(torch.tensor([[[1.0], [0.0]]]))
        cell.up.copy_(torch.tensor([[[1.0, 2.0]]]))  # W = U V^T: h @ W = [h_0, 2 h_0]
    # W h0 + b = [1, 3]; h1 = [1, 2] + 0.5 * [1, 6]
    torch.testing.assert_close(cell(X0, 1), torch.tensor([[[1.5, 5.0]]]))
    assert sum(p.numel() for p in cell.parameters()) == 2 * 2 * 1 + 2 + 2 * 4 + 2


def test_cell_rejects_bad_shapes_and_ranks() -> None:
    with pytest.raises(ValueError, match="rank"):
        CrossRNNCell(4, rank=5)
    with pytest.raises(ValueError, match=r"expected \[B, 4\] or \[2, B, 4\]"):
        CrossRNNCell(4, n=2)(torch.zeros(3, 1, 4), 1)


def test_batched_cells_equal_separate_cells() -> None:
    torch.manual_seed(0)
    batched = CrossRNNCell(6, n=3)
    x0 = torch.randn(5, 6)
    out = batched(x0, 3)  # [3, 5, 6]
    for i in range(3):
        single = CrossRNNCell(6)
        with torch.no_grad():
            for (_, p), (_, q) in zip(single.named_parameters(), batched.named_parameters(), strict=True):
                p.copy_(q[i : i + 1])
        torch.testing.assert_close(single(x0, 3)[0], out[i])


# ---- tied weights ------------------------------------------------------------------------------------

def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("sharing", ["partial", "hard", "none"])
def test_parameter_count_does_not_depend_on_the_number_of_steps(sharing: str, data) -> None:  # type: ignore[no-untyped-def]
    shallow = build(data.schema, sharing=sharing, shared_steps=1, task_steps=1)
    deep = build(data.schema, sharing=sharing, shared_steps=5, task_steps=3)
    assert n_params(shallow) == n_params(deep)
    batch = gather_batch(data, np.arange(16))
    deep.load_state_dict(shallow.state_dict())  # same weights, more steps: a different function
    assert not torch.allclose(shallow(batch.features)["click"], deep(batch.features)["click"])


# ---- what each sharing mode shares -------------------------------------------------------------------

def cross_counts(model: DCRNN) -> tuple[int, int]:
    """(shared, total) parameter counts of the cross branch."""
    return sum(p.numel() for p in model.cross.shared_parameters()), n_params(model.cross)


def test_sharing_modes_share_exactly_what_is_documented(data) -> None:  # type: ignore[no-untyped-def]
    schema = data.schema
    d, n_tasks, adapter = 4, len(schema.task_names), 2
    dim = (len(schema.sparse) + len(schema.dense) + len(schema.sequences)) * d  # D = F d
    cell = dim * dim + dim + 2 * dim * dim + dim  # W, b, W_g = [W_gx; W_gh], b_g
    part = dim + 2 * dim * adapter  # gate-bias offset, adapter A and B
    partial = build(schema, sharing="partial", adapter_rank=adapter)
    assert cross_counts(partial) == (cell, cell + n_tasks * part)
    assert cross_counts(build(schema, sharing="partial", adapter_rank=adapter, task_norm=True)) == (
        cell, cell + n_tasks * (part + 2 * dim))
    assert cross_counts(build(schema, sharing="hard")) == (cell, cell)
    assert cross_counts(build(schema, sharing="none")) == (0, n_tasks * cell)
    low = build(schema, sharing="partial", rank=3, adapter_rank=0)
    low_cell = 2 * dim * 3 + dim + 2 * dim * dim + dim
    assert cross_counts(low) == (low_cell, low_cell + n_tasks * dim)
    # the rest of the model is the same in every mode: embeddings, deep branch, towers
    rest = {s: n_params(m) - n_params(m.cross) for s, m in
            (("partial", partial), ("hard", build(schema, sharing="hard")), ("none", build(schema, sharing="none")))}
    assert len(set(rest.values())) == 1, rest
    shared_ids = {id(p) for p in partial.shared_parameters()}
    assert all(id(p) in shared_ids for p in partial.embedding.parameters())
    assert not any(id(p) in shared_ids for p in partial.towers.parameters())


def grads_by_task(model: DCRNN, batch, task: str) -> dict[str, torch.Tensor]:  # type: ignore[no-untyped-def]
    """The gradient of one task's summed logits on each cross-branch parameter (zeros where unused)."""
    model.zero_grad()
    model(batch.features)[task].sum().backward()
    return {
        n: (p.grad if p.grad is not None else torch.zeros_like(p)).clone() for n, p in model.cross.named_parameters()
    }


def test_which_task_reaches_which_cross_parameters(data) -> None:  # type: ignore[no-untyped-def]
    batch = gather_batch(data, np.arange(32))
    # partial: the cell serves both; click's part also shapes conversion (the chain); conversion's part
    # is conversion's alone
    partial = build(data.schema, sharing="partial")
    click, conv = grads_by_task(partial, batch, "click"), grads_by_task(partial, batch, "conversion")
    for name in ("cell.weight", "cell.gate_h", "parts.0.gate_bias", "parts.0.adapter_up"):
        assert click[name].abs().sum() > 0 and conv[name].abs().sum() > 0, name
    for name in ("parts.1.gate_bias", "parts.1.adapter_down", "parts.1.adapter_up"):
        assert click[name].abs().sum() == 0 and conv[name].abs().sum() > 0, name
    # none: task k reaches only slice k of the batched cells
    none = build(data.schema, sharing="none")
    click, conv = grads_by_task(none, batch, "click"), grads_by_task(none, batch, "conversion")
    for name in ("cell.weight", "cell.gate_x", "cell.bias"):
        assert click[name][0].abs().sum() > 0 and click[name][1].abs().sum() == 0, name
        assert conv[name][1].abs().sum() > 0 and conv[name][0].abs().sum() == 0, name
    # hard: one cell, every parameter reached by both tasks
    hard = build(data.schema, sharing="hard")
    click, conv = grads_by_task(hard, batch, "click"), grads_by_task(hard, batch, "conversion")
    assert all(click[n].abs().sum() > 0 and conv[n].abs().sum() > 0 for n in click)


def perturbed_outputs(model: DCRNN, batch, parameter: torch.Tensor) -> tuple[dict, dict]:  # type: ignore[no-untyped-def]
    model.eval()
    with torch.no_grad():
        before = model(batch.features)
        parameter.add_(0.5 * torch.randn_like(parameter))
        after = model(batch.features)
    return before, after


@pytest.mark.parametrize("axis", ["depth", "fields"])
def test_conversion_state_starts_from_the_click_state_only_under_partial(axis: str, data) -> None:  # type: ignore[no-untyped-def]
    batch = gather_batch(data, np.arange(32))
    partial = build(data.schema, sharing="partial", cross_axis=axis)
    click_part = partial.cross.parts[0].adapter_up if axis == "depth" else partial.cross.task_layers[0].gru.weight_hh_l0  # type: ignore[union-attr]
    before, after = perturbed_outputs(partial, batch, click_part)
    assert not torch.allclose(before["click"], after["click"])
    assert not torch.allclose(before["conversion"], after["conversion"])  # carried through the chain
    conv_part = partial.cross.parts[1].adapter_up if axis == "depth" else partial.cross.task_layers[1].gru.weight_hh_l0  # type: ignore[union-attr]
    before, after = perturbed_outputs(partial, batch, conv_part)
    torch.testing.assert_close(before["click"], after["click"], rtol=0, atol=0)  # no way back
    assert not torch.allclose(before["conversion"], after["conversion"])

    none = build(data.schema, sharing="none", cross_axis=axis)
    click_cell = none.cross.cell.weight[0] if axis == "depth" else none.cross.task_layers[0].gru.weight_hh_l1  # type: ignore[union-attr,index]
    before, after = perturbed_outputs(none, batch, click_cell)
    assert not torch.allclose(before["click"], after["click"])
    torch.testing.assert_close(before["conversion"], after["conversion"], rtol=0, atol=0)


@pytest.mark.parametrize("axis", ["depth", "fields"])
def test_without_state_passing_the_click_part_never_reaches_conversion(axis: str, data) -> None:  # type: ignore[no-untyped-def]
    """``pass_state=False`` (the ablation of the click-to-consumption chain): each task continues from the
    shared state, so click's own cross parameters no longer move conversion's output."""
    batch = gather_batch(data, np.arange(32))
    model = build(data.schema, sharing="partial", cross_axis=axis, pass_state=False)
    click_part = model.cross.parts[0].adapter_up if axis == "depth" else model.cross.task_layers[0].gru.weight_hh_l0  # type: ignore[union-attr]
    before, after = perturbed_outputs(model, batch, click_part)
    assert not torch.allclose(before["click"], after["click"])
    torch.testing.assert_close(before["conversion"], after["conversion"], rtol=0, atol=0)


def test_hard_sharing_feeds_every_tower_the_same_cross_state(data) -> None:  # type: ignore[no-untyped-def]
    batch = gather_batch(data, np.arange(8))
    for axis in ("depth", "fields"):
        hard = build(data.schema, sharing="hard", cross_axis=axis)
        fields = hard.embedding.all_fields(batch.features)
        states = hard.cross(fields.flatten(1) if axis == "depth" else fields)  # [T, B, H]
        torch.testing.assert_close(states[0], states[1], rtol=0, atol=0)


# ---- objectives and training ------------------------------------------------------------------------

@pytest.mark.parametrize(("options", "objective"), [({}, "masked"), ({}, "entire_space"),
                                                    ({"cross_axis": "fields"}, "masked"),
                                                    ({"cross_axis": "fields", "sharing": "none"}, "masked")])
def test_trains_with_each_objective_and_axis(options: dict, objective: str, data) -> None:  # type: ignore[type-arg,no-untyped-def]
    model = build(data.schema, **options)
    loss_of = create_objective(objective, data.schema)
    batch = gather_batch(data, data.splits["train"])
    with torch.no_grad():
        before = sum(loss_of.losses(model(batch.features), batch).values())
    result = Trainer(model, TrainConfig(epochs=3, batch_size=32, lr=3e-3, seed=0, prefetch=0, device="cpu",
                                        num_threads=1, objective=objective), log=lambda _: None).fit(data)
    with torch.no_grad():
        after = sum(loss_of.losses(model(batch.features), batch).values())
    assert float(after) < float(before) - 1e-3  # type: ignore[arg-type]
    assert set(result.test) == {"click", "conversion"}
    assert all(0.0 <= m["auc"] <= 1.0 for m in result.test.values())


@pytest.mark.parametrize(("options", "message"), [
    ({"sharing": "soft"}, "sharing: must be one of 'partial', 'hard' or 'none', got 'soft'"),
    ({"cross_axis": "rows"}, "cross_axis: must be one of 'depth' or 'fields', got 'rows'"),
    ({"task_steps": 0}, "task_steps >= 1"),
    ({"shared_steps": 0, "task_steps": 0, "sharing": "hard"}, "at least one step"),
    ({"rank": 10_000}, "rank must be"),
])
def test_bad_options_are_named(options: dict, message: str, data) -> None:  # type: ignore[type-arg,no-untyped-def]
    with pytest.raises(ModelConfigError, match=message):
        build(data.schema, **options)
