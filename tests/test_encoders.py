"""FeatureEncoders: raw values -> model input, the contract shared by prepare and serving."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mtrec.features.encoders import (
    DenseTransform,
    EncodingError,
    FeatureEncoders,
    SequenceFormat,
    canonical_strings,
)
from mtrec.features.schema import DatasetSchema, DenseFeature, SequenceFeature, SparseFeature, TaskSpec
from mtrec.features.vocab import Vocabulary


def _schema() -> DatasetSchema:
    return DatasetSchema(
        sparse=(SparseFeature("city", 4), SparseFeature("item", 5)),
        dense=(DenseFeature("price"),),
        sequences=(SequenceFeature("hist", 5, 3, "click", table="item", target="item"),),
        tasks=(TaskSpec("click"),),
    )


def _encoders(keep: str = "first") -> FeatureEncoders:
    return FeatureEncoders(
        vocabularies={"city": Vocabulary.from_list(["paris", "rome"]),
                      "item": Vocabulary.from_list(["10", "11", "12"])},
        dense={"price": DenseTransform(log1p=True, mean=1.0, std=2.0)},
        sequences={"hist": SequenceFormat(separator="|", pad_values=("0",), keep=keep)},
        missing_values=("?",),
        strip=True,
    )


def test_encode_maps_raw_values_to_ids_and_unseen_to_oov() -> None:
    sparse, dense, seqs = _encoders().encode(
        {"city": ["paris", " rome", "oslo", None], "item": [10, 11.0, "12", 99],
         "price": [0.0, "?", None, "3"], "hist": ["10|11|0", "", None, "12|12|99|10"]},
        _schema(),
    )
    assert sparse.dtype == np.int32 and sparse.shape == (4, 2)
    assert sparse.tolist() == [[2, 2], [3, 3], [1, 4], [1, 1]]
    # price: log1p then standardise; missing -> fill 0
    expected = [(np.log1p(0.0) - 1) / 2, 0.0, 0.0, (np.log1p(3.0) - 1) / 2]
    np.testing.assert_allclose(dense[:, 0], expected, rtol=1e-6)
    assert dense.dtype == np.float32
    # pad token "0" dropped, left-aligned, first 3 kept, unseen token -> OOV
    assert seqs["hist"].tolist() == [[2, 3, 0], [0, 0, 0], [0, 0, 0], [4, 4, 1]]


def test_sequence_keep_last_and_list_and_2d_inputs_agree() -> None:
    enc = _encoders(keep="last")
    schema = _schema()
    base = {"city": ["paris", "rome"], "item": [10, 11], "price": [1.0, 2.0]}
    as_text = enc.encode({**base, "hist": ["10|11|12|10", "0|11"]}, schema)[2]["hist"]
    as_lists = enc.encode({**base, "hist": [[10, 11, 12, 10], ["0", 11]]}, schema)[2]["hist"]
    as_wide = enc.encode({**base, "hist": np.array([["10", "11", "12", "10"], ["0", "11", "0", "0"]])},
                         schema)[2]["hist"]
    assert as_text.tolist() == [[3, 4, 2], [3, 0, 0]]
    np.testing.assert_array_equal(as_text, as_lists)
    np.testing.assert_array_equal(as_text, as_wide)


def test_missing_column_is_named() -> None:
    with pytest.raises(ValueError, match="'price'"):
        _encoders().encode({"city": ["paris"], "item": [10], "hist": ["10"]}, _schema())


def test_non_number_in_dense_names_feature_and_row() -> None:
    with pytest.raises(EncodingError, match=r"'price'.*'abc'") as info:
        _encoders().encode({"city": ["a", "b"], "item": [1, 2], "price": ["1", "abc"], "hist": ["", ""]},
                           _schema())
    assert info.value.row == 1 and info.value.feature == "price"


def test_unequal_column_lengths_rejected() -> None:
    with pytest.raises(ValueError, match="different lengths"):
        _encoders().encode({"city": ["a", "b"], "item": [1], "price": [1.0], "hist": [""]}, _schema())


def test_save_load_round_trip(tmp_path: Path) -> None:
    enc = _encoders()
    enc.save(tmp_path / "encoders.json")
    loaded = FeatureEncoders.load(tmp_path / "encoders.json")
    assert loaded == enc
    raw = {"city": ["rome"], "item": [12], "price": [5], "hist": ["11|12"]}
    for a, b in zip(loaded.encode(raw, _schema())[:2], enc.encode(raw, _schema())[:2], strict=True):
        np.testing.assert_array_equal(a, b)


def test_load_rejects_other_json(tmp_path: Path) -> None:
    path = tmp_path / "x.json"
    path.write_text('{"format": "something-else"}')
    with pytest.raises(ValueError, match="not a feature-encoders"):
        FeatureEncoders.load(path)


def test_canonical_text_of_numbers() -> None:
    assert canonical_strings([1, 2.0, 2.5, None, float("nan"), True, "x"]).to_pylist() == [
        "1", "2", "2.5", None, None, "true", "x"]
    assert canonical_strings(np.array([3.0, np.nan])).to_pylist() == ["3", None]


def test_train_run_copies_encoders_into_run_dir(tiny_dir: Path, tmp_path: Path) -> None:
    from mtrec.training.config import RunConfig, TrainConfig
    from mtrec.training.run import train_run

    _encoders().save(tiny_dir / "encoders.json")
    config = RunConfig(model="shared_bottom", data=str(tiny_dir),
                       train=TrainConfig(epochs=1, batch_size=64, num_threads=1, prefetch=0))
    train_run(config, tmp_path / "run", log=lambda _: None)
    assert (tmp_path / "run" / "encoders.json").read_bytes() == (tiny_dir / "encoders.json").read_bytes()


@pytest.mark.parametrize("keep", ["first", "last"])
def test_python_lists_encode_as_arrow_columns_do(keep: str) -> None:
    """A request's Python lists (dictionary lookups) and a file's columns (Arrow kernels) of the same values
    give the same ids and inputs: odd types, untrimmed text, missing values, one history object repeated."""
    shared = ["10", 11, " 12 ", "0", "", "99", 10.0]
    columns: dict[str, list[object]] = {
        "city": ["paris", " rome ", 7, 3.0, None, True, "", "nowhere"],
        "item": [10, "11", 12.0, " 10", None, "x", 11, float("nan")],
        "price": [1.5, None, 3, -2.0, 0, 1e3, 7.25, None],
        "hist": [shared, "10|11|0|12", None, shared, [], ["12", 12, "12"], " 11 | 10 ", shared],
    }
    encoders = _encoders(keep)
    as_lists = encoders.encode(columns, _schema())
    as_arrow = encoders.encode({k: np.array([*v, None], dtype=object)[:-1] for k, v in columns.items()}, _schema())
    for got, expected in zip(as_lists[:2], as_arrow[:2], strict=True):
        np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(as_lists[2]["hist"], as_arrow[2]["hist"])
    with pytest.raises(EncodingError, match="'price': inf is not a finite number") as error:
        encoders.encode({**columns, "price": [1.0, float("inf"), *columns["price"][2:]]}, _schema())
    assert error.value.row == 1


def test_a_value_repeated_in_every_row_is_encoded_as_distinct_copies_are() -> None:
    """A request's user feature is one object in every candidate's row (encoded once, then broadcast): the
    result equals that of the same values as a file's column, and a bad shared value names row 0."""
    rows = 5
    shared = {"city": " rome ", "item": 11, "price": 3, "hist": ["10", "0", " 12 "]}
    same = {name: [value] * rows for name, value in shared.items()}
    encoders = _encoders()
    got = encoders.encode(same, _schema())
    expected = encoders.encode({k: np.array([*v, None], dtype=object)[:-1] for k, v in same.items()}, _schema())
    for a, b in zip(got[:2], expected[:2], strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(got[2]["hist"], expected[2]["hist"])
    assert got[0].shape == (rows, 2) and got[2]["hist"].shape == (rows, 3) and got[2]["hist"].flags.writeable
    with pytest.raises(EncodingError, match="'price'") as error:
        encoders.encode({**same, "price": ["cheap"] * rows}, _schema())
    assert error.value.row == 0
