"""Synthetic multi-task recommendation data with planted ground truth (the embedded default dataset).

Every row is one impression of an item to a user. The labels are drawn from known probabilities, which
are kept as the dataset's ``oracle`` block, so a model's AUC can be read against the best possible AUC
on the same rows (:func:`mtrec.metrics.oracle.oracle_auc`). The true probabilities are a function of the
*observed* columns only (ids, side features, dense values, histories): the gap between a model and the
oracle is estimation error, not missing information.

Generative model
----------------
Notation: ``d`` = ``latent_dim``; ``N(0, s^2)`` a normal draw; ``mix_rho(a, b) = rho*a + sqrt(1-rho^2)*b``
where ``b`` is an independent copy of ``a`` (``rho`` = ``task_correlation``); ``z(.)`` z-scores a column
over the generated rows.

World (drawn once per seed, shared by every preset and row count)::

    category c:   e_c ~ N(0, I/d)                    category latent
                  price level pl_c ~ N(0, 0.6^2), bias bc_c ~ N(0, 1)
    item i:       cat(i) ~ U{categories},  brand(i) ~ U{brands},  bb_brand ~ N(0, 0.5^2)
                  popularity pop_i ~ rank_i^(-item_zipf)          (rank: a random permutation)
                  v_i = e_cat(i) + item_noise * N(0, I/d)          item latent
                  log price lp_i = pl_cat(i) + N(0, 0.5^2);  price_bucket = decile of lp over items
                  quality q_i ~ N(0, 1)
    user u:       age, gender, city: categorical draws;  activity act_u ~ rank_u^(-user_zipf)
                  U1_u = A1_age + A1_gender + A1_city,  U2_u likewise with independent tables (each N(0, I/3d))
                  bias bu_u ~ N(0, 1)
    histories:    browse taste  t_click = U1 + user_noise * eps1
                  buy taste     t_buy   = 0.3 U1 + 0.95 U2 + user_noise * eps2
                  cart taste    t_cart  = (t_click + t_buy) / sqrt(2) + user_noise * eps3 / 2
                  each history item: category ~ softmax_c(beta * <t_b, e_c>), then an item of that
                  category ~ popularity.  Stored most recent first, left-aligned, 0 = padding.
    context:      H[hour, device] = amp_device * cos(2 pi (hour - phase_device) / 24) + N(0, 0.3^2)
                  P[price_bucket, age] = k_age * centred(price_bucket),  k_age ~ N(0, 1)  (price sensitivity)

Per row (user u ~ activity, item i ~ popularity, hour ~ daily cycle, device, recency r), the components::

    item_t    = bc_cat(i) + bb_brand(i) + 0.5 q_i + 0.3 z(log pop_i)        item/category/brand effect
    user_t    = bu_u                                                         user propensity
    cross_t   = <W_t(u), v_i>           with W_click = U1, W_conversion = mix_rho(U1, U2)
    context_t = H_t[hour, device] + P_t[price_bucket, age]
    dense_t   = a_t * price + 0.3 * activity - g_t * recency^2               (price, activity, recency z-scored)
    seq_b     = <mean_{h in hist_b} e_cat(h), e_cat(i)>   for b in click, cart, buy (0 for an empty history)

Interest components (target-dependent selection over a history; used by the ``interests`` preset). Item
aspects, drawn from their own random stream (so they leave the other presets' data unchanged)::

    brand latent  f_brand ~ N(0, I/d);   item style s_i ~ N(0, I/d)   (a property beyond the category)
    keys          a_cat(h, i)   = sqrt(d) <e_cat(h), e_cat(i)>        (~2 for the same category, ~N(0, 1) else)
                  a_brand(h, i) = sqrt(d) <f_brand(h), f_brand(i)>
    values        style match m(h, i) = sqrt(d) <s_h, s_i>;   price fit pf(h, i) = -(lp_h - lp_i)^2
    attention     att^a_l(i) = softmax over the valid positions l of (gamma * a(h_l, i))   gamma = interest_temperature
    browse_style  = sum_l att^cat_l(i)   m(h_l, i)     over hist_click   (browsed items near i's category)
    browse_brand  = sum_l att^brand_l(i) m(h_l, i)     over hist_click   (browsed items near i's brand)
    buy_price     = sum_l att^brand_l(i) pf(h_l, i)    over hist_buy     (what was paid for items near i's brand)

(0 for an empty history.) Which history items count depends on the candidate i, so the mean of a history's
item embeddings cannot carry these terms: with gamma = 0 each is the plain history mean of the value, and
the interests preset's gamma = 3 concentrates the weight on the few items nearest the candidate.

The conversion task's item, user and context tables are ``mix_rho`` of the click task's, so ``rho``
sets how related the tasks are (negative: what makes an item clicked makes it less converted). With
weights ``w_t`` per component (:class:`TaskWeights`)::

    s_t     = sum_k w_t[k] * z(component_k)
    logit_t = b_t + sigma_t * s_t / std(s_t)            sigma_t = *_logit_std (sets the oracle AUC)
    p_t     = sigmoid(logit_t)                           b_t solved by bisection to hit the target rate

Labels: ``click ~ Bernoulli(p_click)``. Without ``conversion_after_click``, ``conversion ~ Bernoulli(
p_conversion)`` independently of the click draw, on every impression, at ``conversion_rate`` of all
impressions. With it (the ``esmm`` preset), ``p_conversion`` is the probability of converting *given a
click*: ``conversion = click * Bernoulli(p_conversion)``, its rate among clicks is ``conversion_rate``, and
the schema marks the task ``observed_after="click"``. The oracle block holds ``[p_click, p_conversion]``.

Value presets (``value``, ``value-mse``, ``value-huber``): the ``esmm`` setting plus a third task,
``spend``, a regression task over every impression (:class:`ValueTask`; observed after conversion with
``after_conversion``). Given a conversion, a payment happens with probability ``q`` and its amount is
lognormal (drawn from their own random stream, so the binary tasks are those of the same config without
it)::

    q       = sigmoid(b_pay + pay_logit_std * z(user_t + item_t + activity))         b_pay: pay_rate
    mu      = log_mean + amount_std * z(price + 0.5 item_t + 0.5 user_t)
    spend   = conversion * Bernoulli(q) * exp(mu + sigma * N(0, 1))                  0 without a payment

About 97 % of rows are 0 (no conversion, or a conversion without payment), and more than half of the
converted rows too. The oracle of ``spend`` is its expected value per impression, ``p_click * p_conversion * q *
exp(mu + sigma^2 / 2)``, what a model predicts for the task (with ``after_conversion`` too: a value task
observed after another is predicted in the entire space). The presets
differ only in the task's loss: ``ziln`` (``value``), ``mse`` on the raw value (``value-mse``), ``huber``
on ``log1p`` of it (``value-huber``).

Scenarios (the ``scenarios`` preset, :class:`Scenarios`): each row belongs to one of K scenarios, drawn
from their own random stream with probabilities ``shares`` and stored as the sparse feature ``scenario``
(raw values ``s0``, ``s1``...; the schema's scenario). The scenarios share the world and every component;
they differ in the weights of the ``conflicting`` components, scaled in scenario k by ``factors[k]`` (a
negative factor: what raises a task there lowers it elsewhere), and in the target rates, scaled by
``rates[k]`` (an intercept solved per scenario and task)::

    logit_t(row in scenario k) = b_t,k + sigma_t * z(sum_c w_t,k[c] * z(component_c))
    w_t,k[c] = factors[k] * w_t[c]  for c in conflicting,   w_t[c] otherwise

A model that ignores the scenario learns the shares-weighted mean of the conflicting weights; the oracle
AUC is reported per scenario (:func:`mtrec.metrics.oracle.oracle_metrics_by_scenario`).

Why a linear model falls short: ``cross``, ``context`` and ``seq_*`` are interactions (user side x item
latent, hour x device, price x age, history x target category) and ``recency^2`` is non-linear in a raw
feature; a logistic regression on one-hot ids, dense values and bag-of-items histories sees only their
main effects. All of them are crosses of low-cardinality fields or category-level latents, which a
factorisation or MLP model learns from ~100k training rows.
"""

