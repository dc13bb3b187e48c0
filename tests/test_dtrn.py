"""DTRN and its blocks: hypernetwork LayerNorms, conditional transformer, target attention, SENet."""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest
import torch

from fakes import default_objective, tiny_dataset, tiny_schema
from mtrec.data.batches import Batch, gather_batch
from mtrec.data.dataset import PreparedDataset
from mtrec.features.schema import DatasetSchema, SequenceFeature, TaskSpec
from mtrec.models import ModelConfigError, create_model
from mtrec.models.dtrn import DTRN
from mtrec.nn.hyper import NormHypernetwork
from mtrec.nn.senet import SENet
from mtrec.nn.sequence import (
    LENGTH_CHUNKS,
    MultiHeadSelfAttention,
    TargetAttentionPooling,
    ValidPositions,
    masked_softmax,
)


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def build(schema: DatasetSchema, **options: object) -> DTRN:
    torch.manual_seed(0)
    model = create_model("dtrn", schema, **options)
    assert isinstance(model, DTRN)
    return model


@pytest.fixture
def batch() -> Batch:
    ds = tiny_dataset()
    return gather_batch(ds, ds.splits["train"][:48])


# ---- blocks --------------------------------------------------------------------------------------


def test_hypernetwork_gives_each_task_behaviour_pair_its_own_layernorm() -> None:
    torch.manual_seed(0)
    hyper = NormHypernetwork(num_tasks=3, num_behaviours=2, dim=16, num_norms=4)
    gamma, beta = hyper()
    assert gamma.shape == beta.shape == (3, 2, 4, 16)
    pairs = [(k, m) for k in range(3) for m in range(2)]
    for a, b in itertools.combinations(pairs, 2):
        assert not torch.allclose(gamma[a], gamma[b]), (a, b)
        assert not torch.allclose(beta[a], beta[b]), (a, b)


def test_hypernetwork_without_hidden_layer_reads_the_embeddings_directly() -> None:
    hyper = NormHypernetwork(2, 2, dim=4, num_norms=1, task_dim=3, behaviour_dim=5, hidden_sizes=())
    gamma, _ = hyper()
    z = torch.cat([hyper.task[1], hyper.behaviour[0]])  # [8]
    torch.testing.assert_close(gamma[1, 0, 0], 1 + hyper.scale.weight @ z)


def test_valid_positions_pack_unpack_and_pool_only_the_valid_rows() -> None:
    mask = torch.tensor([[True, True, False], [False, False, False], [True, False, False]])  # [S=3, L=3]
    valid = ValidPositions.of(mask)
    assert valid.flat.tolist() == [0, 1, 6] and valid.sequence.tolist() == [0, 0, 2]
    x = torch.randn(2, 3, 3, 4)  # [K, S, L, d]
    rows = valid.pack(x)  # [K, V, d]
    torch.testing.assert_close(rows, x[:, mask])
    torch.testing.assert_close(valid.unpack(rows), x * mask[..., None])  # padding comes back as zeros
    torch.testing.assert_close(valid.sum_per_sequence(rows), (x * mask[..., None]).sum(2))


def test_pooling_of_valid_rows_equals_padded_pooling() -> None:
    torch.manual_seed(0)
    pool = TargetAttentionPooling(4)
    mask = torch.rand(5, 6) > 0.5
    mask[1] = False  # one empty history
    keys, target = torch.randn(2, 5, 6, 4), torch.randn(5, 4)
    valid = ValidPositions.of(mask)
    pooled, weights = pool.pool_rows(valid.pack(keys), valid, target)
    padded_pooled, padded_weights = pool(keys, mask, target)
    torch.testing.assert_close(pooled, padded_pooled)
    torch.testing.assert_close(weights, padded_weights)


def test_masked_softmax_gives_padding_zero_and_empty_rows_zero_without_nan() -> None:
    scores = torch.randn(3, 5, requires_grad=True)
    mask = torch.tensor([[True, True, False, True, False], [False] * 5, [True] * 5])
    w = masked_softmax(scores, mask)
    assert torch.all(w[~mask] == 0)
    torch.testing.assert_close(w.sum(-1), torch.tensor([1.0, 0.0, 1.0]))
    (w * torch.randn(3, 5)).sum().backward()
    assert scores.grad is not None and torch.isfinite(scores.grad).all()


