"""The shipped dataset configs on the real samples in ../shared/data: prepare, then train one epoch."""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from conftest import require_shared_data
from mtrec.data.config import load_dataset_config, parse_dataset_config
from mtrec.data.dataset import PreparedDataset
from mtrec.data.prepare import prepare_dataset
from mtrec.training.config import RunConfig, TrainConfig
from mtrec.training.run import train_run

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "datasets"
TINY_MMOE = {"embedding_dim": 4, "num_experts": 2, "expert_sizes": [16], "tower_sizes": [8]}


def _train_one_epoch(data_dir: Path, out: Path) -> dict[str, Any]:
    config = RunConfig(model="mmoe", data=str(data_dir), model_options=dict(TINY_MMOE),
                       train=TrainConfig(epochs=1, batch_size=32, num_threads=1, prefetch=0))
    return train_run(config, out, log=lambda _: None)


def _prepare(config: str, raw: Path, out: Path) -> PreparedDataset:
    return prepare_dataset(CONFIGS / config, out, raw=raw, progress=False, log=lambda _: None)


@pytest.mark.parametrize(("config", "sample", "tasks", "sequences"), [
    ("ali_ccp.yaml", "samples/ali-ccp", ["click", "purchase"], []),
    ("aliexpress.yaml", "samples/aliexpress", ["click", "conversion"], []),
    ("taobao_ad.yaml", "samples/taobao-ad-sequences/alimama_sample_deepctr.txt", ["click"],
     ["hist_btag", "hist_cate", "hist_brand"]),
])
def test_sample_prepares_and_trains(config: str, sample: str, tasks: list[str], sequences: list[str],
                                    tmp_path: Path) -> None:
    shared = require_shared_data()
    data = _prepare(config, shared / sample, tmp_path / "data")
    assert data.schema.task_names == tasks
    assert [s.name for s in data.schema.sequences] == sequences
    assert all(data.split_size(s) > 0 for s in ("train", "valid", "test"))
    metrics = _train_one_epoch(tmp_path / "data", tmp_path / "run")
    assert set(metrics["test"]) == set(tasks) and metrics["epochs_run"] == 1
    assert (tmp_path / "run" / "encoders.json").is_file()


COUNTRIES = ("NL", "ES", "FR", "US")


def _deal_by_country(sample: Path, raw: Path) -> None:
    """A test fixture of the per-country layout, not per-country data: the rows of the shared AliExpress
    sample dealt in turn into ``raw/AliExpress_{NL,ES,FR,US}/{train,test}.csv`` (row i to country i % 4)."""
    for split in ("train", "test"):
        header, *rows = (sample / f"aliexpress_{split}_sample.csv").read_text().splitlines()
        for k, country in enumerate(COUNTRIES):
            folder = raw / f"AliExpress_{country}"
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"{split}.csv").write_text("\n".join([header, *rows[k::len(COUNTRIES)]]) + "\n")


def test_aliexpress_countries_become_scenarios(tmp_path: Path) -> None:
    """``aliexpress_countries.yaml`` reads each row's country from its file's directory; a STAR run then
    reports its test metrics per country."""
    shared = require_shared_data()
    _deal_by_country(shared / "samples/aliexpress", tmp_path / "raw")
    data = _prepare("aliexpress_countries.yaml", tmp_path / "raw", tmp_path / "data")
    assert data.schema.scenario == "country" and data.num_rows == 120
    encoders = data.load_encoders()
    assert encoders is not None
    country = encoders.vocabularies["country"]
    ids = np.asarray(data.sparse)[:, data.schema.scenario_column]
    assert [int((ids == country.index[c]).sum()) for c in COUNTRIES] == [30, 30, 30, 30]  # 25 train + 5 test
    config = RunConfig(model="star", data=str(tmp_path / "data"),
                       model_options={"embedding_dim": 4, "hidden_sizes": [8], "aux_sizes": [4]},
                       train=TrainConfig(epochs=1, batch_size=32, num_threads=1, prefetch=0))
    metrics = train_run(config, tmp_path / "run", log=lambda _: None)
    by_country = metrics["test_by_scenario"]
    assert sorted(by_country) == sorted(COUNTRIES)
    assert [by_country[c]["click"]["rows"] for c in COUNTRIES] == [5, 5, 5, 5]


