"""The scoring service over real HTTP on loopback, `mtrec predict`, and refusal of invalid artefacts."""

from __future__ import annotations

import json
import pickle
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import pytest
import uvicorn

from mtrec.cli import main
from mtrec.data.readers import iter_chunks, read_layout
from mtrec.serving.app import create_app
from mtrec.serving.batch import ScoringInputError, input_source, ramp, score_file
from mtrec.serving.predictor import Predictor
from mtrec.serving.request import RequestEncoder
from mtrec.training.config import RunConfig, TrainConfig
from mtrec.training.run import train_run
from rawdata import (
    FEATURES,
    ITEM_FEATURES,
    USER_FEATURES,
    dataset_config,
    prepare_raw,
    raw_rows,
    write_csv,
    write_raw,
)
from servers import serving

MAX_CANDIDATES = 40
MAX_BODY = 64_000


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """MMoE trained for one epoch on a dataset prepared from a raw CSV (so the run has encoders.json)."""
    root = tmp_path_factory.mktemp("serving")
    prepared = prepare_raw(raw_rows(500, seed=0), root)
    assert (prepared / "encoders.json").is_file()
    config = RunConfig(model="mmoe", data=str(prepared),
                       model_options={"expert_sizes": [16], "tower_sizes": [8], "num_experts": 2},
                       train=TrainConfig(epochs=1, batch_size=64, num_threads=1, prefetch=0))
    train_run(config, root / "run", log=lambda _: None)
    return root / "run"


@pytest.fixture(scope="module")
def predictor(run_dir: Path) -> Predictor:
    return Predictor.from_run(run_dir)


@pytest.fixture(scope="module")
def base_url(predictor: Predictor) -> Iterator[str]:
    """The real app under uvicorn on a free loopback port, in a background thread."""
    with serving(create_app(predictor, max_candidates=MAX_CANDIDATES, max_body_bytes=MAX_BODY)) as url:
        yield url


@pytest.fixture
def client(base_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=base_url, timeout=10) as c:
        yield c


