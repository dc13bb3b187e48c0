"""A multi-scenario model (STAR on synthetic:scenarios) exported, scored by ``predict`` and served: the
standalone ONNX model takes the scenario's raw value, the id graph its id, ``predict`` reads the scenario
column and a scoring request carries the scenario value."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pyarrow as pa
import pyarrow.csv as pa_csv
import pytest

from mtrec.cli import main
from mtrec.data.synthetic import make_synthetic
from mtrec.serving.predictor import Predictor
from mtrec.serving.request import RequestEncoder, RequestError
from mtrec.serving.samples import raw_rows, score_request
from mtrec.training.config import RunConfig, TrainConfig
from mtrec.training.run import train_run

pytestmark = pytest.mark.usefixtures("one_thread")
DATA = "synthetic:scenarios:1500"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("scenario_run")
    config = RunConfig(model="star", data=DATA, model_options={"hidden_sizes": [16], "aux_sizes": [4]},
                       train=TrainConfig(epochs=1, batch_size=128, num_threads=1, prefetch=0))
    train_run(config, root / "run", log=lambda _: None)
    return root / "run"


@pytest.fixture(scope="module")
def rows() -> dict[str, list]:  # type: ignore[type-arg]
    data = make_synthetic("scenarios", rows=1500)
    encoders = data.load_encoders()
    assert encoders is not None
    return raw_rows(data, encoders, np.asarray(data.splits["test"][:60]))


def run_cli(argv: list[str]) -> int:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
        raise SystemExit(0)
    return int(exit_info.value.code or 0)


def write(path: Path, columns: dict[str, list]) -> Path:  # type: ignore[type-arg]
    pa_csv.write_csv(pa.table({k: pa.array(v) for k, v in columns.items()}), str(path))
    return path


def test_export_and_predict_take_the_scenario(run_dir: Path, rows: dict, tmp_path: Path) -> None:  # type: ignore[type-arg]
    source = write(tmp_path / "rows.csv", rows)
    assert run_cli(["predict", str(run_dir), "--input", str(source), "--out", str(tmp_path / "run.csv")]) == 0
    expected = pa_csv.read_csv(tmp_path / "run.csv")
    for kind in ("raw", "ids"):
        model = tmp_path / f"{kind}.onnx"
        assert run_cli(["export", str(run_dir), "--out", str(model), "--inputs", kind]) == 0
        assert run_cli(["predict", str(model), "--input", str(source), "--out", str(tmp_path / f"{kind}.csv")]) == 0
        got = pa_csv.read_csv(tmp_path / f"{kind}.csv")
        for task in ("click", "conversion"):
            np.testing.assert_allclose(got[task].to_numpy(), expected[task].to_numpy(), atol=1e-5, err_msg=kind)
    inputs = [i.name for i in ort.InferenceSession(str(tmp_path / "raw.onnx")).get_inputs()]
    assert "scenario" in inputs  # the standalone model takes the scenario's raw value

    moved = {**rows, "scenario": ["s2" if s != "s2" else "s0" for s in rows["scenario"]]}
    assert run_cli(["predict", str(run_dir), "--input", str(write(tmp_path / "moved.csv", moved)),
                    "--out", str(tmp_path / "moved_out.csv")]) == 0
    assert not np.allclose(pa_csv.read_csv(tmp_path / "moved_out.csv")["click"].to_numpy(),
                           expected["click"].to_numpy())  # the scenario changes the scores

    without = {k: v for k, v in rows.items() if k != "scenario"}
    assert run_cli(["predict", str(run_dir), "--input", str(write(tmp_path / "without.csv", without)),
                    "--out", str(tmp_path / "x.csv")]) == 2


def test_a_request_carries_the_scenario_value(run_dir: Path) -> None:
    predictor = Predictor.from_run(run_dir)
    data = make_synthetic("scenarios", rows=1500)
    request = score_request(data, predictor.encoders, candidates=8)
    encoder = RequestEncoder(predictor.schema, predictor.encoders, 40)
    scenario_of = [request["user"].get("scenario") or c["scenario"] for c in request["candidates"]]
    scores = predictor.score(encoder(json.dumps(request).encode()))
    columns = {name: [c.get(name, request["user"].get(name)) for c in request["candidates"]]
               for name in predictor.feature_names}
    assert columns["scenario"] == scenario_of
    np.testing.assert_allclose(scores["click"], predictor.predict(columns)["click"], atol=1e-6)

    for place in (request["user"], *request["candidates"]):
        place.pop("scenario", None)
    with pytest.raises(RequestError) as error:
        encoder(json.dumps(request).encode())
    assert "scenario" in json.dumps(error.value.problems)
