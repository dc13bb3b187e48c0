"""Vectorized metrics against scikit-learn and a per-group loop."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import log_loss, roc_auc_score

from mtrec.metrics import auc, evaluate_tasks, gauc, logloss


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auc_matches_sklearn_with_ties(seed: int) -> None:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 2000)
    s = np.round(rng.random(2000) + 0.3 * y, 1)  # rounding makes many ties
    assert auc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)


def test_auc_single_class_is_nan() -> None:
    assert np.isnan(auc(np.ones(5), np.arange(5.0)))


def test_gauc_matches_per_user_loop() -> None:
    rng = np.random.default_rng(4)
    users = rng.integers(0, 40, 3000)
    y = rng.integers(0, 2, 3000)
    s = np.round(rng.random(3000) + 0.2 * y, 2)
    total, weight = 0.0, 0
    for u in np.unique(users):
        keep = users == u
        if 0 < y[keep].sum() < keep.sum():
            total += roc_auc_score(y[keep], s[keep]) * keep.sum()
            weight += keep.sum()
    assert gauc(y, s, users) == pytest.approx(total / weight, abs=1e-12)


def test_logloss_matches_sklearn() -> None:
    rng = np.random.default_rng(5)
    y = rng.integers(0, 2, 500)
    p = rng.random(500)
    assert logloss(y, p) == pytest.approx(log_loss(y, p), rel=1e-9)


def test_evaluate_tasks_uses_only_observed_rows() -> None:
    y = np.array([1, 0, 1, 0, 1.0])
    p = np.array([0.9, 0.1, 0.2, 0.8, 0.7])
    mask = np.array([1, 1, 0, 0, 1.0])
    out = evaluate_tasks({"t": p}, {"t": y}, {"t": mask})
    assert out["t"]["auc"] == 1.0 and out["t"]["rows"] == 3
