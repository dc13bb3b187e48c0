"""Task types and per-task model selection: a regression task from a dataset config to a served number;
``train.select: per_task`` keeping each task's own best epoch."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from fakes import tiny_dataset
from mtrec.data.batches import gather_batch
from mtrec.data.dataset import PreparedDataset
from mtrec.data.prepare import prepare_dataset
from mtrec.data.readers import DataFormatError
from mtrec.export.onnx import export_checked, parity_batches
from mtrec.features.schema import DatasetSchema, SchemaError, TaskSpec
from mtrec.metrics import evaluate_tasks
from mtrec.training.checkpoint import WEIGHTS, load_model
from mtrec.training.config import RunConfig, TrainConfig
from mtrec.training.run import train_run
from mtrec.training.trainer import Trainer

pytestmark = pytest.mark.usefixtures("one_thread")

CONFIG = """
name: shop
source: {path: PATH}
features:
  sparse: [{name: user_id, column: user}, {name: item_id, column: item}]
  dense: [{name: price, column: price}]
tasks:
  - {name: click, label: click}
  - {name: spend, label: spend, type: regression, log1p: true, loss: LOSS}
user_id: user_id
split: {kind: random, seed: 0, fractions: [0.6, 0.2, 0.2]}
"""


def write_shop(root: Path, rows: int = 1500, loss: str = "mse", bad: str | None = None) -> Path:
    """A CSV whose ``spend`` grows with price (0 on most rows) and its dataset config."""
    rng = np.random.default_rng(0)
    price = rng.gamma(2.0, 10.0, rows).round(2)
    click = (rng.random(rows) < 1 / (1 + np.exp(-(price - 20) / 10))).astype(int)
    spend = (click * price * rng.uniform(0.5, 1.5, rows)).round(2)
    lines = ["user,item,price,click,spend"]
    users, items = rng.integers(20, size=rows), rng.integers(30, size=rows)
    lines += [f"u{u},i{i},{p},{c},{s}" for u, i, p, c, s in zip(users, items, price, click, spend, strict=True)]
    if bad is not None:
        lines[11] = f"u1,i1,3.0,1,{bad}"
    (root / "shop.csv").write_text("\n".join(lines) + "\n")
    config = root / "shop.yaml"
    config.write_text(CONFIG.replace("PATH", str(root / "shop.csv")).replace("LOSS", loss))
    return config


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("shop")
    prepare_dataset(write_shop(root), root / "prepared", progress=False, log=lambda _: None)
    return root / "prepared"


def test_regression_labels_are_prepared_as_numbers(shop: Path) -> None:
    data = PreparedDataset.load(shop)
    spend = data.schema.task("spend")
    assert spend.type == "regression" and not spend.is_binary
    values = np.asarray(data.labels)[:, 1]
    assert values.min() == 0.0 and values.max() > 2.0  # log1p of amounts up to about 100
    assert not set(np.unique(values)) <= {0.0, 1.0}


def test_a_regression_task_trains_and_is_evaluated_by_rmse_and_mae(shop: Path, tmp_path: Path) -> None:
    config = RunConfig(model="mmoe", data=str(shop), model_options={"expert_sizes": [16], "tower_sizes": [8]},
                       train=TrainConfig(epochs=4, batch_size=64, lr=3e-3, num_threads=1, patience=4))
    metrics = train_run(config, tmp_path / "run", log=lambda _: None)
    assert set(metrics["test"]["spend"]) == {"rmse", "mae", "r2", "rows"}
    assert "auc" in metrics["test"]["click"]
    history = [json.loads(line) for line in (tmp_path / "run" / "history.jsonl").read_text().splitlines()]
    losses = [row["train_loss"]["spend"] for row in history]
    assert losses[-1] < 0.7 * losses[0]
    assert metrics["test"]["spend"]["r2"] > 0.1  # spend follows price: better than predicting the mean


def test_a_regression_task_serves_a_number(shop: Path, tmp_path: Path) -> None:
    config = RunConfig(model="shared_bottom", data=str(shop), train=TrainConfig(epochs=2, batch_size=64, lr=3e-3,
                                                                                  num_threads=1))
    train_run(config, tmp_path / "run", log=lambda _: None)
    scorer, saved = load_model(tmp_path / "run")
    data = PreparedDataset.load(shop)
    with torch.no_grad():
        spend = scorer(gather_batch(data, data.splits["test"]).features)["spend"]
    assert spend.max() > 1.0  # a value, not a probability
    batches, source = parity_batches(scorer.schema, saved, rows=256)
    assert export_checked(scorer, batches, source).parity.ok


def test_huber_loss_is_chosen_per_task(tmp_path: Path) -> None:
    prepare_dataset(write_shop(tmp_path, rows=300, loss="huber"), tmp_path / "p", progress=False, log=lambda _: None)
    assert PreparedDataset.load(tmp_path / "p").schema.task("spend").loss_name == "huber"


def test_a_regression_label_that_is_not_a_number_is_named(tmp_path: Path) -> None:
    config = write_shop(tmp_path, rows=300, bad="lots")
    with pytest.raises(DataFormatError, match=r"line 12.*'spend'.*lots"):
        prepare_dataset(config, tmp_path / "p", progress=False, log=lambda _: None)
    config = write_shop(tmp_path, rows=300, bad="-4")
    with pytest.raises(DataFormatError, match=r"line 12.*>= 0 \(log1p\).*'-4'"):
        prepare_dataset(config, tmp_path / "p", progress=False, log=lambda _: None)


def test_schema_checks_task_types() -> None:
    with pytest.raises(SchemaError, match="type must be one of"):
        DatasetSchema(tasks=(TaskSpec("spend", type="count"),))
    with pytest.raises(SchemaError, match="loss must be one of"):
        DatasetSchema(tasks=(TaskSpec("spend", type="regression", loss="bce"),))
    with pytest.raises(SchemaError, match="must name a binary task"):
        DatasetSchema(tasks=(TaskSpec("spend", type="regression"), TaskSpec("click", observed_after="spend")))


def test_mixed_metrics_skip_auc_for_regression() -> None:
    y = {"a": np.array([0.0, 1.0, 1.0]), "b": np.array([1.0, 2.0, 4.0])}
    p = {"a": np.array([0.2, 0.7, 0.9]), "b": np.array([1.0, 2.0, 3.0])}
    masks = {t: np.ones(3) for t in y}
    metrics = evaluate_tasks(p, y, masks, regression=frozenset({"b"}))
    assert metrics["a"]["auc"] == 1.0
    assert metrics["b"]["rmse"] == pytest.approx(np.sqrt(1 / 3)) and metrics["b"]["mae"] == pytest.approx(1 / 3)


# ---- per-task model selection ---------------------------------------------------------------------------

def test_per_task_selection_keeps_each_tasks_own_best_epoch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Validation scores are made to peak at epoch 0 for click and epoch 2 for conversion: each task keeps
    the weights of its own epoch, the run directory stores both, and test reads each task from its own."""
    data = tiny_dataset(rows=300)
    peaks = {"click": [0.7, 0.6, 0.65, 0.6], "conversion": [0.6, 0.65, 0.8, 0.7]}
    snapshots: list[dict[str, torch.Tensor]] = []
    real_predict = Trainer._predict

    def predict(self: Trainer, scorer, dataset, split):  # type: ignore[no-untyped-def]
        if split != "valid":
            return real_predict(self, scorer, dataset, split)
        epoch = len(snapshots)
        snapshots.append({k: v.clone() for k, v in self.model.state_dict().items()})
        fixed = {t: {"auc": s[epoch], "logloss": 0.5, "rows": 10.0} for t, s in peaks.items()}
        return type("Fixed", (), {"metrics": lambda _: fixed})()

    monkeypatch.setattr(Trainer, "_predict", predict)
    config = RunConfig(model="mmoe", data="unused", model_options={"expert_sizes": [8], "tower_sizes": [4]},
                       train=TrainConfig(epochs=4, batch_size=32, num_threads=1, patience=3, select="per_task"))
    metrics = train_run(config, tmp_path / "run", dataset=data, log=lambda _: None)
    assert metrics["best_epochs"] == {"click": 0, "conversion": 2}
    assert metrics["valid"]["click"]["auc"] == 0.7 and metrics["valid"]["conversion"]["auc"] == 0.8

    from safetensors.torch import load_file

    stored = load_file(str(tmp_path / "run" / WEIGHTS))
    for task, epoch in metrics["best_epochs"].items():
        for name, value in snapshots[epoch].items():
            torch.testing.assert_close(stored[f"{task}.{name}"], value, rtol=0, atol=0)
    scorer, _ = load_model(tmp_path / "run")
    assert scorer.per_task
    features = gather_batch(data, data.splits["test"]).features
    with torch.no_grad():
        got = scorer(features)
        for task in ("click", "conversion"):
            own = scorer.models[task]
            assert torch.equal(got[task], scorer.objective.predictions(own(features))[task])
    heads = [scorer.models[t].towers.layers[0].weight for t in ("click", "conversion")]
    assert not torch.equal(*heads)  # two epochs' weights
