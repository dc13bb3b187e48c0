"""The bad-input battery of scoring: tampered run directories, values and line endings `predict` must name,
options and Parquet layouts it must refuse, and what the service answers.

Each CLI case runs through :func:`test_bad_input.check_case`: exit status 2, one ``error:`` line naming what
is wrong and where, no input changed, nothing written outside the case's output.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import onnx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import uvicorn

from mtrec.serving.app import create_app
from mtrec.serving.predictor import Predictor
from rawdata import FEATURES
from servers import serving
from test_bad_input import Builder, Case, World, build_world, check_built, csv_text, main_status, registrar

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    return build_world(tmp_path_factory)


CASES: dict[str, Builder] = {}
case = registrar(CASES)


def run_copy(t: Path, w: World) -> Path:
    shutil.copytree(w.run, t / "run")
    return t / "run"


def edit_json(path: Path, edit: Callable[[dict[str, Any]], None]) -> None:
    document = json.loads(path.read_text())
    edit(document)
    path.write_text(json.dumps(document))


def predict_argv(run: Path, source: Path, out: Path, *extra: str) -> list[str]:
    return ["predict", str(run), "--input", str(source), "--out", str(out), *extra]


def no_server(mp: pytest.MonkeyPatch) -> None:
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the server was started with an invalid run")

    mp.setattr(uvicorn, "run", refuse)


# ---- a tampered run directory ---------------------------------------------------------------------------------
def longer_vocabulary(t: Path, w: World) -> Path:
    """encoders.json with more item values than schema.json's item table has rows."""
    run = run_copy(t, w)
    edit_json(run / "encoders.json", lambda e: e["vocabularies"]["item_id"].extend(f"extra{i}" for i in range(50)))
    return run


@case("predict: encoders.json vocabulary longer than the schema's table")
def _(t: Path, w: World, mp: pytest.MonkeyPatch) -> Case:
    run = longer_vocabulary(t, w)
    return Case(predict_argv(run, w.scoring, t / "o.csv"), ["encoders.json", "'item_id'", "vocab_size"])


@case("serve: encoders.json vocabulary longer than the schema's table")
def _(t: Path, w: World, mp: pytest.MonkeyPatch) -> Case:
    no_server(mp)
    return Case(["serve", str(longer_vocabulary(t, w))], ["encoders.json", "'item_id'", "vocab_size"])


@case("export: encoders.json vocabulary longer than the schema's table")
def _(t: Path, w: World, mp: pytest.MonkeyPatch) -> Case:
    return Case(["export", str(longer_vocabulary(t, w)), "--out", str(t / "m.onnx")],
                ["encoders.json", "'item_id'", "vocab_size"])


@case("predict: encoders.json with a dense mean that is not a number")
def _(t: Path, w: World, mp: pytest.MonkeyPatch) -> Case:
    run = run_copy(t, w)
    edit_json(run / "encoders.json", lambda e: e["dense"]["price"].update(mean="x"))
    return Case(predict_argv(run, w.scoring, t / "o.csv"), ["encoders.json", "dense.price.mean", "'x'"])


@case("predict: encoders.json with a zero std")
def _(t: Path, w: World, mp: pytest.MonkeyPatch) -> Case:
    run = run_copy(t, w)
    edit_json(run / "encoders.json", lambda e: e["dense"]["activity"].update(std=0))
    return Case(predict_argv(run, w.scoring, t / "o.csv"), ["encoders.json", "dense.activity.std"])


@case("predict: encoders.json with a vocabulary value that is not text")
def _(t: Path, w: World, mp: pytest.MonkeyPatch) -> Case:
    run = run_copy(t, w)
    edit_json(run / "encoders.json", lambda e: e["vocabularies"]["category"].append(7))
    return Case(predict_argv(run, w.scoring, t / "o.csv"), ["encoders.json", "vocabularies.category"])


@case("predict: schema.json with an unknown feature kind")
def _(t: Path, w: World, mp: pytest.MonkeyPatch) -> Case:
    run = run_copy(t, w)
    edit_json(run / "schema.json", lambda s: s.update(embeddings=[{"name": "x", "vocab_size": 3}]))
    return Case(predict_argv(run, w.scoring, t / "o.csv"), ["schema.json", "'embeddings'"])


def unfinished(t: Path, w: World) -> Path:
    """A run killed mid-training: weights from a checkpoint, no metrics.json."""
    run = run_copy(t, w)
    (run / "metrics.json").unlink()
    return run


@case("predict: a run whose training did not finish")
def _(t: Path, w: World, mp: pytest.MonkeyPatch) -> Case:
    return Case(predict_argv(unfinished(t, w), w.scoring, t / "o.csv"), ["metrics.json", "--allow-unfinished"])


@case("export: a run whose training did not finish")
def _(t: Path, w: World, mp: pytest.MonkeyPatch) -> Case:
    return Case(["export", str(unfinished(t, w)), "--out", str(t / "m.onnx")], ["metrics.json", "--allow-unfinished"])


@case("serve: a run whose training did not finish")
def _(t: Path, w: World, mp: pytest.MonkeyPatch) -> Case:
    no_server(mp)
    return Case(["serve", str(unfinished(t, w))], ["metrics.json", "--allow-unfinished"])


# ---- values predict must name (file, line, column) -----------------------------------------------------------
def scoring_file(t: Path, w: World, column: str, value: str, row: int = 3) -> Path:
    """The shared scoring rows with ``value`` in ``column`` of data row ``row`` (line ``row + 2``)."""
    rows = [dict(r) for r in w.rows[:10]]
    rows[row][column] = value
    path = t / "in.csv"
    path.write_text(csv_text(rows, FEATURES))
    return path