def test_target_attention_puts_exactly_zero_weight_on_padding() -> None:
    torch.manual_seed(0)
    pool = TargetAttentionPooling(8)
    keys = torch.randn(4, 3, 7, 8) * 5  # large scores: padding must still get exactly 0
    lengths = torch.tensor([0, 1, 4, 7]).view(4, 1, 1)
    mask = (torch.arange(7).view(1, 1, 7) < lengths).expand(4, 3, 7)
    pooled, weights = pool(keys, mask, torch.randn(4, 3, 8))
    assert weights.shape == (4, 3, 7) and pooled.shape == (4, 3, 8)
    assert torch.all(weights[~mask] == 0)
    torch.testing.assert_close(weights[1:].sum(-1), torch.ones(3, 3))
    assert torch.all(pooled[0] == 0)  # an empty history pools to zero


def test_self_attention_ignores_what_padding_positions_hold() -> None:
    torch.manual_seed(0)
    attention = MultiHeadSelfAttention(8, heads=2)
    x = torch.randn(2, 6, 8)
    mask = torch.tensor([[True] * 4 + [False] * 2, [True] * 6])
    changed = x.clone()
    changed[0, 4:] = torch.randn(2, 8) * 100
    torch.testing.assert_close(attention(x, mask)[0, :4], attention(changed, mask)[0, :4])


@pytest.mark.parametrize("chunks", [2, 4, 7])
def test_self_attention_by_length_groups_equals_the_padded_pass(chunks: int) -> None:
    """valid_outputs cuts histories into length groups: the outputs (and gradients) at the valid positions
    are those of one padded pass, for holes in a history, empty histories and several conditions (K')."""
    torch.manual_seed(0)
    attention = MultiHeadSelfAttention(8, heads=2)
    x = torch.randn(3, 11, 9, 8, requires_grad=True)  # [K', S, L, d]
    mask = torch.rand(11, 9) < torch.linspace(0.05, 0.9, 11).unsqueeze(1)  # lengths vary, holes included
    mask[0] = mask[5] = False  # empty histories
    mask[3] = True  # a full one
    valid = ValidPositions.of(mask)
    grouped = attention.valid_outputs(x, valid, chunks=chunks)
    (grad_grouped,) = torch.autograd.grad(grouped.square().sum(), x)
    padded = attention.valid_outputs(x, valid, chunks=1)
    (grad_padded,) = torch.autograd.grad(padded.square().sum(), x)
    torch.testing.assert_close(padded, valid.pack(attention(x, mask.expand(3, -1, -1))))
    torch.testing.assert_close(grouped, padded, rtol=0, atol=1e-6)
    torch.testing.assert_close(grad_grouped, grad_padded, rtol=0, atol=1e-5)


def test_senet_field_mode_scales_whole_fields_and_bit_mode_each_element() -> None:
    torch.manual_seed(0)
    x = torch.randn(3, 5, 4, 6)  # [n, B, F, d]
    field = SENet(3, num_fields=4, dim=6, mode="field")
    w = field.weights(x)
    assert w.shape == (3, 5, 4, 1) and torch.all((w > 0) & (w < 1))
    torch.testing.assert_close(field(x), x * w)
    bit = SENet(3, num_fields=4, dim=6, mode="bit")
    assert bit.weights(x).shape == (3, 5, 4, 6)
    assert bit(x).shape == x.shape
    with pytest.raises(ValueError, match="mode"):
        SENet(1, 4, 6, mode="channel")


# ---- the model -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "options",
    [{}, {"backbone": "mmoe"}, {"backbone": "ple"}, {"backbone": "ple", "num_levels": 1}, {"trm": "bit"},
     {"use_tim": False}, {"use_trm": False},
     {"use_tim": False, "use_trm": False}, {"num_layers": 2, "heads": 4, "hyper_sizes": ()}],
)
def test_outputs_one_finite_logit_per_row_and_task(batch: Batch, options: dict[str, object]) -> None:
    model = build(tiny_schema(), **options)
    out = model(batch.features)
    assert set(out) == {"click", "conversion"}
    for logits in out.values():
        assert logits.shape == (len(batch),) and torch.isfinite(logits).all()
    assert not torch.allclose(out["click"], out["conversion"])


