"""Vectorized AUC, GAUC and logloss of binary tasks (NumPy), checked against scikit-learn in the tests.

AUC is the Mann-Whitney statistic with average ranks for ties: ``(R_pos - P(P+1)/2) / (P N)``.
GAUC is the impression-weighted mean of per-user AUCs over users with both classes.
"""

from __future__ import annotations

import numpy as np


def tied_ranks(keys: np.ndarray, order: np.ndarray) -> np.ndarray:
    """1-based ranks of a sorted sequence with ties averaged. ``keys[order]`` must be sorted;
    returns the rank of each position in ``order``."""
    sorted_keys = keys[order]
    n = len(order)
    starts = np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]])
    ends = np.r_[starts[1:], n]
    mean_rank = (starts + ends + 1) / 2.0  # average of 1-based ranks start+1 .. end
    return np.repeat(mean_rank, ends - starts)


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve; NaN if only one class is present."""
    labels = np.asarray(labels, dtype=bool)
    scores = np.asarray(scores, dtype=np.float64)
    n_pos = int(labels.sum())
    n_neg = labels.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    ranks = tied_ranks(scores, order)
    rank_sum = ranks[labels[order]].sum()
    return float((rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def gauc(labels: np.ndarray, scores: np.ndarray, groups: np.ndarray) -> float:
    """Per-group AUC averaged with weights = group size, over groups that have both classes."""
    labels = np.asarray(labels, dtype=bool)
    scores = np.asarray(scores, dtype=np.float64)
    groups = np.asarray(groups)
    order = np.lexsort((scores, groups))  # by group, then score
    g, s, y = groups[order], scores[order], labels[order]
    n = len(order)
    group_start = np.flatnonzero(np.r_[True, g[1:] != g[:-1]])
    group_id = np.cumsum(np.r_[True, g[1:] != g[:-1]]) - 1
    # ties: runs of equal (group, score)
    run_start = np.flatnonzero(np.r_[True, (g[1:] != g[:-1]) | (s[1:] != s[:-1])])
    run_end = np.r_[run_start[1:], n]
    global_rank = np.repeat((run_start + run_end + 1) / 2.0, run_end - run_start)
    rank = global_rank - group_start[group_id]  # 1-based rank within the group
    n_groups = len(group_start)
    n_pos = np.bincount(group_id, weights=y, minlength=n_groups)
    size = np.bincount(group_id, minlength=n_groups).astype(np.float64)
    n_neg = size - n_pos
    rank_sum = np.bincount(group_id, weights=rank * y, minlength=n_groups)
    valid = (n_pos > 0) & (n_neg > 0)
    if not valid.any():
        return float("nan")
    group_auc = (rank_sum[valid] - n_pos[valid] * (n_pos[valid] + 1) / 2.0) / (n_pos[valid] * n_neg[valid])
    return float(np.average(group_auc, weights=size[valid]))


def logloss(labels: np.ndarray, probs: np.ndarray, eps: float = 1e-7) -> float:
    """Mean binary cross-entropy of probabilities (clipped to ``[eps, 1 - eps]``)."""
    y = np.asarray(labels, dtype=np.float64)
    p = np.clip(np.asarray(probs, dtype=np.float64), eps, 1 - eps)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log1p(-p)))