from __future__ import annotations

import math
from dataclasses import asdict, astuple, dataclass, field, fields, replace
from typing import Any

import numpy as np

from mtrec.data.dataset import PreparedDataset, layout_bytes
from mtrec.features.encoders import DenseTransform, FeatureEncoders, SequenceFormat
from mtrec.features.schema import (
    FIRST_ID,
    DatasetSchema,
    DenseFeature,
    SequenceFeature,
    SparseFeature,
    TaskSpec,
)
from mtrec.features.vocab import Vocabulary

N_AGE = 7
N_GENDER = 2
N_HOURS = 24
N_DEVICES = 4
N_PRICE_BUCKETS = 10
AGE_PROBS = (0.08, 0.22, 0.25, 0.19, 0.13, 0.08, 0.05)
DEVICE_PROBS = (0.55, 0.30, 0.10, 0.05)
HISTORY_BEHAVIOURS = ("click", "cart", "buy")


@dataclass(frozen=True)
class TaskWeights:
    """Weights of one task's logit components (see the module docstring); 0 removes a component."""

    item: float = 1.0
    user: float = 0.1
    cross: float = 0.3
    context: float = 0.25
    dense: float = 0.5
    recency: float = 0.3
    hist_click: float = 0.0
    hist_cart: float = 0.0
    hist_buy: float = 0.0
    browse_style: float = 0.0
    browse_brand: float = 0.0
    buy_price: float = 0.0

    def as_array(self) -> np.ndarray:
        """The weights in component order (the field order) ``[12]``."""
        return np.array(astuple(self), dtype=np.float64)


@dataclass(frozen=True)
class ValueTask:
    """The ``spend`` task of the value presets (see the module docstring): its generator and its loss."""

    pay_rate: float = 0.35  # P(spend > 0 | conversion), in expectation over converted rows
    pay_logit_std: float = 1.5
    log_mean: float = 1.0  # mean log amount (amounts of a few units: see ValueTask)
    amount_std: float = 0.8  # spread of mu over rows
    sigma: float = 0.8  # the lognormal's sigma given the features
    loss: str = "ziln"
    transform: str = ""
    after_conversion: bool = False  # observed after conversion (learned on converted rows only)


