"""The plots' contract: what a reader needs to read them right (error bars only from several seeds, epochs
numbered as the logs number them in whole numbers, panel titles apart, each ROC curve's AUC)."""

from __future__ import annotations

import itertools
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pytest
from matplotlib.container import ErrorbarContainer
from matplotlib.figure import Figure

from mtrec.bench.report import auc_bars_figure, learning_curves_by_model_figure
from mtrec.metrics import auc
from mtrec.training.plots import learning_curves_figure, roc_figure

TASKS = ["click", "conversion"]
MODELS = ["shared_bottom", "mmoe", "ple", "esmm", "dcrnn", "dtrn"]


def run(model: str, seed: int, data: str = "synthetic:conflict:100000") -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    return {"data": data, "model": model, "tasks": TASKS, "oracle": {t: {"auc": 0.85} for t in TASKS},
            "test": {t: {"auc": 0.77 + 0.01 * rng.random()} for t in TASKS}}


def history(epochs: int) -> list[dict[str, Any]]:
    return [{"epoch": e, "train_loss": {t: 0.6 - 0.01 * e for t in TASKS},
             "valid": {t: {"auc": 0.7 + 0.01 * e} for t in TASKS}} for e in range(epochs)]


@pytest.fixture(autouse=True)
def _close_figures() -> Any:
    yield
    plt.close("all")


def test_error_bars_only_where_a_model_has_several_seeds() -> None:
    def error_bars(fig: Figure) -> list[int]:
        return [sum(isinstance(c, ErrorbarContainer) for c in ax.containers) for ax in fig.axes]

    assert error_bars(auc_bars_figure([run(m, 0) for m in MODELS])) == [0, 0]
    assert error_bars(auc_bars_figure([run(m, s) for m in MODELS for s in range(3)])) == [1, 1]


def test_panel_titles_do_not_overlap() -> None:
    long_label = "configs/datasets/census_income_standard.yaml"
    figures = [auc_bars_figure([run(m, s, d) for d in ("synthetic:conflict:100000", long_label)
                                for m in MODELS for s in range(3)]),
               learning_curves_by_model_figure({m: [history(4)] for m in MODELS}, TASKS, title=long_label)]
    for fig in figures:
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()  # type: ignore[attr-defined]
        boxes = [ax.title.get_window_extent(renderer) for ax in fig.axes if ax.get_visible()]
        boxes += [text.get_window_extent(renderer) for text in fig.texts]  # the suptitle
        assert len(boxes) >= 3
        for a, b in itertools.combinations(boxes, 2):
            assert not a.overlaps(b), (a, b)


@pytest.mark.parametrize("build", ["run", "by_model"])
def test_epochs_counted_from_zero_in_whole_ticks(build: str) -> None:
    if build == "run":
        fig = learning_curves_figure(history(3), TASKS)
    else:
        fig = learning_curves_by_model_figure({"mmoe": [history(3)], "ple": [history(2)]}, TASKS)
    fig.canvas.draw()
    for ax in fig.axes:
        assert list(ax.get_lines()[0].get_xdata()) == [0, 1, 2]  # as history.jsonl and the log count
        ticks = ax.get_xticks()
        assert np.array_equal(ticks, np.round(ticks)), ticks


def test_roc_legend_gives_each_task_its_auc() -> None:
    rng = np.random.default_rng(0)
    labels = {t: rng.integers(0, 2, 500) for t in TASKS}
    probs = {t: np.clip(0.3 * labels[t] + 0.7 * rng.random(500), 0, 1) for t in TASKS}
    fig = roc_figure(probs, labels, {t: np.ones(500) for t in TASKS})
    legend = [text.get_text() for text in fig.axes[0].get_legend().get_texts()]
    assert legend[:2] == [f"{t} (AUC {auc(labels[t], probs[t]):.4f})" for t in TASKS]
