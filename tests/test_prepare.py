"""Dataset configs, raw readers and `prepare` on small generated CSV/Parquet files."""

from __future__ import annotations

import gzip
import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from mtrec.cli import cli
from mtrec.data.config import DatasetConfigError, parse_dataset_config
from mtrec.data.dataset import PreparedDataset
from mtrec.data.prepare import BlockMoments, prepare_dataset
from mtrec.data.readers import DataFormatError
from mtrec.features.encoders import FeatureEncoders
from mtrec.features.schema import OOV_ID

HEADER = ["user", "item", "price", "tags", "click", "buy", "day"]


def _rows(n: int = 60, seed: int = 0) -> list[list[str]]:
    """Rows whose item ``new`` appears only from day 20 on (valid/test of the column split)."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        day = i % 30
        click = int(rng.random() < 0.5)
        buy = click * int(rng.random() < 0.5)
        item = "new" if day >= 20 and i % 3 == 0 else f"i{rng.integers(0, 5)}"
        price = "?" if i % 11 == 0 else f"{rng.random() * 100:.3f}"
        tags = "|".join(f"t{t}" for t in rng.integers(0, 4, rng.integers(0, 6)))
        rows.append([f"u{i % 7}", item, price, tags, str(click), str(buy), str(day)])
    return rows


def _write_csv(path: Path, rows: list[list[str]], header: list[str] | None = HEADER, sep: str = ",") -> Path:
    lines = ([sep.join(header)] if header else []) + [sep.join(r) for r in rows]
    text = "\n".join(lines) + "\n"
    if path.suffix == ".gz":
        with gzip.open(path, "wt") as fh:
            fh.write(text)
    else:
        path.write_text(text)
    return path


def _config(path: Path | str, **overrides: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "name": "toy",
        "source": {"path": str(path), "missing_values": ["?"]},
        "features": {
            "sparse": ["user", {"name": "item", "min_count": 1}],
            "dense": [{"name": "price", "log1p": True}],
            "sequences": [{"name": "hist", "column": "tags", "separator": "|", "max_len": 3, "keep": "last"}],
        },
        "tasks": [{"name": "click"}, {"name": "buy", "observed_after": "click"}],
        "user_id": "user",
        "split": {"kind": "column", "column": "day", "train": {"to": 20}, "valid": {"from": 20, "to": 25},
                  "test": {"from": 25}},
    }
    config.update(overrides)
    if config["split"].get("kind") != "column":
        config["ignore"] = ["day"]
    return config


def _prepare(raw: dict[str, Any], out: Path, **kwargs: Any) -> PreparedDataset:
    return prepare_dataset(parse_dataset_config(raw, "toy.yaml"), out, progress=False, log=lambda _: None,
                           **kwargs)


def _digest(directory: Path, skip: tuple[str, ...] = ("prepare.json", "complete.json")) -> dict[str, str]:
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file() and p.name not in skip}


# ---- prepare: content -------------------------------------------------------------------------------
def test_prepare_writes_blocks_schema_and_encoders(tmp_path: Path) -> None:
    rows = _rows()
    csv = _write_csv(tmp_path / "toy.csv", rows)
    data = _prepare(_config(csv), tmp_path / "out")
    s = data.schema
    assert [f.name for f in s.sparse] == ["user", "item"] and s.user_id == "user"
    assert s.tasks[1].observed_after == "click"
    assert data.sparse.shape == (60, 2) and data.dense.shape == (60, 1)
    assert data.sequences["hist"].shape == (60, 3)
    days = np.array([int(r[6]) for r in rows])
    np.testing.assert_array_equal(data.splits["train"], np.flatnonzero(days < 20))
    np.testing.assert_array_equal(data.splits["test"], np.flatnonzero(days >= 25))
    np.testing.assert_array_equal(data.labels[:, 0], [int(r[4]) for r in rows])
    # the stored blocks are what the saved encoders make of the raw values
    encoders = FeatureEncoders.load(tmp_path / "out" / "encoders.json")
    raw = {"user": [r[0] for r in rows], "item": [r[1] for r in rows], "price": [r[2] for r in rows],
           "hist": [r[3] for r in rows]}
    sparse, dense, seqs = encoders.encode(raw, s)
    np.testing.assert_array_equal(sparse, data.sparse)
    np.testing.assert_array_equal(dense, data.dense)
    np.testing.assert_array_equal(seqs["hist"], data.sequences["hist"])
    # dense statistics come from the train rows: standardised train values have mean 0, std 1
    train = data.dense[data.splits["train"], 0]
    present = np.array([rows[i][2] != "?" for i in data.splits["train"]])
    assert abs(train[present].mean()) < 1e-5 and abs(train[present].std() - 1) < 1e-4
    assert np.all(train[~present] == 0.0)  # missing -> fill (the train mean)


def test_vocabularies_are_fitted_on_train_only(tmp_path: Path) -> None:
    rows = _rows()
    data = _prepare(_config(_write_csv(tmp_path / "toy.csv", rows)), tmp_path / "out")
    encoders = FeatureEncoders.load(tmp_path / "out" / "encoders.json")
    assert "new" not in encoders.vocabularies["item"].index
    new_rows = [i for i, r in enumerate(rows) if r[1] == "new"]
    assert new_rows and all(i not in set(data.splits["train"]) for i in new_rows)
    assert np.all(data.sparse[new_rows, 1] == OOV_ID)
    assert np.all(data.sparse[data.splits["train"], 1] >= 2)


def test_prepare_is_deterministic_and_chunk_size_independent(tmp_path: Path) -> None:
    csv = _write_csv(tmp_path / "toy.csv", _rows(90))
    config = _config(csv, split={"kind": "random", "seed": 3, "fractions": [0.6, 0.2, 0.2]})
    _prepare(config, tmp_path / "a")
    _prepare(config, tmp_path / "b")
    _prepare(config, tmp_path / "c", chunk_rows=7)
    a = _digest(tmp_path / "a", skip=())
    assert a == _digest(tmp_path / "b", skip=())
    assert a == _digest(tmp_path / "c", skip=())


def test_block_moments_do_not_depend_on_chunking() -> None:
    values = np.random.default_rng(1).normal(5, 3, size=(1000, 2))
    values[::17, 1] = np.nan
    results = []
    for sizes in ([1000], [1, 2, 3, 994], [333, 333, 334], [10] * 100):
        m = BlockMoments(2, block=64)
        start = 0
        for size in sizes:
            m.add(values[start : start + size])
            start += size
        results.append(m.finish())
    for r in results[1:]:
        for x, y in zip(results[0], r, strict=True):
            assert np.array_equal(x, y)
    np.testing.assert_allclose(results[0][1], np.nanmean(values, axis=0))
    np.testing.assert_allclose(results[0][2], np.nanstd(values, axis=0))


def test_gzip_and_parquet_give_the_same_dataset(tmp_path: Path) -> None:
    rows = _rows()
    _prepare(_config(_write_csv(tmp_path / "toy.csv", rows)), tmp_path / "csv")
    _prepare(_config(_write_csv(tmp_path / "toy.csv.gz", rows)), tmp_path / "gz")
    table = pa.table({
        "user": [r[0] for r in rows], "item": [r[1] for r in rows],
        "price": [None if r[2] == "?" else float(r[2]) for r in rows], "tags": [r[3] for r in rows],
        "click": [int(r[4]) for r in rows], "buy": [int(r[5]) for r in rows], "day": [int(r[6]) for r in rows],
    })
    pq.write_table(table, tmp_path / "toy.parquet")
    _prepare(_config(tmp_path / "toy.parquet"), tmp_path / "pq")
    reference = _digest(tmp_path / "csv")
    assert _digest(tmp_path / "gz") == reference
    assert _digest(tmp_path / "pq") == reference


def test_headerless_file_with_named_columns_and_other_separator(tmp_path: Path) -> None:
    rows = _rows()
    tsv = _write_csv(tmp_path / "toy.tsv", rows, header=None, sep="\t")
    config = _config(tsv)
    config["source"].update({"header": False, "separator": "\t", "columns": HEADER})
    _prepare(_config(_write_csv(tmp_path / "toy.csv", rows)), tmp_path / "ref")
    _prepare(config, tmp_path / "tsv")
    assert _digest(tmp_path / "tsv") == _digest(tmp_path / "ref")


def test_wide_sequence_from_a_repeated_header(tmp_path: Path) -> None:
    header = ["user", "h", "h", "h", "click"]
    rows = [["u1", "a", "b", "0", "1"], ["u2", "0", "0", "0", "0"], ["u1", "c", "a", "a", "0"],
            ["u3", "b", "0", "0", "1"]] * 5
    path = tmp_path / "wide.csv"
    path.write_text("\n".join(",".join(r) for r in [header, *rows]) + "\n")
    config = {"source": {"path": str(path)},
              "features": {"sparse": ["user"], "sequences": [{"name": "hist", "column": "h", "max_len": 2,
                                                              "pad_values": ["0"]}]},
              "tasks": [{"name": "click"}], "split": {"kind": "random", "seed": 0, "fractions": [0.5, 0.25, 0.25]}}
    data = _prepare(config, tmp_path / "out")
    vocab = FeatureEncoders.load(tmp_path / "out" / "encoders.json").vocabularies["hist"]
    expected = {0: ["a", "b"], 1: [], 2: ["c", "a"], 3: ["b"]}
    for row in range(4):
        ids = [vocab.index.get(v, OOV_ID) for v in expected[row]]
        assert data.sequences["hist"][row].tolist() == ids + [0] * (2 - len(ids))


def test_permutation_split_follows_the_protocol(tmp_path: Path) -> None:
    csv = _write_csv(tmp_path / "toy.csv", _rows(50))
    data = _prepare(_config(csv, split={"kind": "permutation", "seed": 2026, "fractions": [0.6, 0.2, 0.2]}),
                    tmp_path / "out", chunk_rows=8)
    perm = np.random.default_rng(2026).permutation(50)
    np.testing.assert_array_equal(data.splits["train"], np.sort(perm[:30]))
    np.testing.assert_array_equal(data.splits["valid"], np.sort(perm[30:40]))
    np.testing.assert_array_equal(data.splits["test"], np.sort(perm[40:]))


def test_given_files_with_a_carved_validation_split(tmp_path: Path) -> None:
    rows = _rows(80)
    (tmp_path / "raw").mkdir()
    _write_csv(tmp_path / "raw" / "train.csv", rows[:60])
    _write_csv(tmp_path / "raw" / "test.csv", rows[60:])
    config = _config(tmp_path / "raw", split={"kind": "files", "train": "train.csv", "test": "test.csv",
                                               "valid_fraction": 0.25, "seed": 1})
    data = _prepare(config, tmp_path / "out")
    np.testing.assert_array_equal(data.splits["test"], np.arange(60, 80))
    assert len(data.splits["train"]) + len(data.splits["valid"]) == 60
    assert 5 <= len(data.splits["valid"]) <= 25


@pytest.mark.parametrize(("valid", "test", "dropped"), [([0.0, 0.5], [0.5, 1.0], 0), ([0.1, 0.4], [0.6, 1.0], 15)])
def test_a_file_divided_between_splits(tmp_path: Path, valid: list[float], test: list[float],
                                       dropped: int) -> None:
    """valid and test take parts of one permuted file (the Census standard protocol); rows in no part
    are dropped, the train file is read whole."""
    rows = _rows(90)
    (tmp_path / "raw").mkdir()
    _write_csv(tmp_path / "raw" / "train.csv", rows[:40])
    _write_csv(tmp_path / "raw" / "other.csv", rows[40:])
    config = _config(tmp_path / "raw", split={
        "kind": "files", "train": "train.csv",
        "valid": {"file": "other.csv", "seed": 7, "part": valid},
        "test": {"file": "other.csv", "seed": 7, "part": test}})
    data = _prepare(config, tmp_path / "out")
    perm = np.random.default_rng(7).permutation(50)
    kept = np.full(50, -1)
    kept[np.sort(np.concatenate([perm[int(valid[0] * 50):int(valid[1] * 50)],
                                 perm[int(test[0] * 50):int(test[1] * 50)]]))] = np.arange(50 - dropped)
    np.testing.assert_array_equal(data.splits["train"], np.arange(40))
    np.testing.assert_array_equal(data.splits["valid"], 40 + np.sort(kept[perm[int(valid[0] * 50):int(valid[1] * 50)]]))
    np.testing.assert_array_equal(data.splits["test"], 40 + np.sort(kept[perm[int(test[0] * 50):int(test[1] * 50)]]))
    assert data.num_rows == 90 - dropped
    clicks = np.array([float(r[4]) for r in rows])
    np.testing.assert_array_equal(data.labels[40:, 0], clicks[40:][kept >= 0])


@pytest.mark.parametrize(("split", "message"), [
    ({"valid": {"file": "t.csv", "seed": 1, "part": [0, 0.5]}, "test": {"file": "t.csv", "seed": 2, "part": [0.5, 1]}},
     "toy.yaml: split.test.seed: parts of 't.csv' must share one seed"),
    ({"valid": {"file": "t.csv", "part": [0, 0.6]}, "test": {"file": "t.csv", "part": [0.5, 1]}},
     "toy.yaml: split: parts of 't.csv' for 'valid' [0.0, 0.6] and 'test' [0.5, 1.0] overlap"),
    ({"valid": {"file": "t.csv", "part": [0.5, 0.2]}, "test": "t.csv"},
     "toy.yaml: split.valid.part: expected [from, to] with 0 <= from < to <= 1, got [0.5, 0.2]"),
    ({"valid": {"file": "t.csv", "part": [0, 0.5]}, "test": "t.csv"},
     "toy.yaml: split.test: 't.csv' is named whole here but divided into parts for 'valid'"),
    ({"valid": {"file": "t.csv", "parts": [0, 0.5]}, "test": "t.csv"},
     "toy.yaml: split.valid.part: missing required key (and 1 more problem(s))"),
])
def test_bad_file_parts_are_named(split: dict[str, Any], message: str) -> None:
    config = _config("raw", split={"kind": "files", "train": "a.csv", **split})
    with pytest.raises(DatasetConfigError) as err:
        parse_dataset_config(config, "toy.yaml")
    assert str(err.value).startswith(message)


def test_label_with_positive_values(tmp_path: Path) -> None:
    path = tmp_path / "l.csv"
    path.write_text("x,y\n" + "".join(f"a{i % 3},{'yes' if i % 4 == 0 else 'no'}\n" for i in range(40)))
    config = {"source": {"path": str(path)}, "features": {"sparse": ["x"]},
              "tasks": [{"name": "t", "label": {"column": "y", "positive": ["yes"], "negative": ["no"]}}],
              "split": {"kind": "random", "fractions": [0.5, 0.25, 0.25]}}
    data = _prepare(config, tmp_path / "out")
    np.testing.assert_array_equal(data.labels[:, 0], [float(i % 4 == 0) for i in range(40)])


def test_cli_prepare(tmp_path: Path) -> None:
    import yaml

    config = tmp_path / "toy.yaml"
    config.write_text(yaml.safe_dump(_config(_write_csv(tmp_path / "toy.csv", _rows()))))
    result = CliRunner().invoke(cli, ["prepare", str(config), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert "60 rows" in result.output
    assert PreparedDataset.load(tmp_path / "out").num_rows == 60


def _country_files(raw: Path) -> Path:
    """``raw/shop_DE/{train,test}.csv`` and ``raw/shop_FR/{train,test}.parquet``, no column naming the country."""
    rows = _rows(80)
    for country, part, suffix in (("DE", rows[:40], ".csv"), ("FR", rows[40:], ".parquet")):
        (raw / f"shop_{country}").mkdir(parents=True)
        for split, chunk in (("train", part[:30]), ("test", part[30:])):
            path = raw / f"shop_{country}" / f"{split}{suffix}"
            if suffix == ".csv":
                _write_csv(path, chunk)
            else:
                pq.write_table(pa.table({h: [r[i] for r in chunk] for i, h in enumerate(HEADER)}), path)
    return raw


def _country_config(raw: Path, pattern: str = r"shop_([A-Z]+)/") -> dict[str, Any]:
    config = _config(raw, split={"kind": "files", "train": ["shop_DE/train.csv", "shop_FR/train.parquet"],
                                 "test": ["shop_DE/test.csv", "shop_FR/test.parquet"], "valid_fraction": 0.2})
    config["source"]["path_column"] = {"name": "country", "pattern": pattern}
    config["features"]["sparse"].append("country")
    config["scenario"] = "country"
    return config


def test_a_column_read_from_each_files_path(tmp_path: Path) -> None:
    """``source.path_column``: every row of a file gets the value the pattern's group finds in its path
    (CSV and Parquet files, several files per split)."""
    data = _prepare(_country_config(_country_files(tmp_path / "raw")), tmp_path / "out")
    vocab = FeatureEncoders.load(tmp_path / "out" / "encoders.json").vocabularies["country"]
    assert sorted(vocab.index) == ["DE", "FR"]
    ids = np.asarray(data.sparse)[:, data.schema.scenario_column]
    # rows in file order: shop_DE/train (30), shop_FR/train (30), shop_DE/test (10), shop_FR/test (10)
    expected = ["DE"] * 30 + ["FR"] * 30 + ["DE"] * 10 + ["FR"] * 10
    np.testing.assert_array_equal(ids, [vocab.index[c] for c in expected])
    np.testing.assert_array_equal(data.splits["test"], np.arange(60, 80))


@pytest.mark.parametrize(("pattern", "message"), [
    (r"AliExpress_([A-Z]+)/", "shop_DE/train.csv: source.path_column: pattern 'AliExpress_([A-Z]+)/' finds no "
                              "value of column 'country' in this file's path"),
    (r"shop_(FR)?", "shop_DE/train.csv: source.path_column: pattern 'shop_(FR)?' finds no value"),
])
def test_a_path_without_the_column_value_is_one_line_exit_2(tmp_path: Path, pattern: str, message: str,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    import yaml

    from mtrec.cli import main

    config = tmp_path / "shop.yaml"
    config.write_text(yaml.safe_dump(_country_config(_country_files(tmp_path / "raw"), pattern)))
    with pytest.raises(SystemExit) as exit_info:
        main(["prepare", str(config), "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {tmp_path / 'raw'}/") and message in lines[0]
    assert not (tmp_path / "out").exists()


def test_a_path_column_named_like_a_file_column_is_refused(tmp_path: Path) -> None:
    config = _country_config(_country_files(tmp_path / "raw"))
    config["source"]["path_column"]["name"] = "item"
    with pytest.raises(DataFormatError, match=r"shop_DE/train.csv: source.path_column: column 'item' is also in "
                                              r"the file"):
        _prepare(config, tmp_path / "out")


# ---- errors ------------------------------------------------------------------------------------------
def test_unknown_column_is_named_with_a_suggestion(tmp_path: Path) -> None:
    config = _config(_write_csv(tmp_path / "toy.csv", _rows()))
    config["features"]["sparse"] = [{"name": "user", "column": "usr"}, "item"]
    with pytest.raises(DatasetConfigError, match=r"unknown column 'usr'.*did you mean 'user'"):
        _prepare(config, tmp_path / "out")


def test_column_without_role_is_reported(tmp_path: Path) -> None:
    config = _config(_write_csv(tmp_path / "toy.csv", _rows()))
    config["features"]["sparse"] = ["user"]
    with pytest.raises(DatasetConfigError, match=r"\['item'\].*no role"):
        _prepare(config, tmp_path / "out")


def test_label_not_binary_names_file_line_and_column(tmp_path: Path) -> None:
    rows = _rows()
    rows[4][4] = "2"
    csv = _write_csv(tmp_path / "toy.csv", rows)
    with pytest.raises(DataFormatError, match=r"toy\.csv, line 6, column 'click'.*0 or 1, found '2'"):
        _prepare(_config(csv), tmp_path / "out")


def test_wrong_column_count_names_file_and_line(tmp_path: Path) -> None:
    rows = _rows()
    rows[9] = rows[9][:-1]
    csv = _write_csv(tmp_path / "toy.csv", rows)
    with pytest.raises(DataFormatError, match=r"toy\.csv, line 11: expected 7 columns .* found 6"):
        _prepare(_config(csv), tmp_path / "out")


def test_dense_value_not_a_number_names_file_line_and_column(tmp_path: Path) -> None:
    rows = _rows()
    rows[2][2] = "cheap"
    csv = _write_csv(tmp_path / "toy.csv", rows)
    with pytest.raises(DataFormatError, match=r"toy\.csv, line 4, column 'price'.*'cheap'"):
        _prepare(_config(csv), tmp_path / "out")


def test_conversion_without_click_is_reported(tmp_path: Path) -> None:
    rows = _rows()
    rows[3][4], rows[3][5] = "0", "1"
    csv = _write_csv(tmp_path / "toy.csv", rows)
    with pytest.raises(DataFormatError, match=r"line 5: task 'buy' is 1 where 'click'"):
        _prepare(_config(csv), tmp_path / "out")


def test_empty_split_is_reported(tmp_path: Path) -> None:
    csv = _write_csv(tmp_path / "toy.csv", _rows())
    split = {"kind": "column", "column": "day", "train": {"to": 20}, "valid": {"from": 100, "to": 200},
             "test": {"from": 20, "to": 100}}
    with pytest.raises(DataFormatError, match="split 'valid' is empty"):
        _prepare(_config(csv, split=split), tmp_path / "out")


@pytest.mark.parametrize(("change", "message"), [
    ({"splitt": {}}, "toy.yaml: splitt: unknown key .did you mean 'split'"),
    ({"split": {"kind": "random", "fractions": [0.5, 0.5]}}, "three positive numbers"),
    ({"split": {"kind": "shuffle"}}, "split.kind: must be one of 'random', 'permutation', 'column' or "
                                     "'files', got 'shuffle'"),
    ({"split": {"kind": "random", "seed": "7"}}, "split.seed: input should be a valid integer, got '7'"),
    ({"source": {"path": "x.csv", "header": "yes"}}, "source.header: input should be a valid boolean, got 'yes'"),
    ({"source": {"path": "x.csv", "chunk_rows": 0}}, "source.chunk_rows: must be >= 1, got 0"),
    ({"source": {"path": "x.csv", "separator": ", "}}, "source.separator: must be one character, got ', '"),
    ({"source": {"path": "x.csv", "format": "xlsx"}}, "source.format: must be one of"),
    ({"tasks": [{"name": "click", "loss": "mse"}]}, "tasks.0.*a binary task's loss is one of"),
    ({"tasks": []}, "tasks: .*at least 1 item"),
    ({"split": {"kind": "column", "column": "day", "train": {"to": 20}, "valid": {"from": 10, "to": 25},
                "test": {"from": 25}}}, "overlap"),
    ({"tasks": [{"name": "buy", "observed_after": "click"}, {"name": "click"}]}, "earlier task"),
    ({"user_id": "item_id"}, "user_id 'item_id' must name a sparse feature"),
    ({"source": {"path": "x", "path_column": {"name": "country", "pattern": "shop_[A-Z]+"}}},
     r"source.path_column.pattern: needs a group '\(...\)' whose match is the column's value"),
    ({"source": {"path": "x", "path_column": {"name": "country", "pattern": "shop_([A-Z]+"}}},
     "source.path_column.pattern: not a valid regular expression"),
    ({"source": {"path": "x", "path_column": {"name": "", "pattern": "shop_([A-Z]+)"}}},
     "source.path_column.name: must be a non-empty string"),
    ({"source": {"path": "x", "path_column": {"pattern": "shop_([A-Z]+)"}}}, "source.path_column.name: missing"),
])
def test_config_validation_errors(change: dict[str, Any], message: str) -> None:
    with pytest.raises(DatasetConfigError, match=message):
        parse_dataset_config(_config("x.csv", **change), "toy.yaml")


def test_missing_raw_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(DataFormatError, match="not found"):
        _prepare(_config(tmp_path / "nope.csv"), tmp_path / "out")