def run_cli(argv: list[str]) -> int:
    """``mtrec ARGV`` in this process; its exit status."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
        raise SystemExit(0)
    return int(exit_info.value.code or 0)


def one_user_rows(n: int, seed: int) -> list[dict[str, str]]:
    """``n`` raw rows sharing the first row's user features (one user's candidate list), plus unseen values."""
    rows = raw_rows(n, seed=seed)
    for row in rows[1:]:
        row.update({f: rows[0][f] for f in USER_FEATURES})
    rows[1]["item_id"] = "never-seen-item"
    rows[2]["category"] = "never-seen-category"
    return rows


def as_json_value(feature: str, raw: str) -> Any:
    """A raw CSV value as a JSON client would send it (numbers as numbers, histories as lists)."""
    if feature in ("price", "activity"):
        return float(raw)
    if feature.startswith("hist_"):
        return [t for t in raw.split("|") if t]
    return raw


# ---- the service ---------------------------------------------------------------------------------------
def test_healthz_and_openapi(client: httpx.Client, predictor: Predictor) -> None:
    health = client.get("/healthz")
    assert health.status_code == 200
    assert health.json()["tasks"] == ["click", "conversion"] and health.json()["model"] == "mmoe"
    spec = client.get("/openapi.json").json()
    assert "/v1/score" in spec["paths"] and "/healthz" in spec["paths"]
    assert set(spec["components"]["schemas"]["Features"]["properties"]) == set(predictor.feature_names)


def test_a_correct_request_matches_mtrec_predict(client: httpx.Client, run_dir: Path, tmp_path: Path) -> None:
    rows = one_user_rows(25, seed=11)
    write_csv(tmp_path / "in.csv", rows, (*FEATURES, "click"))
    assert run_cli(["predict", str(run_dir), "--input", str(tmp_path / "in.csv"), "--out", str(tmp_path / "out.csv"),
                    "--keep", "item_id"]) == 0
    offline = pa_csv.read_csv(tmp_path / "out.csv")
    assert offline.column_names == ["item_id", "click", "conversion"]
    assert offline["item_id"].to_pylist() == [r["item_id"] for r in rows]

    user = {f: as_json_value(f, rows[0][f]) for f in USER_FEATURES}
    user["hist_buy"] = rows[0]["hist_buy"]  # a history may also come as the separator-joined string
    candidates = [{f: as_json_value(f, r[f]) for f in ITEM_FEATURES} for r in rows]
    response = client.post("/v1/score", json={"user": user, "candidates": candidates})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["tasks"] == ["click", "conversion"] and len(body["scores"]) == len(rows)
    for task in body["tasks"]:
        online = np.array([s[task] for s in body["scores"]])
        np.testing.assert_allclose(online, offline[task].to_numpy(), atol=1e-6)
        assert ((online > 0) & (online < 1)).all()

    # every feature per candidate (no user part) gives the same scores
    flat = [{f: as_json_value(f, r[f]) for f in FEATURES} for r in rows]
    again = client.post("/v1/score", json={"candidates": flat})
    assert again.status_code == 200
    for task in body["tasks"]:
        np.testing.assert_allclose([s[task] for s in again.json()["scores"]], [s[task] for s in body["scores"]],
                                   atol=1e-6)


def test_unseen_values_score_as_out_of_vocabulary(client: httpx.Client) -> None:
    row = {f: as_json_value(f, v) for f, v in raw_rows(1, seed=5)[0].items() if f in FEATURES}
    candidates = [{**row, "item_id": "unseen-a"}, {**row, "item_id": "unseen-b"}, row]
    scores = client.post("/v1/score", json={"candidates": candidates}).json()["scores"]
    assert scores[0] == scores[1]  # both map to the OOV id


def test_the_request_encoder_gives_what_the_column_encoders_give(predictor: Predictor) -> None:
    """A request (user features merged into every candidate, a candidate's own value first) encodes as
    ``predict`` encodes the merged columns, for every kind of JSON value."""
    encoder = RequestEncoder(predictor.schema, predictor.encoders, MAX_CANDIDATES)
    rows = one_user_rows(12, seed=4)
    user = {f: as_json_value(f, rows[0][f]) for f in USER_FEATURES}
    odd_categoricals = [7, 3.0, 2.5, True, None, " u1 ", "", "never-seen"]
    odd_histories = [["i1", 3, 4.0, "", "i2"], "i3|i4||i5", None, [], ["i1"] * 20, "i7"]
    candidates: list[dict[str, Any]] = []
    for i, row in enumerate(rows):
        item = {f: as_json_value(f, row[f]) for f in ITEM_FEATURES}
        item["category"] = odd_categoricals[i % len(odd_categoricals)]
        if i % 3 == 0:  # a candidate's own value wins over the user's
            item.update(activity=None if i % 2 else i, hist_buy=odd_histories[i % len(odd_histories)])
        if i == 4:
            item["price"] = 12
        candidates.append(item)
    body = {"user": {**user, "user_id": 17}, "candidates": candidates}
    merged = {f: [c.get(f, body["user"].get(f)) for c in candidates] for f in FEATURES}
    as_columns = {f: np.array([*values, None], dtype=object)[:-1] for f, values in merged.items()}  # Arrow's path
    expected = predictor.encode(as_columns)
    got = encoder(json.dumps(body).encode())
    assert got.keys() == expected.keys()
    for name in expected:
        np.testing.assert_array_equal(got[name], expected[name], err_msg=name)
        assert got[name].dtype == expected[name].dtype


GOOD_USER = {"user_id": "u1", "activity": 3, "hist_click": ["i1", "i2"], "hist_buy": None}
GOOD_ITEM = {"item_id": "i4", "category": "c4", "price": 9.5}
BAD_REQUESTS: dict[str, tuple[Any, int, str]] = {
    "dense as a string": ({"user": GOOD_USER, "candidates": [GOOD_ITEM, {**GOOD_ITEM, "price": "cheap"}]},
                          422, "candidates[1].price"),
    "categorical as an object": ({"user": {**GOOD_USER, "user_id": {"id": 1}}, "candidates": [GOOD_ITEM]},
                                 422, "user.user_id"),
    "sequence item as a list": ({"user": {**GOOD_USER, "hist_click": [["i1"]]}, "candidates": [GOOD_ITEM]},
                                422, "user.hist_click"),
    "sequence as a number": ({"user": {**GOOD_USER, "hist_buy": 7}, "candidates": [GOOD_ITEM]}, 422, "user.hist_buy"),
    "missing feature": ({"user": GOOD_USER, "candidates": [GOOD_ITEM, {"item_id": "i1", "category": "c1"}]},
                        422, "candidates[1].price"),
    "missing user feature": ({"user": {"user_id": "u1"}, "candidates": [GOOD_ITEM]}, 422, "activity"),
    "unknown feature": ({"user": GOOD_USER, "candidates": [{**GOOD_ITEM, "colour": "red"}]},
                        422, "candidates[0].colour"),
    "empty candidates": ({"user": GOOD_USER, "candidates": []}, 422, "candidates"),
    "too many candidates": ({"user": GOOD_USER, "candidates": [GOOD_ITEM] * (MAX_CANDIDATES + 1)},
                            422, "candidates"),
    "no candidates key": ({"user": GOOD_USER}, 422, "candidates"),
    "body not an object": ([GOOD_ITEM], 422, "body"),
    "non-finite number": ('{"user": {"activity": Infinity}, "candidates": [{}]}', 422, "user.activity"),
    "number out of float32 range": ({"user": GOOD_USER, "candidates": [GOOD_ITEM, {**GOOD_ITEM, "activity": 1e300}]},
                                    422, "candidates[1].activity"),
    "user number out of float32 range": ({"user": {**GOOD_USER, "activity": -1e300}, "candidates": [GOOD_ITEM]},
                                         422, "user.activity"),
    "invalid JSON": ('{"user": {', 422, "body"),
    "integer id beyond 64 bits": ({"user": GOOD_USER, "candidates": [{**GOOD_ITEM, "item_id": 10**30}]},
                                  422, "candidates[0].item_id"),
    "lone surrogate": ('{"user": {"user_id": "\\ud800", "activity": 1, "hist_click": [], "hist_buy": null}, '
                       '"candidates": [{"item_id": "i4", "category": "c4", "price": 9.5}]}', 422, "body"),
    "body too large": ({"user": GOOD_USER, "candidates": [{**GOOD_ITEM, "item_id": "x" * MAX_BODY}]}, 413, "body"),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_bad_input_gets_a_4xx_naming_the_field(client: httpx.Client, case: str) -> None:
    payload, status, field = BAD_REQUESTS[case]
    if isinstance(payload, str):
        response = client.post("/v1/score", content=payload, headers={"content-type": "application/json"})
    else:
        response = client.post("/v1/score", json=payload)
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"].startswith(field) or field in body["error"], body
    assert all({"field", "msg"} <= set(d) for d in body["detail"])
    if case == "too many candidates":
        assert str(MAX_CANDIDATES) in body["error"]
    assert client.get("/healthz").status_code == 200  # still serving


def test_a_body_streamed_past_the_limit_or_another_method_is_refused(client: httpx.Client) -> None:
    chunks = (b'{"candidates": [{"item_id": "' + b"x" * 1000 for _ in range(MAX_BODY // 1000 + 2))
    response = client.post("/v1/score", content=chunks, headers={"content-type": "application/json"})  # chunked
    assert response.status_code == 413 and response.json()["error"].startswith("body: request body over")
    refused = client.get("/v1/score")
    assert refused.status_code == 405 and refused.headers["allow"] == "POST"
    other = client.post("/healthz")
    assert other.status_code == 405 and "GET" in other.headers["allow"]
    assert client.get("/healthz").status_code == 200


def test_candidate_ids_are_echoed_with_their_scores(client: httpx.Client) -> None:
    candidates = [{**GOOD_ITEM, "id": "offer-7"}, {**GOOD_ITEM, "item_id": "i9"}, {**GOOD_ITEM, "id": 12}]
    response = client.post("/v1/score", json={"user": GOOD_USER, "candidates": candidates})
    assert response.status_code == 200, response.text
    scores = response.json()["scores"]
    assert [s.get("id") for s in scores] == ["offer-7", None, 12]
    assert list(scores[0]) == ["id", "click", "conversion"] and list(scores[1]) == ["click", "conversion"]
    same = client.post("/v1/score", json={"user": GOOD_USER, "candidates": [GOOD_ITEM]}).json()["scores"][0]
    assert {k: v for k, v in scores[0].items() if k != "id"} == same  # the id does not change the score
    bad = client.post("/v1/score", json={"user": GOOD_USER, "candidates": [{**GOOD_ITEM, "id": [1]}]})
    assert bad.status_code == 422 and bad.json()["error"].startswith("candidates[0].id")
    spec = client.get("/openapi.json").json()["components"]["schemas"]
    assert "id" in spec["Candidate"]["properties"] and "id" not in spec["Features"]["properties"]


def metric(text: str, name: str) -> float:
    """The value of one sample (``name`` with its labels) in a Prometheus exposition."""
    found = [line.rsplit(" ", 1)[1] for line in text.splitlines() if line.startswith(name + " ")]
    return float(found[0]) if found else 0.0


def test_metrics_count_requests_errors_latency_and_batches(client: httpx.Client) -> None:
    before = client.get("/metrics").text
    good = {"user": GOOD_USER, "candidates": [GOOD_ITEM] * 3}
    assert client.post("/v1/score", json=good).status_code == 200
    assert client.post("/v1/score", json={"user": GOOD_USER, "candidates": []}).status_code == 422
    response = client.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    after = response.text

    def grew(name: str) -> float:
        return metric(after, name) - metric(before, name)

    assert grew('mtrec_score_requests_total{status="200"}') == 1
    assert grew('mtrec_score_requests_total{status="422"}') == 1
    assert grew('mtrec_score_errors_total{status="422"}') == 1
    assert grew("mtrec_score_latency_seconds_count") == 2 and grew("mtrec_score_latency_seconds_sum") > 0
    assert grew("mtrec_score_candidates_sum") == 3
    assert grew("mtrec_batch_rows_count") == 1 and grew("mtrec_batch_rows_sum") == 3
    assert "mtrec_batch_requests_bucket" in after


def test_torch_backend_gives_the_onnx_probabilities(run_dir: Path, predictor: Predictor) -> None:
    rows = raw_rows(60, seed=8)
    columns = {f: [r[f] for r in rows] for f in FEATURES}
    eager = Predictor.from_run(run_dir, backend="torch").predict(columns)
    exported = predictor.predict(columns)
    for task in predictor.task_names:
        np.testing.assert_allclose(exported[task], eager[task], atol=1e-5)


# ---- batch scoring -----------------------------------------------------------------------------------
def test_predict_parquet_in_and_out_in_chunks(run_dir: Path, predictor: Predictor, tmp_path: Path) -> None:
    rows = raw_rows(130, seed=12)
    columns: dict[str, list[Any]] = {f: [as_json_value(f, r[f]) for r in rows] for f in FEATURES}  # lists
    table = pa.table({**columns, "price": [r["price"] for r in rows], "request_id": list(range(130))})
    pq.write_table(table, tmp_path / "in.parquet")
    out = tmp_path / "scores.parquet"
    assert run_cli(["predict", str(run_dir), "--input", str(tmp_path / "in.parquet"), "--out", str(out),
                    "--keep", "request_id", "--chunk-rows", "50"]) == 0
    scored = pq.read_table(out)
    assert scored.column_names == ["request_id", "click", "conversion"]
    assert scored["request_id"].to_pylist() == list(range(130))
    expected = predictor.predict({f: [r[f] for r in rows] for f in FEATURES})
    for task in predictor.task_names:
        np.testing.assert_allclose(scored[task].to_numpy(), expected[task], atol=1e-6)


def test_predict_reads_a_file_in_the_datasets_raw_layout(run_dir: Path, predictor: Predictor, tmp_path: Path) -> None:
    rows = raw_rows(40, seed=21)
    rows[3]["price"] = "?"  # the config's missing-value token
    raw = write_raw(tmp_path / "next_day.txt", rows)  # no header, ';'-separated, labels included
    config = dataset_config(tmp_path / "shop.yaml", raw)
    out = tmp_path / "scores.parquet"
    assert run_cli(["predict", str(run_dir), "--input", str(raw), "--out", str(out), "--dataset-config", str(config),
                    "--keep", "iid"]) == 0
    scored = pq.read_table(out)
    assert scored["iid"].to_pylist() == [r["item_id"] for r in rows]
    expected = predictor.predict({f: [None if r[f] == "?" else r[f] for r in rows] for f in FEATURES})
    for task in predictor.task_names:
        np.testing.assert_allclose(scored[task].to_numpy(), expected[task], atol=1e-6)


def test_predict_names_the_missing_column_and_the_bad_value(run_dir: Path, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    rows = raw_rows(20, seed=13)
    write_csv(tmp_path / "no_price.csv", rows, tuple(f for f in FEATURES if f != "price"))
    out = tmp_path / "out.csv"
    assert run_cli(["predict", str(run_dir), "--input", str(tmp_path / "no_price.csv"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "no_price.csv: missing column(s) for feature 'price' reads ['price']" in err
    rows[6]["price"] = "twelve"
    write_csv(tmp_path / "bad.csv", rows, FEATURES)
    assert run_cli(["predict", str(run_dir), "--input", str(tmp_path / "bad.csv"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "bad.csv, line 8, column 'price'" in err and "twelve" in err
    assert not out.exists() and not list(tmp_path.glob(".out.csv.*"))  # nothing partial left behind


def test_predict_scores_the_first_chunk_in_growing_slices_with_the_same_output(
        run_dir: Path, predictor: Predictor, tmp_path: Path) -> None:
    """A predictor scoring 16 rows per call: the first chunk of 100 rows is scored as slices of 16 and 84
    (the model starts before the whole chunk is encoded); every row is scored once, in order, as the model
    scores it, and a bad value in a slice is reported on its own line."""
    small = Predictor.from_run(run_dir, batch_size=16)
    rows = raw_rows(230, seed=31)
    source = write_csv(tmp_path / "in.csv", rows, (*FEATURES, "click"))
    layout = read_layout(source, input_source())
    chunks = list(iter_chunks(source, input_source(), layout, list(layout.names), 100))
    sliced = list(ramp(chunks, 16))
    assert [c.num_rows for c in sliced] == [16, 84, 100, 30]
    assert [c.first_row for c in sliced] == [0, 16, 100, 200]
    assert pa.concat_tables([c.table for c in sliced]).equals(pa.concat_tables([c.table for c in chunks]))

    result = score_file(small, source, tmp_path / "out.csv", keep=("item_id",), chunk_rows=100, progress=False)
    scored = pa_csv.read_csv(tmp_path / "out.csv")
    assert result.rows == 230 and scored["item_id"].to_pylist() == [r["item_id"] for r in rows]
    expected = predictor.predict({f: [r[f] for r in rows] for f in FEATURES})
    for task in predictor.task_names:
        np.testing.assert_allclose(scored[task].to_numpy(), expected[task], atol=1e-6)

    rows[40]["price"] = "twelve"  # in the second slice of the first chunk: data row 40 is on line 42
    bad = write_csv(tmp_path / "bad.csv", rows, FEATURES)
    with pytest.raises(ScoringInputError, match=r"bad\.csv, line 42, column 'price'.*twelve"):
        score_file(small, bad, tmp_path / "bad_out.csv", chunk_rows=100, progress=False)


# ---- invalid artefacts -----------------------------------------------------------------------------------
@pytest.fixture
def no_listening(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make `mtrec serve` fail instead of blocking if it ever got as far as starting the server."""

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the server was started with an invalid artefact")

    monkeypatch.setattr(uvicorn, "run", refuse)


class _Payload:
    """Unpickling this would create ``marker``: proof that code from the file ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize("content", ["garbage", "pickle", "truncated"])
def test_an_invalid_model_file_is_refused_at_startup_without_running_it(
    content: str, run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], no_listening: None
) -> None:
    bad_run = tmp_path / "run"
    shutil.copytree(run_dir, bad_run)
    (tmp_path / "x.csv").write_text("user_id\nu1\n")  # an input that exists: the model is what is refused
    marker = tmp_path / "payload-ran"
    weights = bad_run / "model.safetensors"
    if content == "garbage":
        weights.write_bytes(b"\x00\xffnot a model" * 50)
    elif content == "pickle":
        weights.write_bytes(pickle.dumps(_Payload(marker)))
    else:
        weights.write_bytes(weights.read_bytes()[:200])
    for argv in (["serve", str(bad_run), "--port", "0"],
                 ["predict", str(bad_run), "--input", str(tmp_path / "x.csv"), "--out", str(tmp_path / "y.csv")]):
        assert run_cli(argv) == 2
        err = capsys.readouterr().err
        assert "not a valid safetensors model file" in err and str(weights) in err
    assert not marker.exists()
    if content == "pickle":  # the payload is real: unpickling the file does run it
        pickle.loads(weights.read_bytes())
        assert marker.exists()


def test_a_run_without_encoders_is_refused_with_a_clear_error(run_dir: Path, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str],
                                                              no_listening: None) -> None:
    bad_run = tmp_path / "run"
    shutil.copytree(run_dir, bad_run)
    (bad_run / "encoders.json").unlink()
    assert run_cli(["serve", str(bad_run)]) == 2
    assert "no encoders.json" in capsys.readouterr().err
    (bad_run / "encoders.json").write_text('{"format": "mtrec-feature-encoders", "version": 1, "vocabularies": {}}')
    assert run_cli(["serve", str(bad_run)]) == 2
    assert "encoders.json: not usable" in capsys.readouterr().err