@dataclass(frozen=True)
class Scenarios:
    """The scenarios of the ``scenarios`` preset (see the module docstring): one entry per scenario in
    ``shares`` (fraction of rows), ``factors`` (scale of the ``conflicting`` components' weights) and
    ``rates`` (scale of each task's target rate)."""

    shares: tuple[float, ...] = (0.5, 0.3, 0.2)
    factors: tuple[float, ...] = (1.0, -1.0, 0.2)
    rates: tuple[float, ...] = (1.0, 0.6, 1.5)
    conflicting: tuple[str, ...] = ("cross", "context", "hist_click")

    def weight_rows(self, weights: TaskWeights) -> np.ndarray:
        """The task's component weights in each scenario ``[K, 12]``."""
        names = [f.name for f in fields(TaskWeights)]
        scale = np.ones((len(self.shares), len(names)))
        for name in self.conflicting:
            scale[:, names.index(name)] = self.factors
        return scale * weights.as_array()[None, :]


@dataclass(frozen=True)
class SyntheticConfig:
    """Every knob of the generator. Presets are instances of this class (see :data:`PRESETS`).

    ``rows`` is sized so that one model trains in about a minute on two CPU cores. Target rates are met
    in expectation (the intercepts are solved for them); the realised rates differ by sampling noise.
    """

    rows: int = 200_000
    n_users: int = 1_000
    n_items: int = 500
    n_categories: int = 24
    n_brands: int = 80
    n_cities: int = 30
    latent_dim: int = 4
    item_zipf: float = 0.9  # item popularity ~ rank^-item_zipf
    user_zipf: float = 0.6  # user activity ~ rank^-user_zipf
    max_len: int = 20  # history length (all three behaviours)
    item_noise: float = 0.2  # item-specific part of the item latent (beside its category's)
    item_quality: float = 0.5  # weight of the item-specific quality in the item effect
    user_noise: float = 0.5  # user-specific part of the tastes that draw the histories
    history_temperature: float = 2.5  # beta: how strongly a taste concentrates histories on categories
    interest_temperature: float = 3.0  # gamma: how sharply an interest component selects history items
    task_correlation: float = 0.7  # rho: conversion's tables = mix_rho(click's tables, independent)
    click: TaskWeights = TaskWeights(hist_click=0.2, hist_cart=0.1, hist_buy=0.05)
    conversion: TaskWeights = TaskWeights(dense=0.6, hist_click=0.1, hist_cart=0.1, hist_buy=0.15)
    click_price: float = -0.4  # a_click: price slope of the click logit (dense component)
    conversion_price: float = -1.0  # a_conversion
    click_rate: float = 0.13  # positive rate of click over impressions
    conversion_rate: float = 0.10  # over impressions, or over clicks with conversion_after_click
    click_logit_std: float = 1.5  # sigma_click: spread of the true click logit (sets its oracle AUC)
    conversion_logit_std: float = 1.7  # sigma_conversion
    conversion_after_click: bool = False  # conversion observed only after a click (ESMM-style)
    value: ValueTask | None = None  # a spend task observed after conversion (the value presets)
    scenarios: Scenarios | None = None  # a scenario column and per-scenario weights (the scenarios preset)
    split_fractions: tuple[float, float, float] = (0.70, 0.15, 0.15)
    description: str = field(default="", compare=False)


PRESETS: dict[str, SyntheticConfig] = {
    "easy": SyntheticConfig(
        task_correlation=0.8,
        description="tasks strongly related: shared drivers (rho=0.8), mild dependence on histories",
    ),
    "conflict": SyntheticConfig(
        task_correlation=-0.5,
        click=TaskWeights(hist_click=0.6, hist_cart=0.1),
        conversion=TaskWeights(dense=0.8, hist_click=-0.3, hist_buy=0.6),
        conversion_price=-1.5,
        description="what drives conversion partly opposes what drives click (rho=-0.5, opposite "
        "history weights): negatively correlated true logits",
    ),
    "sequences": SyntheticConfig(
        task_correlation=0.3,
        click=TaskWeights(cross=0.5, context=0.4, hist_click=1.3, hist_cart=0.2),
        conversion=TaskWeights(cross=0.5, context=0.4, dense=0.5, hist_cart=0.4, hist_buy=1.3),
        description="each task driven by a different behaviour history: click by the click history, "
        "conversion by the buy (and cart) history",
    ),
    "interests": SyntheticConfig(
        task_correlation=0.3,
        click=TaskWeights(cross=0.4, context=0.3, browse_style=1.3),
        conversion=TaskWeights(cross=0.4, context=0.3, dense=0.5, buy_price=1.3, browse_brand=-0.6),
        description="each task's history effect selects the history items near the candidate: click the "
        "browsed items near its category (style match), conversion the bought items near its brand (price "
        "fit) and, against click, the browsed items near its brand",
    ),
    "esmm": SyntheticConfig(
        task_correlation=0.6,
        conversion_after_click=True,
        conversion_rate=0.12,
        description="conversion observed only after a click (selection bias); its label is 1 only "
        "where click is 1 and its oracle is the probability given a click",
    ),
    **{name: SyntheticConfig(
        rows=60_000,
        task_correlation=0.6,
        conversion_after_click=True,
        click_rate=0.25,
        conversion_rate=0.3,
        value=ValueTask(loss=loss, transform=transform),
        description=f"esmm plus spend, a zero-heavy value task (a payment after some conversions, lognormal "
        f"amounts; about 97 % zeros), learned by {loss}{' on log1p' if transform else ''}; oracle: its expected value",
    ) for name, loss, transform in (("value", "ziln", ""), ("value-mse", "mse", ""),
                                    ("value-huber", "huber", "log1p"))},
    "scenarios": SyntheticConfig(
        task_correlation=0.5,
        click=TaskWeights(cross=0.8, context=0.5, hist_click=0.6, hist_cart=0.1),
        conversion=TaskWeights(cross=0.6, context=0.4, dense=0.6, hist_click=0.4, hist_buy=0.3),
        scenarios=Scenarios(),
        description="three scenarios (50/30/20 % of rows, column 'scenario') sharing the item, user, price and "
        "buy-history effects; the cross, context and click-history effects are reversed in s1 and weak in s2, "
        "and the rates differ",
    ),
}


