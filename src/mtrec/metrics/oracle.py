"""The oracle and the linear baseline of a dataset with planted ground truth (synthetic data).

:func:`oracle_auc` reads the AUC of the true probabilities (the dataset's ``oracle`` block), the best a
model can reach on the same rows; :func:`logistic_regression_auc` fits the linear baseline the synthetic
data is designed to defeat (scikit-learn, imported when called).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mtrec.data.dataset import PreparedDataset
from mtrec.features.schema import FIRST_ID
from mtrec.metrics.ranking import auc
from mtrec.metrics.scenarios import per_scenario, scenario_names
from mtrec.metrics.values import value_metrics


def _split_rows(dataset: PreparedDataset, split: str) -> np.ndarray:
    if split == "all":
        return np.arange(dataset.num_rows)
    if split not in dataset.splits:
        raise KeyError(f"unknown split {split!r}; the dataset has {sorted(dataset.splits)} (or 'all')")
    return np.asarray(dataset.splits[split])


def observed_rows(dataset: PreparedDataset, task: str, rows: np.ndarray) -> np.ndarray:
    """The subset of ``rows`` where ``task`` is observed (its ``observed_after`` task's label is 1)."""
    spec = dataset.schema.task(task)
    if spec.observed_after is None:
        return rows
    col = dataset.schema.task_names.index(spec.observed_after)
    return rows[np.asarray(dataset.labels[rows, col]) == 1]


def oracle_auc(dataset: PreparedDataset, split: str = "test") -> dict[str, float]:
    """AUC of the true probabilities per binary task on ``split`` ("all" for every row), each task on its
    observed rows. NaN where a task has a single class there. ValueError if the dataset has no oracle."""
    return {task: m["auc"] for task, m in oracle_metrics(dataset, split).items() if "auc" in m}


def oracle_metrics(dataset: PreparedDataset, split: str = "test") -> dict[str, dict[str, float]]:
    """The oracle's metrics per task on ``split``, as a model's are computed: AUC of a binary task's true
    probabilities on its observed rows; the value metrics (:func:`~mtrec.metrics.value_metrics`) of a value
    task's true expected value per row (the synthetic value presets' ``spend``), on every row (the value 0
    where it was not observed). ValueError if the dataset has no oracle."""
    if dataset.oracle is None:
        raise ValueError("this dataset has no oracle block (only synthetic datasets carry true probabilities)")
    return _oracle_on(dataset, dataset.oracle, _split_rows(dataset, split))


def oracle_metrics_by_scenario(dataset: PreparedDataset, split: str = "test") -> dict[str, dict[str, dict[str, float]]]:
    """The oracle's metrics (:func:`oracle_metrics`) over each scenario's rows of ``split``: ``{scenario: {task:
    metrics}}``, scenarios named by their raw values; empty for a dataset without a scenario. ValueError if the
    dataset has no oracle."""
    column = dataset.schema.scenario_column
    if column is None:
        return {}
    oracle = dataset.oracle
    if oracle is None:
        raise ValueError("this dataset has no oracle block (only synthetic datasets carry true probabilities)")
    rows = _split_rows(dataset, split)
    ids = np.asarray(dataset.sparse[rows, column])
    return per_scenario(ids, scenario_names(dataset.schema, dataset.encoders),
                        lambda mask: _oracle_on(dataset, oracle, rows[mask]))


def _oracle_on(dataset: PreparedDataset, oracle: np.ndarray, rows: np.ndarray) -> dict[str, dict[str, float]]:
    """The oracle's metrics per task on ``rows`` (see :func:`oracle_metrics`); ``oracle``: the dataset's
    oracle block ``[N, T]``."""
    result = {}
    for t, spec in enumerate(dataset.schema.tasks):
        if spec.is_binary:
            obs = observed_rows(dataset, spec.name, rows)
            result[spec.name] = {"auc": auc(np.asarray(dataset.labels[obs, t]), np.asarray(oracle[obs, t]))}
            continue
        labels = np.asarray(dataset.labels[rows, t], dtype=np.float64)
        labels = np.expm1(labels) if spec.transform == "log1p" else labels
        result[spec.name] = value_metrics(labels, np.asarray(oracle[rows, t]))
    return result


def raw_feature_matrix(dataset: PreparedDataset, rows: np.ndarray) -> Any:
    """The raw features of ``rows`` as a sparse CSR matrix ``[len(rows), n_columns]``: one-hot sparse ids,
    dense values, and each history as a bag of item ids (count / length). No crosses."""
    from scipy import sparse as sp

    schema = dataset.schema
    n = len(rows)
    blocks = []
    ids = np.asarray(dataset.sparse[rows])
    for f, feature in enumerate(schema.sparse):
        blocks.append(sp.csr_matrix((np.ones(n), (np.arange(n), ids[:, f])), shape=(n, feature.vocab_size)))
    blocks.append(sp.csr_matrix(np.asarray(dataset.dense[rows], dtype=np.float64)))
    for seq in schema.sequences:
        items = np.asarray(dataset.sequences[seq.name][rows])
        length = np.maximum((items > 0).sum(1, keepdims=True), 1)
        value = (items > 0) / length  # [n, L]
        row_index = np.repeat(np.arange(n), seq.max_len)
        bag = sp.csr_matrix((value.ravel(), (row_index, items.ravel())), shape=(n, seq.vocab_size))
        bag.sum_duplicates()
        blocks.append(bag[:, FIRST_ID:])  # drop the padding column
    return sp.hstack(blocks, format="csr")


def logistic_regression_auc(
    dataset: PreparedDataset, split: str = "test", c: float = 0.1, max_train_rows: int | None = None
) -> dict[str, float]:
    """Test AUC per binary task of an L2 logistic regression on :func:`raw_feature_matrix` (no crosses),
    fitted on the train split (each task on its observed rows, at most ``max_train_rows`` of them): the
    linear baseline the synthetic data is designed to defeat."""
    from sklearn.linear_model import LogisticRegression

    train = _split_rows(dataset, "train")
    if max_train_rows is not None:
        train = train[:max_train_rows]
    evaluate = _split_rows(dataset, split)
    result = {}
    for t, name in enumerate(dataset.schema.task_names):
        if not dataset.schema.tasks[t].is_binary:
            continue
        fit_rows = observed_rows(dataset, name, train)
        eval_rows = observed_rows(dataset, name, evaluate)
        y = np.asarray(dataset.labels[fit_rows, t])
        model = LogisticRegression(C=c, max_iter=300)
        model.fit(raw_feature_matrix(dataset, fit_rows), y)
        scores = model.decision_function(raw_feature_matrix(dataset, eval_rows))
        result[name] = auc(np.asarray(dataset.labels[eval_rows, t]), scores)
    return result
