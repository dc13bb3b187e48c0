"""``sequence_pooling: mean | attention``: every model that reads the shared embedding block's pooled
histories takes the option, and DIN-style target attention behaves as documented (padding gets no weight,
equal scores give the mean, the pooled history depends on the candidate, groups stay apart, the split
first layer on the valid positions equals the unit on the concatenated input)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from fakes import default_objective, tiny_dataset, with_scenario
from mtrec.data.batches import gather_batch
from mtrec.features.inputs import Features
from mtrec.models import ModelConfigError, create_model, list_models, model_options
from mtrec.nn.embedding import FeatureEmbedding
from mtrec.nn.sequence import DINAttentionPooling, masked_softmax

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data():  # type: ignore[no-untyped-def]
    return with_scenario(tiny_dataset(rows=200, seed=2))  # scenario models need one


def reads_all_fields(name: str, data, monkeypatch: pytest.MonkeyPatch) -> bool:  # type: ignore[no-untyped-def]
    """Whether the model's forward pass calls ``FeatureEmbedding.all_fields``."""
    calls = []
    original = FeatureEmbedding.all_fields

    def spy(self: FeatureEmbedding, features: Features) -> torch.Tensor:
        calls.append(1)
        return original(self, features)

    monkeypatch.setattr(FeatureEmbedding, "all_fields", spy)
    with torch.no_grad():
        create_model(name, data.schema)(gather_batch(data, np.arange(8)).features)
    monkeypatch.setattr(FeatureEmbedding, "all_fields", original)
    return bool(calls)


@pytest.mark.parametrize("name", list_models())
def test_every_model_reading_pooled_histories_takes_attention_pooling(
    name: str, data, monkeypatch: pytest.MonkeyPatch  # type: ignore[no-untyped-def]
) -> None:
    if not reads_all_fields(name, data, monkeypatch):
        assert "sequence_pooling" not in model_options(name)  # a model with its own sequence module
        return
    assert model_options(name)["sequence_pooling"] == "mean"
    torch.manual_seed(0)
    model = create_model(name, data.schema, sequence_pooling="attention")
    assert model.embedding.attention is not None  # type: ignore[union-attr]
    batch = gather_batch(data, np.arange(64))
    loss = sum(default_objective(model).losses(model(batch.features), batch).values())
    loss.backward()  # type: ignore[union-attr]
    attention = [n for n, p in model.named_parameters() if "attention" in n or "history_targets" in n]
    assert attention
    # the activation unit's output bias shifts every score of a history alike, and a softmax is invariant to
    # that: its gradient is zero in exact arithmetic (rounding may leave it a little above), so it is exempt
    invariant = "embedding.attention.unit.layers.1.bias"
    missing = [n for n, p in model.named_parameters()
               if n != invariant and (p.grad is None or not p.grad.abs().sum() > 0)]
    assert not missing, f"parameters without gradient: {missing}"


def test_a_bad_pooling_is_one_config_error(data) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ModelConfigError, match="sequence_pooling: must be one of"):
        create_model("mmoe", data.schema, sequence_pooling="max")


def test_attention_pooled_history_depends_on_the_candidate_mean_does_not(data) -> None:  # type: ignore[no-untyped-def]
    """Same histories, another candidate item: the attention-pooled vectors change, the mean does not."""
    torch.manual_seed(0)
    block = FeatureEmbedding(data.schema, 8, "attention")
    features = gather_batch(data, np.arange(32)).features
    item = [f.name for f in data.schema.sparse].index("item_id")
    other = dataclasses.replace(features, sparse=features.sparse.clone())
    other.sparse[:, item] = other.sparse[:, item].roll(1)
    num_fields = block.num_fields
    with torch.no_grad():
        pooled, pooled_other = block.all_fields(features)[:, num_fields:], block.all_fields(other)[:, num_fields:]
        mean, mean_other = block.mean_pooled_sequences(features), block.mean_pooled_sequences(other)
    assert not torch.allclose(pooled, pooled_other)
    torch.testing.assert_close(mean, mean_other, rtol=0, atol=0)