# ---- schema --------------------------------------------------------------------------------------
def synthetic_schema(config: SyntheticConfig, metadata: dict[str, Any] | None = None) -> DatasetSchema:
    """The schema shared by every preset (only ``conversion.observed_after`` and the value presets'
    ``spend`` task differ)."""

    def size(n: int) -> int:
        return n + FIRST_ID

    sparse: tuple[SparseFeature, ...] = (
        SparseFeature("user_id", size(config.n_users)),
        SparseFeature("age_bucket", size(N_AGE)),
        SparseFeature("gender", size(N_GENDER)),
        SparseFeature("city", size(config.n_cities)),
        SparseFeature("item_id", size(config.n_items)),
        SparseFeature("item_category", size(config.n_categories)),
        SparseFeature("brand", size(config.n_brands)),
        SparseFeature("price_bucket", size(N_PRICE_BUCKETS)),
        SparseFeature("hour", size(N_HOURS)),
        SparseFeature("device", size(N_DEVICES)),
    )
    if config.scenarios is not None:
        sparse = (*sparse, SparseFeature("scenario", size(len(config.scenarios.shares))))
    dense = (
        DenseFeature("price"),
        DenseFeature("user_activity"),
        DenseFeature("item_popularity"),
        DenseFeature("recency"),
    )
    sequences = tuple(
        SequenceFeature(
            f"hist_{b}",
            size(config.n_items),
            config.max_len,
            behaviour=b,
            table="item_id",
            target="item_id",
        )
        for b in HISTORY_BEHAVIOURS
    )
    tasks: tuple[TaskSpec, ...] = (
        TaskSpec("click"),
        TaskSpec("conversion", observed_after="click" if config.conversion_after_click else None),
    )
    if config.value is not None:
        after = "conversion" if config.value.after_conversion else None
        tasks = (*tasks, TaskSpec("spend", observed_after=after, type="regression",
                                  loss=config.value.loss, transform=config.value.transform))
    return DatasetSchema(
        sparse=sparse,
        dense=dense,
        sequences=sequences,
        tasks=tasks,
        user_id="user_id",
        metadata=dict(metadata or {}),
        scenario=None if config.scenarios is None else "scenario",
    )


# ---- raw values ----------------------------------------------------------------------------------
# the raw text of value k (id k + FIRST_ID) of each categorical feature is PREFIX + str(k): u17, i3, ...
RAW_PREFIXES = {"user_id": "u", "age_bucket": "age", "gender": "g", "city": "city", "item_id": "i",
                "item_category": "c", "brand": "b", "price_bucket": "p", "hour": "", "device": "d", "scenario": "s"}
HISTORY_SEPARATOR = "|"


def synthetic_encoders(schema: DatasetSchema) -> FeatureEncoders:
    """The raw values of the synthetic features, as ``mtrec prepare`` would have fitted them.

    Value k of a categorical feature (id k + 2) is written ``PREFIX + k`` (:data:`RAW_PREFIXES`: ``u17``,
    ``i3``, ``c5``; an hour is its number, ``0`` to ``23``); histories are item values joined by ``|``. The
    dense features are generated already standardised, so their raw value is the model input (identity
    transforms). With these, ``predict`` and ``serve`` score a synthetic run from raw values."""
    vocabularies = {
        f.name: Vocabulary.from_list([f"{RAW_PREFIXES[f.name]}{k}" for k in range(f.vocab_size - FIRST_ID)])
        for f in schema.sparse
    }
    return FeatureEncoders(
        vocabularies=vocabularies,
        dense={d.name: DenseTransform() for d in schema.dense},
        sequences={s.name: SequenceFormat(separator=HISTORY_SEPARATOR) for s in schema.sequences},
    )


# ---- helpers -------------------------------------------------------------------------------------
def _zscore(x: np.ndarray) -> np.ndarray:
    """``(x - mean) / std`` over all entries; zeros for a constant column."""
    std = float(x.std())
    return (x - x.mean()) / std if std > 1e-12 else np.zeros_like(x)


def _mix(a: np.ndarray, b: np.ndarray, rho: float) -> np.ndarray:
    """``rho * a + sqrt(1 - rho^2) * b``: same scale as ``a`` and ``b``, correlation ``rho`` with ``a``."""
    return rho * a + math.sqrt(max(0.0, 1.0 - rho * rho)) * b


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def _solve_intercept(logit: np.ndarray, rate: float, weight: np.ndarray | None = None) -> float:
    """The ``b`` with ``weighted mean(sigmoid(b + logit)) == rate`` (bisection; the mean is monotone)."""
    lo, hi = -30.0, 30.0
    w = np.ones_like(logit) if weight is None else weight
    total = float(w.sum())
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        if float((w * _sigmoid(mid + logit)).sum()) / total < rate:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def _zipf_weights(n: int, exponent: float, rng: np.random.Generator) -> np.ndarray:
    """Probabilities ``[n]`` proportional to ``rank^-exponent``, ranks randomly permuted over ids."""
    ranks = rng.permutation(n) + 1
    w = ranks.astype(np.float64) ** -exponent
    return w / w.sum()


