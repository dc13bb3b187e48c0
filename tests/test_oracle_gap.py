"""The synthetic data is learnable: a trained MMoE gets within 0.02 AUC of the oracle on `easy`."""

from __future__ import annotations

from pathlib import Path

import pytest

from mtrec.data.synthetic import make_synthetic
from mtrec.metrics.oracle import oracle_auc
from mtrec.training.config import RunConfig, TrainConfig
from mtrec.training.run import train_run


@pytest.mark.slow
def test_mmoe_reaches_the_oracle_on_easy(tmp_path: Path) -> None:
    data = make_synthetic("easy")
    oracle = oracle_auc(data, "test")
    assert all(value > 0.7 for value in oracle.values())
    config = RunConfig(
        model="mmoe",
        data="synthetic:easy",
        model_options={"expert_sizes": [128, 64], "tower_sizes": [32]},
        train=TrainConfig(epochs=5, patience=1, batch_size=1024, lr=2e-3),
    )
    metrics = train_run(config, tmp_path / "run", dataset=data, log=lambda _: None)
    for task, value in oracle.items():
        assert metrics["test"][task]["auc"] > value - 0.02, (task, metrics["test"][task]["auc"], value)