def test_din_attention_masks_padding_and_pools_an_empty_history_to_zero() -> None:
    torch.manual_seed(0)
    pool = DINAttentionPooling(4, hidden=8)
    keys = torch.randn(3, 5, 4)  # [B, L, d]
    mask = torch.tensor([[True, True, False, False, False], [True] * 5, [False] * 5])
    pooled, weights = pool(keys, mask, torch.randn(3, 4))
    assert weights.shape == (3, 5, 1)
    assert (weights[~mask] == 0).all()
    torch.testing.assert_close(weights[:2].sum(1), torch.ones(2, 1))
    torch.testing.assert_close(pooled[2], torch.zeros(4), rtol=0, atol=0)
    assert torch.isfinite(pooled).all()


def test_din_attention_with_equal_scores_is_the_mean() -> None:
    pool = DINAttentionPooling(4, hidden=8)
    with torch.no_grad():
        pool.unit.last_layer().weight.zero_()  # every score = the last bias: equal weights
    keys = torch.randn(2, 6, 4)
    mask = torch.tensor([[True] * 4 + [False] * 2, [True] * 6])
    pooled, _ = pool(keys, mask, torch.randn(2, 4))
    torch.testing.assert_close(pooled[0], keys[0, :4].mean(0))
    torch.testing.assert_close(pooled[1], keys[1].mean(0))


def test_din_attention_groups_keep_their_slices_apart() -> None:
    """With two groups, the second half of the target never moves the first group's weights."""
    torch.manual_seed(0)
    pool = DINAttentionPooling(6, hidden=8, groups=2)
    keys, mask, target = torch.randn(4, 5, 6), torch.ones(4, 5, dtype=torch.bool), torch.randn(4, 6)
    _, weights = pool(keys, mask, target)
    moved = target.clone()
    moved[:, 3:] += 1.0
    _, weights_moved = pool(keys, mask, moved)
    torch.testing.assert_close(weights[..., 0], weights_moved[..., 0], rtol=0, atol=0)
    assert not torch.allclose(weights[..., 1], weights_moved[..., 1])
    with pytest.raises(ValueError, match="multiple of groups"):
        DINAttentionPooling(6, groups=4)


def _din_on_the_concatenated_input(pool: DINAttentionPooling, keys: torch.Tensor, mask: torch.Tensor,
                                   target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """DIN as written: the unit on ``[h; t; h * t; h - t]`` at every position, then the masked softmax."""
    *lead, length, dim = keys.shape
    g = pool.groups
    k = keys.view(*lead, length, g, dim // g)
    t = target.view(*lead, 1, g, dim // g).expand_as(k)
    unit_in = torch.cat([k, t, k * t, k - t], dim=-1)  # [..., L, G, 4d/G]
    scores = pool.unit(unit_in.reshape(-1, g, unit_in.shape[-1]).transpose(0, 1)).squeeze(-1)  # [G, N L]
    weights = masked_softmax(scores.transpose(0, 1).reshape(*lead, length, g), mask.unsqueeze(-1), dim=-2)
    return (weights.unsqueeze(-1) * k).sum(-3).reshape(*lead, dim), weights


@pytest.mark.parametrize("groups", [1, 2])
def test_din_attention_on_valid_positions_equals_the_unit_on_the_concatenated_input(groups: int) -> None:
    torch.manual_seed(0)
    pool = DINAttentionPooling(8, hidden=16, groups=groups)
    keys = torch.randn(3, 4, 7, 8, requires_grad=True)  # [B, S, L, d]
    target = torch.randn(3, 4, 8, requires_grad=True)
    mask = torch.rand(3, 4, 7) > 0.5
    mask[0, 0] = False  # an empty history
    pooled, weights = pool(keys, mask, target)
    expected, expected_weights = _din_on_the_concatenated_input(pool, keys, mask, target)
    torch.testing.assert_close(pooled, expected)
    torch.testing.assert_close(weights, expected_weights)
    inputs = [keys, target, *pool.parameters()]
    grads = torch.autograd.grad(pooled.square().sum(), inputs)
    expected_grads = torch.autograd.grad(expected.square().sum(), inputs)
    for got, want in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(got, want)