def test_ali_ccp_layout(tmp_path: Path) -> None:
    shared = require_shared_data()
    data = _prepare("ali_ccp.yaml", shared / "samples/ali-ccp", tmp_path / "data")
    assert len(data.schema.sparse) == 23 and [d.name for d in data.schema.dense][:2] == ["D109_14", "D110_14"]
    assert (data.split_size("train"), data.split_size("valid"), data.split_size("test")) == (100, 50, 50)
    assert data.schema.task("purchase").observed_after == "click"


def test_taobao_histories_share_the_candidate_tables(tmp_path: Path) -> None:
    shared = require_shared_data()
    data = _prepare("taobao_ad.yaml", shared / "samples/taobao-ad-sequences/alimama_sample_deepctr.txt",
                    tmp_path / "data")
    cate = next(s for s in data.schema.sequences if s.name == "hist_cate")
    assert cate.table_name == "cate_id" and cate.target == "cate_id" and cate.max_len == 50
    first = (shared / "samples/taobao-ad-sequences/alimama_sample_deepctr.txt").read_text().splitlines()[1]
    fields = first.split(",")
    raw_cates = [v for v in fields[50:100] if v != "0"]
    ids = data.sequences["hist_cate"][0]
    assert int((ids > 0).sum()) == len(raw_cates)
    # the same raw category has the same id in the history and as the candidate's cate_id
    cate_col = [f.name for f in data.schema.sparse].index("cate_id")
    same = [i for i, v in enumerate(raw_cates) if v == fields[260]]
    if same and data.sparse[0, cate_col] > 1:
        assert all(ids[i] == data.sparse[0, cate_col] for i in same)


def _census_config_with_row_index() -> dict[str, Any]:
    """The Census config for DeepCTR's sample of the UCI train file: the same raw format plus a leading
    row-index column."""
    raw = yaml.safe_load((CONFIGS / "census_income.yaml").read_text())
    raw["source"]["columns"] = ["row_index", *raw["source"]["columns"]]
    raw["ignore"] = [*raw["ignore"], "row_index"]
    return raw


def test_census_sample_of_the_train_file(tmp_path: Path) -> None:
    shared = require_shared_data()
    config = parse_dataset_config(_census_config_with_row_index(), "census sample")
    data = prepare_dataset(config, tmp_path / "data", raw=shared / "samples/census-income/census-income.sample",
                           progress=False, log=lambda _: None)
    assert data.num_rows == 200 and len(data.schema.sparse) == 32 and len(data.schema.dense) == 7
    metrics = _train_one_epoch(tmp_path / "data", tmp_path / "run")
    assert set(metrics["test"]) == {"income", "marital"}


def test_census_config_follows_the_benchmark_protocol(tmp_path: Path) -> None:
    """The full raw file: labels, features and the permutation split of BENCHMARKS.md."""
    shared = require_shared_data()
    raw_path = shared / "census-income-kdd/census-income.test.gz"
    config = load_dataset_config(CONFIGS / "census_income.yaml")
    data = prepare_dataset(config, tmp_path / "data", raw=raw_path, progress=False, log=lambda _: None)
    with gzip.open(raw_path, "rt") as fh:
        rows = [line.split(",") for line in fh.read().splitlines()]
    n = len(rows)
    assert n == 99762 == data.num_rows
    perm = np.random.default_rng(2026).permutation(n)
    a, b = int(0.6 * n), int(0.6 * n) + int(0.2 * n)
    for split, idx in (("train", perm[:a]), ("valid", perm[a:b]), ("test", perm[b:])):
        np.testing.assert_array_equal(data.splits[split], np.sort(idx))
    income = np.array([r[41].strip() == "50000+." for r in rows])
    marital = np.array([r[7].strip() == "Never married" for r in rows])
    np.testing.assert_array_equal(data.labels[:, 0], income)
    np.testing.assert_array_equal(data.labels[:, 1], marital)
    names = [f.name for f in (*data.schema.sparse, *data.schema.dense)]
    assert "marital_stat" not in names and "instance_weight" not in names and "income" not in names
    assert [d.name for d in data.schema.dense] == [
        "age", "wage_per_hour", "capital_gains", "capital_losses", "dividends_from_stocks",
        "num_persons_worked_for_employer", "weeks_worked_in_year"]
    assert len(names) == 39  # 42 fields - instance weight - two label fields
