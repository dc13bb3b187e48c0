"""The synthetic presets have the properties they state (real-log-like rates and AUCs, a linear model
falls short of the oracle, conflict opposes the tasks, sequences tie each task to its own history,
interests select history items by the candidate). Properties that need trained models (a mean-pooling
MMoE stays below the oracle on ``interests``, target attention gets closer) are measured by
``benchmarks/interests_properties.py`` (docs/synthetic.md), not here."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from mtrec.data.dataset import PreparedDataset
from mtrec.data.synthetic import (
    INTERESTS,
    PRESETS,
    TaskWeights,
    _simulate,
    make_synthetic,
    resolve_config,
)
from mtrec.metrics.oracle import logistic_regression_auc, oracle_auc

ROWS = 30_000


@pytest.fixture(scope="module")
def presets() -> dict[str, PreparedDataset]:
    return {name: make_synthetic(name, rows=ROWS) for name in PRESETS}


def true_logits(data: PreparedDataset) -> np.ndarray:
    assert data.oracle is not None
    p = np.clip(data.oracle, 1e-7, 1 - 1e-7)
    return np.log(p / (1 - p))  # [N, T]


def test_deterministic_per_seed() -> None:
    a, b, c = (make_synthetic("easy", rows=3000, seed=s) for s in (0, 0, 1))
    np.testing.assert_array_equal(a.sparse, b.sparse)
    np.testing.assert_array_equal(a.labels, b.labels)
    assert not np.array_equal(a.labels, c.labels)


def test_unknown_preset_names_the_valid_ones() -> None:
    with pytest.raises(ValueError, match="easy"):
        make_synthetic("nope", rows=100)


@pytest.mark.parametrize("name", list(PRESETS))
def test_shapes_ids_and_padding(presets: dict[str, PreparedDataset], name: str) -> None:
    data = presets[name]
    assert data.num_rows == ROWS
    for j, feature in enumerate(data.schema.sparse):
        assert data.sparse[:, j].min() >= 2 and data.sparse[:, j].max() < feature.vocab_size
    for seq in data.schema.sequences:
        ids = data.sequences[seq.name]
        assert ids.max() < seq.vocab_size
        valid = ids > 0
        # left-aligned: no real id after a padding position
        assert not (valid[:, 1:] & ~valid[:, :-1]).any()


# the value presets raise click and conversion rates so that their value task has enough rows to learn from
# (their own checks are in test_task_types.py)
@pytest.mark.parametrize("name", [name for name, config in PRESETS.items() if config.value is None])
def test_rates_and_oracle_auc_like_real_logs(presets: dict[str, PreparedDataset], name: str) -> None:
    data = presets[name]
    click, conversion = data.labels[:, 0], data.labels[:, 1]
    assert 0.03 <= click.mean() <= 0.15
    conv_rate = conversion[click == 1].mean() if name == "esmm" else conversion.mean()
    assert 0.05 <= conv_rate <= 0.20
    oracle = oracle_auc(data, "test")
    assert 0.70 <= oracle["click"] <= 0.85
    assert 0.75 <= oracle["conversion"] <= 0.90


def test_esmm_conversion_only_after_click(presets: dict[str, PreparedDataset]) -> None:
    data = presets["esmm"]
    assert data.schema.task("conversion").observed_after == "click"
    assert not ((data.labels[:, 1] == 1) & (data.labels[:, 0] == 0)).any()


@pytest.mark.parametrize(("name", "gap"), [("easy", 0.02), ("sequences", 0.02), ("interests", 0.03)])
def test_logistic_regression_stays_below_the_oracle(
    presets: dict[str, PreparedDataset], name: str, gap: float
) -> None:
    data = presets[name]
    oracle = oracle_auc(data, "test")
    linear = logistic_regression_auc(data, "test")
    for task in data.schema.task_names:
        assert linear[task] <= oracle[task] - gap, (task, linear[task], oracle[task])


def test_conflict_opposes_the_tasks(presets: dict[str, PreparedDataset]) -> None:
    easy = np.corrcoef(true_logits(presets["easy"]).T)[0, 1]
    conflict = np.corrcoef(true_logits(presets["conflict"]).T)[0, 1]
    assert easy > 0.3
    assert conflict < easy - 0.3


def test_sequences_ties_each_task_to_its_own_history(presets: dict[str, PreparedDataset]) -> None:
    """Measured as the share of a history's items in the target item's category: it correlates more with
    the click logit for the click history, and more with the conversion logit for the buy history."""
    data = presets["sequences"]
    names = [f.name for f in data.schema.sparse]
    item, category = data.sparse[:, names.index("item_id")], data.sparse[:, names.index("item_category")]
    category_of = np.zeros(item.max() + 1, dtype=np.int64)
    category_of[item] = category

    def same_category_share(history: str) -> np.ndarray:
        ids = data.sequences[history]
        valid = ids > 0
        same = (category_of[ids] == category[:, None]) & valid
        return same.sum(1) / np.maximum(valid.sum(1), 1)

    logits = true_logits(data)
    corr = {(h, t): np.corrcoef(same_category_share(h), logits[:, t])[0, 1]
            for h in ("hist_click", "hist_buy") for t in (0, 1)}
    assert corr[("hist_click", 0)] > corr[("hist_buy", 0)] + 0.05
    assert corr[("hist_buy", 1)] > corr[("hist_click", 1)] + 0.05


COLUMNS = {f.name: i for i, f in enumerate(dataclasses.fields(TaskWeights))}  # component -> its column
INTEREST_COLUMNS = {name: COLUMNS[name] for name in INTERESTS}


@pytest.fixture(scope="module")
def interests_components() -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The interests preset's components [N, 12] per task, as generated (gamma = 3) and with gamma = 0
    (every history item weighted alike: the plain history mean)."""
    config = resolve_config("interests", 20_000)
    selected = _simulate(config, seed=0).components
    unselected = _simulate(dataclasses.replace(config, interest_temperature=0.0), seed=0).components
    return selected, unselected