def test_interests_per_task_differ_with_tim_and_are_shared_without(batch: Batch) -> None:
    u, w = build(tiny_schema()).interests(batch.features)
    assert u.shape == (48, 2, 2, 16) and w.shape == (48, 2, 2, 6)  # [B, K, M, d], [B, K, M, L]
    assert not torch.allclose(u[:, 0], u[:, 1])
    u_shared, _ = build(tiny_schema(), use_tim=False).interests(batch.features)
    assert u_shared.shape == (48, 1, 2, 16)


def test_batched_pairs_equal_encoding_each_task_behaviour_pair_alone(batch: Batch) -> None:
    model = build(tiny_schema(), num_layers=2)
    tim = model.tim
    assert tim is not None
    model.eval()
    with torch.no_grad():
        u, _ = model.interests(batch.features)
        embedded = model.embedding.embed(batch.features)
        history, mask = embedded.history, embedded.mask  # [B, M, L, d], [B, M, L]
        assert history is not None and mask is not None
        gamma, beta = tim.norm_parameters()  # [K, M, N, d]
        target = tim.targets(embedded.sparse)  # [B, M, d]
        for k, m in itertools.product(range(2), range(2)):
            pair = gamma[k, m][None, None], beta[k, m][None, None]  # [1, 1, N, d]: one condition
            rows, valid = tim.encoder(history[:, m], mask[:, m], *pair)  # [1, V, d]
            alone, _ = tim.pooling(valid.unpack(rows)[0], mask[:, m], target[:, m])  # padded pooling
            torch.testing.assert_close(u[:, k, m], alone, rtol=1e-5, atol=1e-6)


def test_all_pairs_are_one_batched_pass_with_the_first_attention_once_per_history(batch: Batch) -> None:
    model = build(tiny_schema(), num_layers=2)
    assert model.tim is not None
    shapes: list[tuple[int, ...]] = []
    for layer in model.tim.encoder.layers:
        layer.attention.register_forward_hook(lambda _m, args, _out: shapes.append(tuple(args[0].shape)))
    model(batch.features)
    # per layer one call per length group of the B*M = 96 histories (not per task/behaviour pair),
    # at most L = 6 long; layer 0 runs before the per-pair norms (K' = 1), layer 1 after them (K' = 2)
    conditions = [k for k, *_ in shapes]
    first = conditions.count(1)
    assert 1 <= first <= LENGTH_CHUNKS and conditions == [1] * first + [2] * (len(shapes) - first)
    for layer in (shapes[:first], shapes[first:]):
        assert sum(s for _, s, _, _ in layer) <= 96 and all(length <= 6 and d == 16 for *_, length, d in layer)


def test_padding_positions_get_zero_target_attention_weight(batch: Batch) -> None:
    _, weights = build(tiny_schema()).interests(batch.features)  # [B, K, M, L]
    histories = batch.features.sequences
    padding = torch.stack([histories["hist_click"], histories["hist_buy"]], 1) == 0  # [B, M, L]
    assert padding.any() and (~padding).any()
    assert torch.all(weights.permute(1, 0, 2, 3)[:, padding] == 0)
    sums = weights.sum(-1)  # [B, K, M]: 1 for a history with items, 0 for an empty one
    has_items = (~padding).any(-1)  # [B, M]
    torch.testing.assert_close(sums, has_items.unsqueeze(1).expand_as(sums).float())


@pytest.mark.parametrize(
    "options", [{}, {"backbone": "mmoe", "trm": "bit"}, {"backbone": "ple"}, {"use_tim": False}]
)
def test_all_padding_histories_give_finite_outputs_and_gradients(
    batch: Batch, options: dict[str, object]
) -> None:
    model = build(tiny_schema(), **options)
    no_items = {k: torch.zeros_like(v) for k, v in batch.features.sequences.items()}
    empty = dataclasses.replace(batch, features=dataclasses.replace(batch.features, sequences=no_items))
    out = model(empty.features)
    assert all(torch.isfinite(v).all() for v in out.values())
    u, _ = model.interests(empty.features)
    assert torch.all(u == 0)
    loss = sum(default_objective(model).losses(out, empty).values())
    assert isinstance(loss, torch.Tensor)
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def with_extra_task(schema: DatasetSchema) -> DatasetSchema:
    return dataclasses.replace(schema, tasks=(*schema.tasks, TaskSpec("stay")))