@case("predict: a dense value that is not a number")
def _(t: Path, w: World, mp: pytest.MonkeyPatch) -> Case:
    source = scoring_file(t, w, "price", "cheap")
    return Case(predict_argv(w.run, source, t / "o.csv"), ["in.csv, line 5", "column 'price'", "'cheap'"],
                out=t / "o.csv")


@case("predict: a dense value that is not a number, in the dataset's raw layout")
def _(t: Path, w: World, mp: pytest.MonkeyPatch) -> Case:
    source = scoring_file(t, w, "activity", "lots", row=7)
    return Case(predict_argv(w.run, source, t / "o.csv", "--dataset-config", str(w.config)),
                ["in.csv, line 9", "column 'activity'", "'lots'"], out=t / "o.csv")


for _label, _token in (("spaces around it", " 5.0 "), ("an underscore", "1_000"),
                       ("fullwidth digits", "\uff15\uff10"), ("a no-break space", "5\u00a0")):
    @case(f"predict: a dense value with {_label}")
    def _(t: Path, w: World, mp: pytest.MonkeyPatch, token: str = _token) -> Case:
        source = scoring_file(t, w, "price", token)
        return Case(predict_argv(w.run, source, t / "o.csv"),
                    ["in.csv, line 5", "column 'price'", repr(token)], out=t / "o.csv")


@case("predict: CR-only line endings with a bad value")
def _(t: Path, w: World, mp: pytest.MonkeyPatch) -> Case:
    source = scoring_file(t, w, "activity", "lots", row=6)
    source.write_bytes(source.read_bytes().replace(b"\n", b"\r"))
    return Case(predict_argv(w.run, source, t / "o.csv"), ["in.csv, line 8", "column 'activity'", "'lots'"],
                out=t / "o.csv")


# ---- options and layouts predict must refuse --------------------------------------------------------------------
@case("predict: --keep twice")
def _(t: Path, w: World, mp: pytest.MonkeyPatch) -> Case:
    return Case(predict_argv(w.run, w.scoring, t / "o.parquet", "--keep", "user_id", "--keep", "user_id"),
                ["--keep", "'user_id'", "twice"])


@case("predict: a Parquet history of lists of lists")
def _(t: Path, w: World, mp: pytest.MonkeyPatch) -> Case:
    rows = w.rows[:10]
    table = pa.table({f: [r[f] for r in rows] for f in FEATURES if f != "hist_click"}
                     | {"hist_click": [[r["hist_click"].split("|")] for r in rows]})
    pq.write_table(table, t / "in.parquet")
    return Case(predict_argv(w.run, t / "in.parquet", t / "o.csv"),
                ["in.parquet", "'hist_click'", "holds list<", "list<element"])


@case("predict: a model file whose metadata names other features than its graph takes")
def _(t: Path, w: World, mp: pytest.MonkeyPatch) -> Case:
    assert main_status(["export", str(w.run), "--out", str(t / "m.onnx")]) == 0
    model = onnx.load(str(t / "m.onnx"))
    for prop in model.metadata_props:
        if prop.key == "mtrec_schema":
            schema = json.loads(prop.value)
            schema["sparse"][2].update(name="renamed", table="category")  # the graph takes 'category'
            prop.value = json.dumps(schema)
    onnx.save(model, str(t / "m.onnx"))
    return Case(predict_argv(t / "m.onnx", w.scoring, t / "o.csv"), ["m.onnx", "does not match the schema"])


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_of_scoring_is_one_clear_line_and_loses_nothing(
    name: str, world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    check_built(CASES[name], tmp_path, world, monkeypatch, capfd)


def test_an_unfinished_run_is_scored_when_asked(world: World, tmp_path: Path) -> None:
    run = unfinished(tmp_path, world)
    assert main_status(predict_argv(run, world.scoring, tmp_path / "o.csv", "--allow-unfinished")) == 0
    assert (tmp_path / "o.csv").is_file()


def test_a_cr_only_file_scores_as_the_same_file_with_line_feeds(world: World, tmp_path: Path) -> None:
    source = tmp_path / "cr.csv"
    source.write_bytes(world.scoring.read_bytes().replace(b"\n", b"\r"))
    assert main_status(predict_argv(world.run, source, tmp_path / "cr_out.csv")) == 0
    assert main_status(predict_argv(world.run, world.scoring, tmp_path / "lf_out.csv")) == 0
    assert (tmp_path / "cr_out.csv").read_text() == (tmp_path / "lf_out.csv").read_text()


# ---- the service -----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def client(world: World) -> Iterator[httpx.Client]:
    with serving(create_app(Predictor.from_run(world.run))) as url, httpx.Client(base_url=url, timeout=20) as c:
        yield c


def test_every_405_says_which_methods_are_allowed(client: httpx.Client) -> None:
    for response in (client.get("/v1/score"), client.put("/v1/score"), client.post("/healthz"),
                     client.post("/metrics")):
        assert response.status_code == 405 and response.headers.get("allow"), response.request.url
        assert set(response.json()) == {"error", "detail"}


def test_a_history_of_lists_of_lists_is_a_422_naming_the_field(client: httpx.Client) -> None:
    user = {"user_id": "u1", "activity": 3, "hist_click": [["i1"]], "hist_buy": None}
    response = client.post("/v1/score", json={"user": user, "candidates": [{"item_id": "i4", "category": "c4",
                                                                            "price": 9.5}]})
    assert response.status_code == 422 and response.json()["error"].startswith("user.hist_click")