def test_existing_presets_do_not_use_the_interest_components() -> None:
    for name, config in PRESETS.items():
        used = [c for c in INTERESTS for w in (config.click, config.conversion) if getattr(w, c) != 0]
        assert bool(used) == (name == "interests"), (name, used)


def test_interests_selection_depends_on_the_candidate(interests_components) -> None:  # type: ignore[no-untyped-def]
    """A mean over the history loses the planted terms: each component, selected by its similarity to
    the candidate, is far from the same values averaged over the whole history."""
    selected, unselected = interests_components
    for name, column in INTEREST_COLUMNS.items():
        corr = np.corrcoef(selected[0][:, column], unselected[0][:, column])[0, 1]
        assert corr < 0.9, (name, corr)
    browse = [np.corrcoef(selected[0][:, INTEREST_COLUMNS[c]], unselected[0][:, INTEREST_COLUMNS[c]])[0, 1]
              for c in ("browse_style", "browse_brand")]
    assert max(browse) < 0.75, browse


def test_interests_tasks_use_different_histories_and_aspects_partly_opposed(interests_components) -> None:  # type: ignore[no-untyped-def]
    """Click reads the browse history selected by category, conversion the buy history selected by brand
    and the browse history selected by brand with the opposite sign: the two tasks' history effects are
    negatively correlated over the rows."""
    config = PRESETS["interests"]
    assert INTERESTS["browse_style"][:2] == ("click", "category")
    assert INTERESTS["buy_price"][:2] == ("buy", "brand")
    assert INTERESTS["browse_brand"][:2] == ("click", "brand")
    assert config.click.browse_style > 0 and config.click.buy_price == config.click.browse_brand == 0
    assert config.conversion.buy_price > 0 and config.conversion.browse_brand < 0
    assert config.conversion.browse_style == 0
    selected, _ = interests_components
    history = [i for name, i in COLUMNS.items() if name.startswith("hist_") or name in INTERESTS]
    effects = [selected[t][:, history] @ w.as_array()[history]
               for t, w in enumerate((config.click, config.conversion))]
    assert np.corrcoef(*effects)[0, 1] < -0.05