def _sample_in_groups(
    groups: np.ndarray, group_of: np.ndarray, weight: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """For each requested group in ``groups`` (any shape), draw one member index with probability
    proportional to ``weight`` among the members (``group_of[i]`` is member i's group). Vectorized via
    one cumulative sum over members sorted by group and a searchsorted."""
    order = np.argsort(group_of, kind="stable")
    cum = np.cumsum(weight[order])
    n_groups = int(group_of.max()) + 1
    ends = np.searchsorted(group_of[order], np.arange(n_groups), side="right")  # [G]
    starts = np.concatenate([[0], ends[:-1]])
    before = np.where(starts > 0, cum[np.maximum(starts - 1, 0)], 0.0)
    total = cum[ends - 1] - before
    target = before[groups] + rng.random(groups.shape) * total[groups]
    pos = np.searchsorted(cum, target, side="right")
    pos = np.clip(pos, starts[groups], ends[groups] - 1)  # guard float edge cases
    return order[pos]


# ---- the generator -------------------------------------------------------------------------------
@dataclass
class _World:
    """Users, items, categories and the context tables (see the module docstring)."""

    cat_latent: np.ndarray  # [C, d]
    item_cat: np.ndarray  # [I]
    item_brand: np.ndarray  # [I]
    item_pop: np.ndarray  # [I] probabilities
    item_latent: np.ndarray  # [I, d]
    item_log_price: np.ndarray  # [I]
    item_price_bucket: np.ndarray  # [I]
    item_effect: tuple[np.ndarray, np.ndarray]  # per task [I]
    user_age: np.ndarray  # [U]
    user_gender: np.ndarray  # [U]
    user_city: np.ndarray  # [U]
    user_activity: np.ndarray  # [U] probabilities
    user_cross: tuple[np.ndarray, np.ndarray]  # per task [U, d]
    user_bias: tuple[np.ndarray, np.ndarray]  # per task [U]
    histories: dict[str, np.ndarray]  # behaviour -> item indices [U, L]
    history_len: dict[str, np.ndarray]  # behaviour -> [U]
    hour_device: tuple[np.ndarray, np.ndarray]  # per task [24, devices]
    price_age: tuple[np.ndarray, np.ndarray]  # per task [price buckets, ages]


def _make_world(cfg: SyntheticConfig, rng: np.random.Generator) -> _World:
    d, n_cat, n_items, n_users = cfg.latent_dim, cfg.n_categories, cfg.n_items, cfg.n_users
    rho = cfg.task_correlation

    def pair(shape: tuple[int, ...], scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
        """A click table and conversion's mix_rho of it with an independent copy."""
        a = rng.normal(0.0, scale, shape)
        return a, _mix(a, rng.normal(0.0, scale, shape), rho)

    # categories and items
    cat_latent = rng.normal(0.0, 1.0 / math.sqrt(d), (n_cat, d))
    cat_price = rng.normal(0.0, 0.6, n_cat)
    cat_bias = pair((n_cat,))
    brand_bias = pair((cfg.n_brands,), 0.5)
    item_cat = rng.integers(0, n_cat, n_items)
    item_brand = rng.integers(0, cfg.n_brands, n_items)
    item_pop = _zipf_weights(n_items, cfg.item_zipf, rng)
    item_latent = cat_latent[item_cat] + cfg.item_noise * rng.normal(0.0, 1.0 / math.sqrt(d), (n_items, d))
    item_log_price = cat_price[item_cat] + rng.normal(0.0, 0.5, n_items)
    edges = np.quantile(item_log_price, np.linspace(0, 1, N_PRICE_BUCKETS + 1)[1:-1])
    item_price_bucket = np.searchsorted(edges, item_log_price, side="right")
    quality = pair((n_items,))
    log_pop = _zscore(np.log(item_pop))
    item_effect = tuple(
        cat_bias[t][item_cat] + brand_bias[t][item_brand] + cfg.item_quality * quality[t] + 0.3 * log_pop
        for t in (0, 1)
    )

    # users: two side-feature latents U1, U2 (sum of per-field tables)
    user_age = rng.choice(N_AGE, n_users, p=np.asarray(AGE_PROBS))
    user_gender = rng.integers(0, N_GENDER, n_users)
    user_city = rng.choice(cfg.n_cities, n_users, p=_zipf_weights(cfg.n_cities, 0.8, rng))
    user_activity = _zipf_weights(n_users, cfg.user_zipf, rng)
    field_scale = 1.0 / math.sqrt(3 * d)

    def side_latent() -> np.ndarray:
        age = rng.normal(0.0, field_scale, (N_AGE, d))
        gender = rng.normal(0.0, field_scale, (N_GENDER, d))
        city = rng.normal(0.0, field_scale, (cfg.n_cities, d))
        return age[user_age] + gender[user_gender] + city[user_city]  # [U, d]

    u1, u2 = side_latent(), side_latent()
    user_cross = (u1, _mix(u1, u2, rho))
    user_bias = pair((n_users,))

    # behaviour histories, drawn from three tastes
    def noise() -> np.ndarray:
        return rng.normal(0.0, cfg.user_noise / math.sqrt(d), (n_users, d))

    taste_click = u1 + noise()
    taste_buy = 0.3 * u1 + 0.95 * u2 + noise()
    taste_cart = (taste_click + taste_buy) / math.sqrt(2.0) + 0.5 * noise()
    lengths = {
        "click": rng.integers(4, cfg.max_len + 1, n_users),
        "cart": rng.integers(1, max(2, cfg.max_len * 3 // 5) + 1, n_users),
        "buy": rng.integers(1, max(2, cfg.max_len * 2 // 5) + 1, n_users),
    }
    histories = {}
    for b, taste in (("click", taste_click), ("cart", taste_cart), ("buy", taste_buy)):
        scores = cfg.history_temperature * math.sqrt(d) * taste @ cat_latent.T  # [U, C]
        gumbel = -np.log(-np.log(rng.random((n_users, cfg.max_len, n_cat))))
        cats = np.argmax(scores[:, None, :] + gumbel, axis=-1)  # [U, L]
        histories[b] = _sample_in_groups(cats, item_cat, item_pop, rng)  # [U, L]

    # context tables
    hours = np.arange(N_HOURS)[:, None]

    def hour_device_table() -> np.ndarray:
        amp = rng.normal(0.0, 1.0, N_DEVICES)
        phase = rng.uniform(0.0, N_HOURS, N_DEVICES)
        return amp * np.cos(2 * np.pi * (hours - phase) / N_HOURS) + rng.normal(0.0, 0.3, (N_HOURS, N_DEVICES))

    hd1 = hour_device_table()
    hour_device = (hd1, _mix(hd1, hour_device_table(), rho))
    # price sensitivity by age: a per-age slope over the (centred) price bucket
    bucket = (np.arange(N_PRICE_BUCKETS)[:, None] - (N_PRICE_BUCKETS - 1) / 2) / (N_PRICE_BUCKETS / 2)
    slopes = pair((1, N_AGE))
    price_age = (bucket * slopes[0], bucket * slopes[1])

    return _World(
        cat_latent=cat_latent,
        item_cat=item_cat,
        item_brand=item_brand,
        item_pop=item_pop,
        item_latent=item_latent,
        item_log_price=item_log_price,
        item_price_bucket=item_price_bucket,
        item_effect=(item_effect[0], item_effect[1]),
        user_age=user_age,
        user_gender=user_gender,
        user_city=user_city,
        user_activity=user_activity,
        user_cross=user_cross,
        user_bias=user_bias,
        histories=histories,
        history_len=lengths,
        hour_device=hour_device,
        price_age=price_age,
    )


#: the interest components: name -> (history behaviour, key aspect, value); see the module docstring
INTERESTS: dict[str, tuple[str, str, str]] = {
    "browse_style": ("click", "category", "style"),
    "browse_brand": ("click", "brand", "style"),
    "buy_price": ("buy", "brand", "price"),
}


@dataclass
class _Aspects:
    """Item-pair tables of the interest components: keys and values ``[I, I]`` (history item, candidate)."""

    keys: dict[str, np.ndarray]
    values: dict[str, np.ndarray]


def _make_aspects(cfg: SyntheticConfig, world: _World, rng: np.random.Generator) -> _Aspects:
    d = cfg.latent_dim
    brand = rng.normal(0.0, 1.0 / math.sqrt(d), (cfg.n_brands, d))[world.item_brand]  # [I, d]
    style = rng.normal(0.0, 1.0 / math.sqrt(d), (cfg.n_items, d))  # [I, d]
    category = world.cat_latent[world.item_cat]  # [I, d]
    price = world.item_log_price
    return _Aspects(
        keys={"category": math.sqrt(d) * category @ category.T, "brand": math.sqrt(d) * brand @ brand.T},
        values={"style": math.sqrt(d) * style @ style.T, "price": -((price[:, None] - price[None, :]) ** 2)},
    )


def _interest(
    aspects: _Aspects, key: str, value: str, items: np.ndarray, valid: np.ndarray, target: np.ndarray,
    temperature: float,
) -> np.ndarray:
    """``sum_l softmax_l(gamma * key(h_l, i)) * value(h_l, i)`` over the valid positions ``[N]`` (0 for an
    empty history). items, valid: ``[N, L]`` (item indices, mask); target: the candidate ``[N]``."""
    scores = temperature * aspects.keys[key][items, target[:, None]]  # [N, L]
    scores = np.where(valid, scores, -np.inf)
    top = np.max(scores, axis=1, keepdims=True)
    weights = np.where(valid, np.exp(scores - np.where(np.isfinite(top), top, 0.0)), 0.0)  # [N, L]
    total = weights.sum(1)
    pooled = (weights * aspects.values[value][items, target[:, None]]).sum(1)
    return np.where(total > 0, pooled / np.maximum(total, 1e-300), 0.0)


def _hour_probs() -> np.ndarray:
    """A daily cycle: quiet at night, peaks at lunch and in the evening ``[24]``."""
    h = np.arange(N_HOURS)
    w = 0.2 + np.exp(-(((h - 12.5) / 2.0) ** 2)) + 1.5 * np.exp(-(((h - 20.5) / 2.5) ** 2)) + 0.3 * (h >= 8)
    return w / w.sum()


def resolve_config(preset: str, rows: int | None = None) -> SyntheticConfig:
    """The preset's config, with ``rows`` overridden when given; ValueError for an unknown preset."""
    if preset not in PRESETS:
        raise ValueError(f"unknown synthetic preset {preset!r}; valid presets: {', '.join(PRESETS)}")
    config = PRESETS[preset]
    if rows is not None:
        if rows < 100:
            raise ValueError(f"rows must be >= 100 so that every split is non-empty, got {rows}")
        config = replace(config, rows=rows)
    return config


GENERATION_FACTOR = 10  # peak memory of a generation / the bytes of its columns (measured: ~10 at 200k rows)


def generation_bytes(config: SyntheticConfig) -> int:
    """About the peak memory :func:`generate` takes for ``config`` (its columns and the draws behind them)."""
    return GENERATION_FACTOR * layout_bytes(synthetic_schema(config), config.rows, oracle=True)


def make_synthetic(preset: str = "easy", rows: int | None = None, seed: int = 0) -> PreparedDataset:
    """Generate a preset's dataset in memory: splits train/valid/test and the ``oracle`` block.

    ``rows`` overrides the preset's row count. The world (users, items, tables, histories) depends only on
    ``seed``; the same seed with more rows adds impressions of the same world. Deterministic for a seed.
    """
    return generate(resolve_config(preset, rows), seed=seed, preset=preset)


@dataclass
class _Simulation:
    """Everything one generation draws, before it is packed into a PreparedDataset."""

    sparse: np.ndarray  # int32 [N, F_sparse]
    dense: np.ndarray  # float32 [N, F_dense]
    sequences: dict[str, np.ndarray]  # name -> int32 [N, L]
    components: list[np.ndarray]  # per task: z-scored components [N, 12] (TaskWeights order)
    logits: np.ndarray  # [N, 2] true logits of click and conversion, intercepts included
    labels: np.ndarray  # float32 [N, T]
    value_oracle: np.ndarray | None  # [N] the value task's expected value per row (value presets)
    splits: dict[str, np.ndarray]


def generate(config: SyntheticConfig, seed: int = 0, preset: str = "custom") -> PreparedDataset:
    """Generate a dataset from an explicit config (see :func:`make_synthetic`)."""
    sim = _simulate(config, seed)
    metadata = {"generator": "mtrec.data.synthetic", "preset": preset, "seed": seed, "config": asdict(config)}
    schema = synthetic_schema(config, metadata)
    oracle = _sigmoid(sim.logits)
    if sim.value_oracle is not None:
        oracle = np.concatenate([oracle, sim.value_oracle[:, None]], axis=1)
    return PreparedDataset(
        schema=schema,
        sparse=sim.sparse,
        dense=sim.dense,
        sequences=sim.sequences,
        labels=sim.labels,
        splits=sim.splits,
        oracle=oracle.astype(np.float32),
        encoders=synthetic_encoders(schema),
    )


def _simulate(cfg: SyntheticConfig, seed: int) -> _Simulation:
    world = _make_world(cfg, np.random.default_rng([seed, 0]))
    aspects = _make_aspects(cfg, world, np.random.default_rng([seed, 2]))
    rng = np.random.default_rng([seed, 1])
    n = cfg.rows

    # impressions
    user = rng.choice(cfg.n_users, n, p=world.user_activity)
    item = rng.choice(cfg.n_items, n, p=world.item_pop)
    hour = rng.choice(N_HOURS, n, p=_hour_probs())
    device = rng.choice(N_DEVICES, n, p=np.asarray(DEVICE_PROBS))
    recency_days = rng.exponential(3.0, n)
    cat = world.item_cat[item]
    age = world.user_age[user]
    price_bucket = world.item_price_bucket[item]
    scenario = None if cfg.scenarios is None else \
        np.random.default_rng([seed, 4]).choice(len(cfg.scenarios.shares), n, p=np.asarray(cfg.scenarios.shares))

    # histories as of the impression: a prefix of the user's history (between half and all of it)
    sequences: dict[str, np.ndarray] = {}
    similarity: dict[str, np.ndarray] = {}
    history: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # behaviour -> item indices, mask [N, L]
    positions = np.arange(cfg.max_len)
    for b in HISTORY_BEHAVIOURS:
        full = world.history_len[b][user]
        length = rng.integers((full + 1) // 2, full + 1)  # [N]
        valid = positions[None, :] < length[:, None]  # [N, L]
        items = world.histories[b][user]  # [N, L]
        history[b] = items, valid
        sequences[f"hist_{b}"] = np.where(valid, items + FIRST_ID, 0).astype(np.int32)
        hist_latent = world.cat_latent[world.item_cat[items]] * valid[..., None]  # [N, L, d]
        mean_latent = hist_latent.sum(1) / np.maximum(length, 1)[:, None]  # [N, d]
        similarity[b] = np.einsum("nd,nd->n", mean_latent, world.cat_latent[cat])
    interests = [
        _interest(aspects, key, value, *history[b], item, cfg.interest_temperature)
        for b, key, value in INTERESTS.values()
    ]

    # dense features (already standardised, as prepare would)
    price = _zscore(world.item_log_price[item])
    activity = _zscore(np.log(world.user_activity[user]))
    popularity = _zscore(np.log(world.item_pop[item]))
    recency = _zscore(np.log1p(recency_days))
    dense = np.stack([price, activity, popularity, recency], axis=1).astype(np.float32)

    # true logits
    prices = (cfg.click_price, cfg.conversion_price)
    rates = (cfg.click_rate, cfg.conversion_rate)
    sigmas = (cfg.click_logit_std, cfg.conversion_logit_std)
    logits = []
    components_per_task = []
    for t, weights in enumerate((cfg.click, cfg.conversion)):
        components = np.stack(
            [
                world.item_effect[t][item],
                world.user_bias[t][user],
                np.einsum("nd,nd->n", world.user_cross[t][user], world.item_latent[item]),
                world.hour_device[t][hour, device] + world.price_age[t][price_bucket, age],
                prices[t] * price + 0.3 * activity,
                -(recency**2),
                similarity["click"],
                similarity["cart"],
                similarity["buy"],
                *interests,
            ],
            axis=1,
        )  # [N, 12]
        components = (components - components.mean(0)) / np.maximum(components.std(0), 1e-12)
        components_per_task.append(components)
        if cfg.scenarios is None or scenario is None:
            score = components @ weights.as_array()  # [N]
        else:
            score = np.einsum("nc,nc->n", components, cfg.scenarios.weight_rows(weights)[scenario])
        logits.append(sigmas[t] * _zscore(score))

    b_click = _intercepts(logits[0], rates[0], cfg.scenarios, scenario)
    p_click = _sigmoid(logits[0] + b_click)
    b_conv = _intercepts(logits[1], rates[1], cfg.scenarios, scenario,
                         weight=p_click if cfg.conversion_after_click else None)
    p_conv = _sigmoid(logits[1] + b_conv)
    click = rng.random(n) < p_click
    conversion = rng.random(n) < p_conv
    if cfg.conversion_after_click:
        conversion &= click
    labels = np.stack([click, conversion], axis=1).astype(np.float32)
    value_oracle = None
    if cfg.value is not None:
        spend, value_oracle = _spend(cfg.value, components_per_task[1], price, activity, conversion,
                                     p_click * p_conv, np.random.default_rng([seed, 3]))
        labels = np.concatenate([labels, spend[:, None].astype(np.float32)], axis=1)

    sparse = np.stack(
        [
            user,
            age,
            world.user_gender[user],
            world.user_city[user],
            item,
            cat,
            world.item_brand[item],
            price_bucket,
            hour,
            device,
            *([] if scenario is None else [scenario]),
        ],
        axis=1,
    ).astype(np.int32) + np.int32(FIRST_ID)

    order = rng.permutation(n)
    n_train = round(cfg.split_fractions[0] * n)
    n_valid = round(cfg.split_fractions[1] * n)
    splits = {
        "train": np.sort(order[:n_train]).astype(np.int64),
        "valid": np.sort(order[n_train : n_train + n_valid]).astype(np.int64),
        "test": np.sort(order[n_train + n_valid :]).astype(np.int64),
    }
    return _Simulation(
        sparse=sparse,
        dense=dense,
        sequences=sequences,
        components=components_per_task,
        logits=np.stack([logits[0] + b_click, logits[1] + b_conv], axis=1),
        labels=labels,
        splits=splits,
        value_oracle=value_oracle,
    )


def _intercepts(logit: np.ndarray, rate: float, scenarios: Scenarios | None, scenario: np.ndarray | None,
                weight: np.ndarray | None = None) -> float | np.ndarray:
    """The intercept hitting ``rate`` (:func:`_solve_intercept`); with scenarios, one per scenario k hitting
    ``rate * rates[k]`` on its rows, given per row ``[N]``."""
    if scenarios is None or scenario is None:
        return _solve_intercept(logit, rate, weight)
    per_scenario = np.array([
        _solve_intercept(logit[scenario == k], rate * r, None if weight is None else weight[scenario == k])
        for k, r in enumerate(scenarios.rates)])
    return per_scenario[scenario]


def _spend(cfg: ValueTask, components: np.ndarray, price: np.ndarray, activity: np.ndarray, conversion: np.ndarray,
           p_conversion: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The value task's labels ``[N]`` (stored as they are, or ``log1p`` of them for that transform) and its
    expected value per row ``[N]`` (see the module docstring). ``components``: the conversion task's
    z-scored components ``[N, 12]``; ``p_conversion``: ``p(click and conversion)`` per row."""
    item, user = components[:, 0], components[:, 1]
    pay_logit = cfg.pay_logit_std * _zscore(user + item + activity)
    b_pay = _solve_intercept(pay_logit, cfg.pay_rate, weight=p_conversion)
    q = _sigmoid(pay_logit + b_pay)
    mu = cfg.log_mean + cfg.amount_std * _zscore(price + 0.5 * item + 0.5 * user)
    paid = conversion & (rng.random(len(q)) < q)
    amount = np.exp(mu + cfg.sigma * rng.standard_normal(len(q)))
    spend = np.where(paid, amount, 0.0)
    expected = p_conversion * q * np.exp(mu + 0.5 * cfg.sigma**2)
    return (np.log1p(spend) if cfg.transform == "log1p" else spend), expected