def with_extra_sequence(schema: DatasetSchema, behaviour: str) -> DatasetSchema:
    extra = SequenceFeature(f"hist_{behaviour}_2", 40, 6, behaviour, table="item_id", target="item_id")
    return dataclasses.replace(schema, sequences=(*schema.sequences, extra))


@pytest.mark.parametrize("task_dim, behaviour_dim", [(8, 8), (5, 3)])
def test_a_task_or_behaviour_adds_only_its_embedding_to_the_interest_module(
    task_dim: int, behaviour_dim: int
) -> None:
    schema = tiny_schema()
    options = {"task_dim": task_dim, "behaviour_dim": behaviour_dim}
    base = build(schema, **options)
    more_tasks = build(with_extra_task(schema), **options)
    new_behaviour = build(with_extra_sequence(schema, "cart"), **options)
    known_behaviour = build(with_extra_sequence(schema, "click"), **options)
    assert all(m.tim is not None for m in (base, more_tasks, new_behaviour, known_behaviour))
    tim = n_params(base.tim)  # type: ignore[arg-type]
    assert n_params(more_tasks.tim) - tim == task_dim  # type: ignore[arg-type]
    assert n_params(new_behaviour.tim) - tim == behaviour_dim  # type: ignore[arg-type]
    assert n_params(known_behaviour.tim) == tim  # type: ignore[arg-type]
    # The shared bottom (tables + TIM) grows by the embeddings only; the rest is per-task heads.
    bottom = n_params(base.embedding) + tim
    assert n_params(more_tasks.embedding) + n_params(more_tasks.tim) - bottom == task_dim  # type: ignore[arg-type]


def test_histories_of_different_lengths_are_padded_together() -> None:
    schema = tiny_schema()
    short = SequenceFeature("hist_cart", 40, 3, "cart", table="item_id", target="item_id")
    schema = dataclasses.replace(schema, sequences=(*schema.sequences, short))
    ds = tiny_dataset()
    rng = np.random.default_rng(1)
    sequences = {**ds.sequences, "hist_cart": rng.integers(0, 40, (ds.num_rows, 3))}
    ds = PreparedDataset(schema, ds.sparse, ds.dense, sequences, ds.labels, ds.splits)
    b = gather_batch(ds, ds.splits["train"][:16])
    _, weights = build(schema).interests(b.features)
    assert weights.shape == (16, 2, 3, 6)
    assert torch.all(weights[:, :, 2, 3:] == 0)  # the padded tail of the short history


def test_runs_without_sequence_features(batch: Batch) -> None:
    schema = dataclasses.replace(tiny_schema(), sequences=())
    model = build(schema, backbone="mmoe")
    assert model.tim is None
    out = model(dataclasses.replace(batch.features, sequences={}))
    assert out["click"].shape == (48,)
    with pytest.raises(ModelConfigError, match="no sequence features"):
        model.interests(batch.features)


def test_a_history_without_target_uses_a_learned_query(batch: Batch) -> None:
    schema = tiny_schema()
    schema = dataclasses.replace(
        schema, sequences=(schema.sequences[0], dataclasses.replace(schema.sequences[1], target=""))
    )
    model = build(schema)
    assert model.tim is not None and model.tim.targets.query is not None
    assert torch.isfinite(model(batch.features)["click"]).all()


@pytest.mark.parametrize(
    "options, message",
    [({"backbone": "ple", "num_levels": 0}, "num_levels"), ({"backbone": "cross"}, "backbone"),
     ({"trm": "channel"}, "trm"), ({"heads": 3}, "multiple of heads"), ({"num_layers": 0}, "num_layers")],
)
def test_bad_options_are_refused_clearly(options: dict[str, object], message: str) -> None:
    with pytest.raises(ModelConfigError, match=message):
        create_model("dtrn", tiny_schema(), **options)


def test_a_few_optimizer_steps_lower_the_loss(batch: Batch) -> None:
    model = build(tiny_schema(), backbone="mmoe")
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)

    def loss() -> torch.Tensor:
        return torch.stack(list(default_objective(model).losses(model(batch.features), batch).values())).sum()

    first = loss().item()
    for _ in range(15):
        optimizer.zero_grad()
        loss().backward()
        optimizer.step()
    assert loss().item() < first * 0.9
