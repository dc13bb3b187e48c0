"""The standalone ONNX model: raw values in, the encoders inside the graph, scored as `mtrec predict` scores,
by a client process that can import nothing but numpy and onnxruntime."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pyarrow.csv as pa_csv
import pytest

from mtrec.cli import main
from mtrec.export.standalone import raw_feeds, raw_input_graph
from mtrec.features.encoders import DenseTransform, FeatureEncoders, SequenceFormat
from mtrec.features.schema import DatasetSchema, DenseFeature, SequenceFeature, SparseFeature, TaskSpec
from mtrec.features.vocab import Vocabulary
from mtrec.serving.predictor import Predictor
from mtrec.training.config import RunConfig, TrainConfig
from mtrec.training.run import train_run
from rawdata import FEATURES, prepare_raw, raw_rows, write_csv

DOCS = Path(__file__).resolve().parents[1] / "docs" / "serving.md"
# run before the client: any import beyond the standard library, numpy and onnxruntime fails
ONLY_NUMPY_AND_ORT = """
import importlib.abc, sys
ALLOWED = {"numpy", "onnxruntime"} | set(sys.stdlib_module_names)
class Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] not in ALLOWED:
            raise ImportError(f"{name} may not be imported by a standalone client")
        return None
sys.meta_path.insert(0, Refuse())
"""


def run_cli(argv: list[str]) -> int:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
        raise SystemExit(0)
    return int(exit_info.value.code or 0)


def docs_client() -> str:
    """The client snippet of docs/serving.md ("A client with ONNX Runtime alone")."""
    section = DOCS.read_text().split("### A client with ONNX Runtime alone", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, "no python snippet under 'A client with ONNX Runtime alone'"
    return match.group(1)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """MMoE trained for one epoch on a dataset prepared from a raw CSV (so the run has encoders.json)."""
    root = tmp_path_factory.mktemp("standalone")
    prepared = prepare_raw(raw_rows(400, seed=0), root)
    config = RunConfig(model="mmoe", data=str(prepared),
                       model_options={"expert_sizes": [16], "tower_sizes": [8], "num_experts": 2},
                       train=TrainConfig(epochs=1, batch_size=64, num_threads=1, prefetch=0))
    train_run(config, root / "run", log=lambda _: None)
    return root / "run"


def test_the_raw_input_graph_encodes_as_the_feature_encoders() -> None:
    """Every kind of raw value (spaces, unseen, missing, pad tokens, long histories, histories by position,
    log1p) gives the ids and values FeatureEncoders.encode gives, with and without ``strip``."""
    schema = DatasetSchema(sparse=(SparseFeature("city", 6), SparseFeature("item", 7)),
                           dense=(DenseFeature("price"), DenseFeature("age")),
                           sequences=(SequenceFeature("hist", 7, 3, "c", "item"),
                                      SequenceFeature("pos", 7, 2, "c", "item")),
                           tasks=(TaskSpec("t"),))
    columns: dict[str, Any] = {
        "city": ["paris", " paris ", "new  york", "  new  york", "", "   ", None, "la x ", "zzz", "la  x"],
        "item": ["1", "2 ", " 10", "a b", "x", "", "3", "1", "2", "10"],
        "price": ["1.5", "?", "", "-3", "1e3", "0", "2", "3", "4", "5"],
        "age": ["1", "2", "3", "4", "5", "6", "7", "8", "9", ""],
        "hist": ["1|2|3|10", " 1 | 2 ", "", "0|0|1", "|||", "a b|x|1|2|3", "10", "1|0|2|0|3|0", "2", " 3 "],
        "pos": np.array([["1", "-"], ["-", "2"], ["", ""], [" 3", "10 "], ["x", "1"], ["1", "2"], ["a b", "-"],
                         ["", "1"], ["3", "3"], ["-", "-"]]),
    }
    names = ["sparse", "dense", "seq__hist", "seq__pos"]
    for strip in (False, True):
        encoders = FeatureEncoders(
            {"city": Vocabulary.from_list(["paris", "new  york", "", "la x"]),
             "item": Vocabulary.from_list(["1", "2", "3", "10", "a b"])},
            {"price": DenseTransform(log1p=True, mean=1.0, std=2.0, fill=0.5), "age": DenseTransform()},
            {"hist": SequenceFormat("|", ("0",), "last"), "pos": SequenceFormat(None, ("-",), "first")},
            missing_values=("?",), strip=strip)
        sparse, dense, sequences = encoders.encode(columns, schema)
        graph = raw_input_graph(schema, encoders, names).SerializeToString()
        session = ort.InferenceSession(graph, providers=["CPUExecutionProvider"])
        got = dict(zip(names, session.run(names, raw_feeds(columns, schema, encoders)), strict=True))
        np.testing.assert_array_equal(got["sparse"], sparse, err_msg=f"strip={strip}")
        np.testing.assert_array_equal(got["dense"], dense, err_msg=f"strip={strip}")
        np.testing.assert_array_equal(got["seq__hist"], sequences["hist"], err_msg=f"strip={strip}")
        np.testing.assert_array_equal(got["seq__pos"], sequences["pos"], err_msg=f"strip={strip}")


def test_a_standalone_model_scores_as_predict_in_a_process_with_only_numpy_and_onnxruntime(
        run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = tmp_path / "model.onnx"
    assert run_cli(["export", str(run_dir), "--out", str(model)]) == 0
    assert "raw-input graph against the id graph" in capsys.readouterr().out
    rows = raw_rows(300, seed=21)
    rows[1].update(item_id="never-seen", hist_click="", price="?")  # unseen, empty history, a missing token
    rows[2].update(hist_click="i1|i2|i3|i4|i5|i6|i7|i8", activity="")  # longer than max_len; empty field
    source = write_csv(tmp_path / "rows.csv", rows, FEATURES)
    assert run_cli(["predict", str(run_dir), "--input", str(source), "--out", str(tmp_path / "scores.csv")]) == 0
    expected = pa_csv.read_csv(tmp_path / "scores.csv")

    client = tmp_path / "client.py"
    client.write_text(docs_client())
    done = subprocess.run([sys.executable, "-I", "-c", ONLY_NUMPY_AND_ORT + client.read_text(), str(model),
                           str(source)], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout)
    worst = max(float(np.abs(np.asarray(got[t]) - expected[t].to_numpy()).max()) for t in ("click", "conversion"))
    assert worst <= 1e-6, worst

    # the same refusal proves the guard works: the client could not have used mtrec, pandas or pyarrow
    refused = subprocess.run([sys.executable, "-I", "-c", ONLY_NUMPY_AND_ORT + "import pyarrow"],
                             capture_output=True, text=True, timeout=60)
    assert refused.returncode != 0 and "may not be imported" in refused.stderr


def test_exported_models_carry_their_schema_encoders_and_version(run_dir: Path, tmp_path: Path) -> None:
    raw, ids = tmp_path / "raw.onnx", tmp_path / "ids.onnx"
    assert run_cli(["export", str(run_dir), "--out", str(raw)]) == 0
    assert run_cli(["export", str(run_dir), "--out", str(ids), "--inputs", "ids"]) == 0
    schema = json.loads((run_dir / "schema.json").read_text())
    for path, kind in ((raw, "raw"), (ids, "ids")):
        props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
        assert props["mtrec_inputs"] == kind and props["mtrec_model"] == "mmoe"
        assert json.loads(props["mtrec_schema"]) == schema
        assert json.loads(props["mtrec_encoders"]) == json.loads((run_dir / "encoders.json").read_text())
        assert json.loads(props["mtrec_tasks"]) == ["click", "conversion"] and props["mtrec_version"]
    raw_inputs = {i.name: i.type for i in ort.InferenceSession(str(raw)).get_inputs()}
    texts = ("user_id", "item_id", "category", "hist_click", "hist_buy")
    assert raw_inputs == {**dict.fromkeys(texts, "tensor(string)"), "price": "tensor(double)",
                          "activity": "tensor(double)"}
    id_inputs = {i.name: i.type for i in ort.InferenceSession(str(ids)).get_inputs()}
    assert id_inputs["sparse"] == "tensor(int64)" and id_inputs["seq__hist_click"] == "tensor(int64)"


def test_a_raw_export_of_a_run_without_encoders_names_the_way_out(run_dir: Path, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("model.safetensors", "schema.json", "config.json", "metrics.json"):
        (bare / name).write_bytes((run_dir / name).read_bytes())
    assert run_cli(["export", str(bare), "--out", str(tmp_path / "m.onnx")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no encoders.json" in err and "--inputs ids" in err
    assert not (tmp_path / "m.onnx").exists()
    assert run_cli(["export", str(bare), "--out", str(tmp_path / "m.onnx"), "--inputs", "ids"]) == 0


def test_predict_takes_an_exported_model_file_and_scores_as_the_run(run_dir: Path, tmp_path: Path) -> None:
    source = write_csv(tmp_path / "rows.csv", raw_rows(120, seed=8), FEATURES)
    outputs = {}
    for kind in ("raw", "ids"):
        model = tmp_path / f"{kind}.onnx"
        assert run_cli(["export", str(run_dir), "--out", str(model), "--inputs", kind]) == 0
        assert run_cli(["predict", str(model), "--input", str(source), "--out", str(tmp_path / f"{kind}.csv")]) == 0
        outputs[kind] = pa_csv.read_csv(tmp_path / f"{kind}.csv")
    assert run_cli(["predict", str(run_dir), "--input", str(source), "--out", str(tmp_path / "run.csv")]) == 0
    expected = pa_csv.read_csv(tmp_path / "run.csv")
    for kind, got in outputs.items():
        for task in ("click", "conversion"):
            np.testing.assert_allclose(got[task].to_numpy(), expected[task].to_numpy(), atol=1e-6, err_msg=kind)


def test_a_runs_graph_is_exported_once_then_loaded_without_torch(run_dir: Path, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The first load keeps the checked graph in the cache directory under the run's fingerprint; a later
    load in a fresh process reads it and imports neither torch nor onnx; changed files are exported again
    under another name; the run directory is never written."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("MTREC_CACHE_DIR", str(cache))
    run = tmp_path / "run"
    run.mkdir()
    for name in ("model.safetensors", "schema.json", "config.json", "encoders.json", "metrics.json"):
        (run / name).write_bytes((run_dir / name).read_bytes())
    first = Predictor.from_run(run)
    kept = list(cache.glob("*.onnx"))
    assert len(kept) == 1 and "kept in" in first.describe()
    columns = {f: [r[f] for r in raw_rows(30, seed=2)] for f in FEATURES}
    probe = ("import json, sys\nfrom mtrec.serving.predictor import Predictor\n"
             f"p = Predictor.from_run({str(run)!r})\n"
             f"out = p.predict({columns!r})\n"
             "print(json.dumps({'how': p.describe(), 'click': out['click'].tolist(),\n"
             "                  'heavy': sorted({'torch', 'onnx'} & set(sys.modules))}))\n")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    second = json.loads(done.stdout)
    assert second["heavy"] == [] and "exported before" in second["how"]
    np.testing.assert_allclose(second["click"], first.predict(columns)["click"], atol=1e-7)

    (run / "config.json").write_text((run / "config.json").read_text() + "\n")  # the run's files changed
    assert "kept in" in Predictor.from_run(run).describe()
    assert len(list(cache.glob("*.onnx"))) == 2
    assert sorted(p.name for p in run.iterdir()) == ["config.json", "encoders.json", "metrics.json",
                                                     "model.safetensors", "schema.json"]


def test_an_absent_device_is_one_line_naming_what_to_use(run_dir: Path, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    source = write_csv(tmp_path / "rows.csv", raw_rows(5, seed=1), FEATURES)
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has CUDA: the refusal cannot be shown here")
    for device in ("cuda", "cuda:7", "tpu"):
        code = run_cli(["predict", str(run_dir), "--input", str(source), "--out", str(tmp_path / "o.csv"),
                        "--device", device])
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1 and f"--device {device}" in err.replace("'", ""), err
        assert not (tmp_path / "o.csv").exists()
    assert "onnxruntime-gpu" in (run_cli(["predict", str(run_dir), "--input", str(source), "--out",
                                          str(tmp_path / "o.csv"), "--device", "cuda"]), capsys.readouterr().err)[1]
    assert run_cli(["predict", str(run_dir), "--input", str(source), "--out", str(tmp_path / "o.csv"),
                    "--device", "auto"]) == 0


def test_an_int8_model_states_its_test_auc_and_scores_close_to_float32(
        run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    int8 = tmp_path / "int8.onnx"
    assert run_cli(["export", str(run_dir), "--out", str(int8), "--quantize", "int8"]) == 0
    printed = capsys.readouterr().out
    assert "int8 against float32 on" in printed and "test split" in printed and "AUC" in printed
    props = {p.key: p.value for p in onnx.load(str(int8)).metadata_props}
    assert props["mtrec_quantized"] == "int8" and props["mtrec_inputs"] == "raw"
    stated = json.loads(props["mtrec_quantized_parity"])["tasks"]["click"]
    assert abs(stated["auc_diff"]) <= 0.005 and "MatMulInteger" in {n.op_type for n in onnx.load(str(int8)).graph.node}
    source = write_csv(tmp_path / "rows.csv", raw_rows(200, seed=4), FEATURES)
    for model, out in ((int8, "int8.csv"), (run_dir, "fp32.csv")):
        assert run_cli(["predict", str(model), "--input", str(source), "--out", str(tmp_path / out)]) == 0
    got, expected = pa_csv.read_csv(tmp_path / "int8.csv"), pa_csv.read_csv(tmp_path / "fp32.csv")
    np.testing.assert_allclose(got["click"].to_numpy(), expected["click"].to_numpy(), atol=0.02)


def reversed_scores(onnx_model: bytes) -> bytes:
    """A model answering 1 - p for every task: its AUC is 1 - the original's."""
    model = onnx.load_from_string(onnx_model)
    one = onnx.numpy_helper.from_array(np.ones(1, dtype=np.float32), "reversed/one")
    model.graph.initializer.append(one)
    for output in model.graph.output:
        for node in model.graph.node:
            node.output[:] = [f"{o}/kept" if o == output.name else o for o in node.output]
        model.graph.node.append(onnx.helper.make_node("Sub", ["reversed/one", f"{output.name}/kept"], [output.name]))
    return model.SerializeToString()


def test_a_quantized_model_beyond_the_auc_tolerance_is_not_written(
        run_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from mtrec.export import onnx as onnx_export

    monkeypatch.setattr(onnx_export, "quantize_int8", reversed_scores)
    out = tmp_path / "int8.onnx"
    assert run_cli(["export", str(run_dir), "--out", str(out), "--quantize", "int8", "--inputs", "ids"]) == 1
    err = capsys.readouterr().err
    assert "test AUC differs" in err and "--auc-tolerance" in err and "nothing was written" in err
    assert not out.exists()
