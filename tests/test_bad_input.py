"""The bad-input battery (issue 13): user mistakes and faults against prepare, train, predict, export and serve.

Every CLI case must exit with status 2 and print exactly one line, ``error: ...``, naming what is wrong and
where (file, line, column, option or config key), with no traceback; and it must leave every input byte
for byte as it was and delete nothing: each file under the case's directory and under the shared inputs
is hashed before and after, and the only new files allowed are under the case's output path. A case's outcome (exit
status, traceback, lines, inputs changed, files written outside its output) is also appended as one JSON
line to the file ``$MTREC_BATTERY_LOG`` names, when set: ``benchmarks/bad_input_battery.py`` counts them
per family. The HTTP
cases must answer with their status code and the service's error shape (``error``: one line naming the
field, ``detail``: the problems). Further tests below check what users expect of files as common tools
write them (a byte-order mark, Spark's ``_SUCCESS``, pandas' ``True``/``False``, Parquet booleans).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import uvicorn
from safetensors.torch import load_file, save_file

from fakes import tiny_dataset
from mtrec.cli import main
from mtrec.data.dataset import PreparedDataset
from mtrec.io import temporary_prefix
from mtrec.serving.app import create_app
from mtrec.serving.predictor import Predictor
from mtrec.training.config import RunConfig, TrainConfig
from mtrec.training.run import train_run
from rawdata import FEATURES, raw_rows
from servers import serving

pytestmark = pytest.mark.usefixtures("one_thread")

COLUMNS = (*FEATURES, "click", "conversion")  # the raw file's header, in this order
ROWS = 60
CONFIG = """
name: shop
source: {path: PATH}
features:
  sparse: [user_id, item_id, category]
  dense: [price, activity]
  sequences:
    - {name: hist_click, column: hist_click, separator: "|", max_len: 5, table: item_id, target: item_id}
    - {name: hist_buy, column: hist_buy, separator: "|", max_len: 5, table: item_id, target: item_id}
tasks:
  - {name: click}
  - {name: conversion, observed_after: click}
user_id: user_id
split: {kind: random, seed: 0, fractions: [0.6, 0.2, 0.2]}
"""


# ---- the shared inputs ----------------------------------------------------------------------------------
@dataclass
class World:
    """Inputs every case may read (never write): a raw CSV and its config, the dataset prepared from them,
    a run trained on it, and a file to score."""

    root: Path
    rows: list[dict[str, str]]
    raw: Path
    config: Path
    data: Path
    run: Path
    scoring: Path


def csv_text(rows: list[dict[str, str]], columns: tuple[str, ...] = COLUMNS) -> str:
    """Rows as an unquoted CSV with a header: row i of ``rows`` is on line i + 2."""
    return ",".join(columns) + "\n" + "".join(",".join(r[c] for c in columns) + "\n" for r in rows)


def write_config(path: Path, raw: Path, text: str = CONFIG) -> Path:
    path.write_text(text.replace("PATH", str(raw)))
    return path


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    return build_world(tmp_path_factory)


def build_world(tmp_path_factory: pytest.TempPathFactory) -> World:
    """The shared inputs, made once per test module."""
    root = tmp_path_factory.mktemp("battery")
    rows = raw_rows(ROWS, seed=1)
    raw = root / "raw.csv"
    raw.write_text(csv_text(rows))
    config = write_config(root / "shop.yaml", raw)
    assert main_status(["prepare", str(config), "--out", str(root / "data")]) == 0
    run_config = RunConfig(model="mmoe", data=str(root / "data"),
                           model_options={"embedding_dim": 4, "num_experts": 2, "expert_sizes": [8],
                                          "tower_sizes": [4]},
                           train=TrainConfig(epochs=1, batch_size=32, num_threads=1, prefetch=0))
    train_run(run_config, root / "run", log=lambda _: None)
    scoring = root / "score.csv"
    scoring.write_text(csv_text(rows[:10], FEATURES))
    return World(root, rows, raw, config, root / "data", root / "run", scoring)


def main_status(argv: list[str]) -> int:
    """``mtrec ARGV`` in this process; its exit status (an exception that escapes fails the test)."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
        raise SystemExit(0)
    return int(exit_info.value.code or 0)


# ---- the cases -------------------------------------------------------------------------------------------
@dataclass
class Case:
    argv: list[str]
    expect: list[str]  # substrings of the error line: what is wrong and where
    out: Path | None = None  # the output path: files may appear under it (none may change elsewhere)
    absent: list[str] = field(default_factory=list)  # what the line must not say


Builder = Callable[[Path, World, pytest.MonkeyPatch], Case]
CASES: dict[str, Builder] = {}


def registrar(cases: dict[str, Builder]) -> Callable[[str], Callable[[Builder], Builder]]:
    """The ``@case(name)`` decorator of a battery file: adds a builder to ``cases`` under a new name."""

    def case(name: str) -> Callable[[Builder], Builder]:
        def add(build: Builder) -> Builder:
            assert name not in cases, name
            cases[name] = build
            return build

        return add

    return case


case = registrar(CASES)


def raw_variant(t: Path, w: World, edit: Callable[[list[dict[str, str]]], None] | None = None,
                text: str | None = None, suffix: str = ".csv") -> tuple[Path, Path]:
    """A copy of the raw file (rows edited, or the given text) and a config reading it."""
    rows = [dict(r) for r in w.rows]
    if edit is not None:
        edit(rows)
    raw = t / f"raw{suffix}"
    raw.write_text(text if text is not None else csv_text(rows))
    return raw, write_config(t / "shop.yaml", raw)


def prepare_argv(config: Path, out: Path, *extra: str) -> list[str]:
    return ["prepare", str(config), "--out", str(out), *extra]


def setter(row: int, column: str, value: str) -> Callable[[list[dict[str, str]]], None]:
    def edit(rows: list[dict[str, str]]) -> None:
        rows[row][column] = value

    return edit


# D1: data loss
@case("prepare: raw file inside --out")
def _(t: Path, w: World, mp: pytest.MonkeyPatch) -> Case:
    (t / "out").mkdir()
    raw, config = raw_variant(t / "out", w)
    return Case(prepare_argv(config, t / "out", "--raw", str(raw)), ["raw.csv", "inside the output directory"])


@case("prepare: --out holds other files")
def _(t: Path, w: World, mp: pytest.MonkeyPatch) -> Case:
    (t / "out").mkdir()
    (t / "out" / "notes.txt").write_text("mine")
    return Case(prepare_argv(w.config, t / "out"), ["not empty and not a prepared dataset", "notes.txt"])


@case("prepare: --out is a file")
def _(t: Path, w: World, mp: pytest.MonkeyPatch) -> Case:
    (t / "out.csv").write_text("mine")
    return Case(prepare_argv(w.config, t / "out.csv"), ["out.csv is a file"])


@case("prepare: --out holds a prepared dataset, no --overwrite")
def _(t: Path, w: World, mp: pytest.MonkeyPatch) -> Case:
    shutil.copytree(w.data, t / "out")
    return Case(prepare_argv(w.config, t / "out"), ["already holds a prepared dataset", "--overwrite"])


@case("prepare: --out . in a directory of files")
def _(t: Path, w: World, mp: pytest.MonkeyPatch) -> Case:
    (t / "notes.md").write_text("mine")
    mp.chdir(t)
    return Case(prepare_argv(w.config, Path(".")), ["not empty and not a prepared dataset", "notes.md"])


# D4: OS errors on output paths
@case("prepare: --out under a file")
def _(t: Path, w: World, mp: pytest.MonkeyPatch) -> Case:
    (t / "file").write_text("mine")
    return Case(prepare_argv(w.config, t / "file" / "out"), [str(t / "file"), "is a file, not a directory"])


@case("prepare: --out /proc/x")
def _(t: Path, w: World, mp: pytest.MonkeyPatch) -> Case:
    return Case(prepare_argv(w.config, Path("/proc/mtrec-battery")), ["/proc/mtrec-battery"])


@case("prepare: disk full while writing")
def _(t: Path, w: World, mp: pytest.MonkeyPatch) -> Case:
    def full(directory: Path) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", str(directory / "complete.json"))

    mp.setattr("mtrec.data.dataset.seal", full)
    return Case(prepare_argv(w.config, t / "out"), [str(t / "out"), "No space left on device"], t / "out")


# D2, D3: bad values, named with their real line
@case("prepare: label 'yes' on line 11")
def _(t: Path, w: World, mp: pytest.MonkeyPatch) -> Case:
    _, config = raw_variant(t, w, setter(9, "click", "yes"))
    return Case(prepare_argv(config, t / "out"), ["raw.csv, line 11", "'click'", "found 'yes'"])


for _token in ("inf", "-inf", "1e400", "Infinity"):
    def _infinite(t: Path, w: World, mp: pytest.MonkeyPatch, token: str = _token) -> Case:
        _, config = raw_variant(t, w, setter(4, "price", token))
        return Case(prepare_argv(config, t / "out"), ["raw.csv, line 6", "'price'", f"{token!r} is not a finite"])

    case(f"prepare: dense value {_token}")(_infinite)


@case("prepare: unclosed quote in the last column")
def _(t: Path, w: World, mp: pytest.MonkeyPatch) -> Case:
    _, config = raw_variant(t, w, setter(20, "conversion", '"0'))
    return Case(prepare_argv(config, t / "out"), ["raw.csv, line 22", "never closed"])


@case("prepare: unclosed quote in a middle column")
def _(t: Path, w: World, mp: pytest.MonkeyPatch) -> Case:
    _, config = raw_variant(t, w, setter(20, "category", '"c1'))
    return Case(prepare_argv(config, t / "out"), ["raw.csv, line 22", "never closed"])


@case("prepare: bad label after a value with a line break")
def _(t: Path, w: World, mp: pytest.MonkeyPatch) -> Case:
    def edit(rows: list[dict[str, str]]) -> None:
        rows[2]["category"] = '"c\nnew line"'  # one record on lines 4-5
        rows[9]["click"] = "2"  # record 11, line 12

    _, config = raw_variant(t, w, edit)
    return Case(prepare_argv(config, t / "out"), ["raw.csv, line 12", "found '2'"])


@case("prepare: invalid UTF-8")
def _(t: Path, w: World, mp: pytest.MonkeyPatch) -> Case:
    raw, config = raw_variant(t, w)
    lines = raw.read_bytes().split(b"\n")
    lines[6] = lines[6].replace(b",", b",\xff", 1)
    raw.write_bytes(b"\n".join(lines))
    return Case(prepare_argv(config, t / "out"), ["raw.csv, line 7", "not UTF-8"])


@case("prepare: wrong number of fields")
def _(t: Path, w: World, mp: pytest.MonkeyPatch) -> Case:
    _, config = raw_variant(t, w, setter(7, "price", "1,2"))
    return Case(prepare_argv(config, t / "out"), ["raw.csv, line 9", "expected 9 columns", "found 10"])


@case("prepare: empty raw file")
def _(t: Path, w: World, mp: pytest.MonkeyPatch) -> Case:
    _, config = raw_variant(t, w, text="")
    return Case(prepare_argv(config, t / "out"), ["raw.csv", "empty"])


@case("prepare: raw file not found")
def _(t: Path, w: World, mp: pytest.MonkeyPatch) -> Case:
    config = write_config(t / "shop.yaml", t / "nope.csv")
    return Case(prepare_argv(config, t / "out"), ["nope.csv", "not found"])


@case("prepare: Parquet struct column")
def _(t: Path, w: World, mp: pytest.MonkeyPatch) -> Case:
    columns: dict[str, Any] = {c: [r[c] for r in w.rows] for c in COLUMNS}
    columns["category"] = [{"a": i} for i in range(len(w.rows))]
    pq.write_table(pa.table(columns), t / "raw.parquet")
    config = write_config(t / "shop.yaml", t / "raw.parquet")
    return Case(prepare_argv(config, t / "out"), ["raw.parquet", "'category'", "struct"], absent=[", row "])


@case("prepare: --chunk-rows 0")
def _(t: Path, w: World, mp: pytest.MonkeyPatch) -> Case:
    return Case(prepare_argv(w.config, t / "out", "--chunk-rows", "0"), ["--chunk-rows", "0"])


@case("prepare: config with an unknown key")
def _(t: Path, w: World, mp: pytest.MonkeyPatch) -> Case:
    config = write_config(t / "shop.yaml", w.raw, CONFIG + "shuffle: true\n")
    return Case(prepare_argv(config, t / "out"), ["shop.yaml", "shuffle"])


# D7 for the dataset config: the same typed validation as the run config (one line naming the key)
DATASET_CONFIG_EDITS = {
    "max_len: 5.5": (("max_len: 5,", "max_len: 5.5,"), "features.sequences[0].max_len", "5.5"),
    "header: yes": (("source: {path: PATH}", "source: {path: PATH, header: 'yes'}"), "source.header", "'yes'"),
    "a task's type misspelt": (("- {name: click}", "- {name: click, type: binary_}"), "tasks[0].type",
                               "binary_"),
    "split seed a word": (("seed: 0,", "seed: zero,"), "split.seed", "zero"),
}


def config_edit_case(old: str, new: str, expect: list[str]) -> Builder:
    """A case: ``prepare`` with the shared dataset config, ``old`` replaced by ``new``; the error line names
    the config file and holds ``expect``."""

    def build(t: Path, w: World, mp: pytest.MonkeyPatch) -> Case:
        assert old in CONFIG
        config = write_config(t / "shop.yaml", w.raw, CONFIG.replace(old, new, 1))
        return Case(prepare_argv(config, t / "out"), ["shop.yaml", *expect])

    return build


for _edit, ((_old, _new), _key, _value) in DATASET_CONFIG_EDITS.items():
    case(f"prepare: config {_edit}")(config_edit_case(_old, _new, [_key, _value]))


@case("prepare: config not YAML")
def _(t: Path, w: World, mp: pytest.MonkeyPatch) -> Case:
    config = write_config(t / "shop.yaml", w.raw, CONFIG + "tasks: [\n")
    return Case(prepare_argv(config, t / "out"), ["shop.yaml", "not valid YAML"])


# D5, D6, D15: damaged or foreign prepared datasets
def data_copy(t: Path, w: World) -> Path:
    shutil.copytree(w.data, t / "data")
    return t / "data"


def train_argv(data: Path | str, out: Path, *extra: str) -> list[str]:
    return ["train", "--model", "mmoe", "--data", str(data), "--out", str(out), "--epochs", "1",
            "--batch-size", "32", *extra]


@case("train: zero-byte sparse.npy")
def _(t: Path, w: World, mp: pytest.MonkeyPatch) -> Case:
    data = data_copy(t, w)
    (data / "sparse.npy").write_bytes(b"")
    return Case(train_argv(data, t / "run"), ["sparse.npy has 0 bytes", "damaged"])


@case("train: truncated split file")
def _(t: Path, w: World, mp: pytest.MonkeyPatch) -> Case:
    data = data_copy(t, w)
    split = data / "splits" / "train.npy"
    split.write_bytes(split.read_bytes()[:-13])
    return Case(train_argv(data, t / "run"), ["splits/train.npy has", "damaged"])


@case("train: schema.json vocabulary smaller than the ids")
def _(t: Path, w: World, mp: pytest.MonkeyPatch) -> Case:
    data = data_copy(t, w)
    schema = json.loads((data / "schema.json").read_text())
    schema["sparse"][0]["vocab_size"] = 2
    (data / "schema.json").write_text(json.dumps(schema))
    return Case(train_argv(data, t / "run"), ["sparse.npy", "'user_id'", "outside [0, 2)"])


for _id in (10**6, -7):
    def _bad_id(t: Path, w: World, mp: pytest.MonkeyPatch, value: int = _id) -> Case:
        data = data_copy(t, w)
        block = np.load(data / "sparse.npy", mmap_mode="r+")
        block[17, 1] = value
        block.flush()
        del block
        return Case(train_argv(data, t / "run"), ["'item_id'", f"id {value} at row 17"])

    case(f"train: sparse id {_id}")(_bad_id)


@case("train: history id beyond its table")
def _(t: Path, w: World, mp: pytest.MonkeyPatch) -> Case:
    data = data_copy(t, w)
    block = np.load(data / "seq__hist_buy.npy", mmap_mode="r+")
    block[3, 0] = 10_000
    block.flush()
    del block
    return Case(train_argv(data, t / "run"), ["seq__hist_buy.npy", "'hist_buy'", "id 10000 at row 3"])


@case("train: a temporary left by a killed prepare")
def _(t: Path, w: World, mp: pytest.MonkeyPatch) -> Case:
    partial = t / ".data.99999999-host.abc123.tmp"
    shutil.copytree(w.data, partial)
    (partial / "complete.json").unlink()
    return Case(train_argv(partial, t / "run"), ["not a complete prepared dataset", "interrupted write"])


@case("train: a directory of .npy files that is not a prepared dataset")
def _(t: Path, w: World, mp: pytest.MonkeyPatch) -> Case:
    data = data_copy(t, w)
    (data / "complete.json").unlink()
    return Case(train_argv(data, t / "run"), [str(data), "not a complete prepared dataset"])


@case("train: --data does not exist")
def _(t: Path, w: World, mp: pytest.MonkeyPatch) -> Case:
    return Case(train_argv(t / "nope", t / "run"), ["nope"])


@case("train: --out is a file")
def _(t: Path, w: World, mp: pytest.MonkeyPatch) -> Case:
    (t / "run").write_text("mine")
    return Case(train_argv(w.data, t / "run"), ["run is a file"])


@case("train: --out holds other files")
def _(t: Path, w: World, mp: pytest.MonkeyPatch) -> Case:
    (t / "run").mkdir()
    (t / "run" / "config.yaml").write_text("mine")
    return Case(train_argv(w.data, t / "run"), ["not an mtrec run directory", "config.yaml"])


@case("train: --out . in a directory of files")
def _(t: Path, w: World, mp: pytest.MonkeyPatch) -> Case:
    (t / "notes.md").write_text("mine")
    mp.chdir(t)
    return Case(train_argv(w.data, Path(".")), ["not an mtrec run directory", "notes.md"])


@case("train: a loss that is not finite, before any checkpoint")
def _(t: Path, w: World, mp: pytest.MonkeyPatch) -> Case:
    return Case(train_argv(w.data, t / "run", "--lr", "1e30"), ["non-finite loss", "epoch 0"], t / "run",
                absent=["resume.safetensors"])


# D7: typed configs. A run config's text -> what the error line names
RUN_CONFIGS = {
    "lr a word": ("train: {lr: fast}", ["run.yaml", "train.lr", "'fast'"]),
    "epochs: ten": ("train: {epochs: ten}", ["train.epochs", "'ten'"]),
    "batch_size: 64.5": ("train: {batch_size: 64.5}", ["train.batch_size", "64.5"]),
    "batch_size: true": ("train: {batch_size: true}", ["train.batch_size", "True"]),
    "train: a list": ("train: [1, 2]", ["run.yaml", "train", "[1, 2]"]),
    "data: 5": ("data: 5", ["run.yaml", "data", "got 5"]),
    "num_experts: -1": ("model_options: {num_experts: -1}", ["run.yaml", "model 'mmoe'", "num_experts", "-1"]),
    "expert_sizes: big": ("model_options: {expert_sizes: big}", ["expert_sizes", "'big'"]),
    "expert_sizes: [0]": ("model_options: {expert_sizes: [0]}", ["expert_sizes[0]", "got 0"]),
    "dropout: 1.5": ("model_options: {dropout: 1.5}", ["dropout", "1.5"]),
    "an unknown model option": ("model_options: {num_expert: 2}", ["num_expert"]),
    "device: tpu": ("train: {device: tpu}", ["train.device", "'tpu'"]),
    "num_threads: -3": ("train: {num_threads: -3}", ["train.num_threads", "-3"]),
    "lr: .nan": ("train: {lr: .nan}", ["train.lr", "nan"]),
    "lr: 1e400": ("train: {lr: 1e400}", ["train.lr", "inf"]),
    "patience: -1": ("train: {patience: -1}", ["train.patience", "-1"]),
    "a negative task weight": ("train: {weighting_options: {weights: {click: -1.0}}}", ["weights.click", "-1.0"]),
    "a gradnorm alpha that is a word": ("train: {weighting: gradnorm, weighting_options: {alpha: x}}",
                                        ["weighting 'gradnorm'", "alpha", "'x'"]),
    "select: best": ("train: {select: best}", ["train.select", "'best'"]),
    "a misspelt train key": ("train: {epoch: 3}", ["train.epoch", "did you mean 'epochs'"]),
    "a misspelt top-level key": ("modle_options: {}", ["modle_options", "did you mean 'model_options'"]),
    "data: synthetic:hard": ("data: synthetic:hard", ["synthetic:hard", "unknown synthetic preset"]),
}

for _name, (_text, _expect) in RUN_CONFIGS.items():
    def _run_config(t: Path, w: World, mp: pytest.MonkeyPatch, text: str = _text, expect: list[str] = _expect
                    ) -> Case:
        (t / "run.yaml").write_text(f"model: mmoe\n{text}\n")
        return Case(["train", "--config", str(t / "run.yaml"), "--data", str(w.data), "--out", str(t / "run")]
                    if not text.startswith("data:") else ["train", "--config", str(t / "run.yaml"), "--out",
                                                          str(t / "run")], expect)

    case(f"train: run config {_name}")(_run_config)

OPTIONS = {  # command-line values -> what the error line names
    "--lr nan": (["--lr", "nan"], ["--lr", "nan"]),
    "--lr -1": (["--lr", "-1"], ["--lr", "-1"]),
    "--seed -1": (["--seed", "-1"], ["--seed", "-1"]),
    "--epochs 0": (["--epochs", "0"], ["--epochs", "got 0"]),
    "--batch-size 0": (["--batch-size", "0"], ["--batch-size", "got 0"]),
    "--epochs ten": (["--epochs", "ten"], ["--epochs", "'ten'"]),
}

for _name, (_args, _expect) in OPTIONS.items():
    def _option(t: Path, w: World, mp: pytest.MonkeyPatch, args: list[str] = _args, expect: list[str] = _expect
                ) -> Case:
        return Case(["train", "--model", "mmoe", "--data", str(w.data), "--out", str(t / "run"), *args], expect)

    case(f"train: {_name}")(_option)

SPECS = {"synthetic:hard": "unknown synthetic preset 'hard'", "synthetic:easy:10": "rows must be >= 100",
         "synthetic:easy:many": "ROWS must be an integer"}

for _spec, _expect in SPECS.items():
    def _spec_case(t: Path, w: World, mp: pytest.MonkeyPatch, spec: str = _spec, expect: str = _expect) -> Case:
        return Case(["train", "--model", "mmoe", "--data", spec, "--out", str(t / "run")], [spec, expect])

    case(f"train: --data {_spec}")(_spec_case)

BENCH_CONFIGS = {
    "a train key the model entry misspells": ("models: [{name: mmoe, train: {bogus: 1}}]\ndatasets: [synthetic]",
                                              ["bench.yaml", "models[0].train", "bogus"]),
    "no datasets": ("datasets: []", ["bench.yaml", "datasets"]),
    "seeds: 3": ("seeds: 3\ndatasets: [synthetic]", ["bench.yaml", "seeds", "got 3"]),
    "a negative seed": ("seeds: [0, -1]\ndatasets: [synthetic]", ["seeds[1]", "-1"]),
    "a seed under train": ("train: {seed: 1}\ndatasets: [synthetic]", ["train", "seeds:"]),
    "an unknown preset": ("datasets: [synthetic:hard]", ["datasets[0]", "synthetic:hard"]),
    "a pattern matching no model": ("models: ['nomodel*']\ndatasets: [synthetic]", ["models[0]", "nomodel*"]),
    "a bad shared model option": ("model_options: {num_experts: -2}\nmodels: [mmoe]\ndatasets: [synthetic]",
                                  ["bench.yaml", "num_experts", "-2"]),
}

for _name, (_text, _expect) in BENCH_CONFIGS.items():
    def _bench(t: Path, w: World, mp: pytest.MonkeyPatch, text: str = _text, expect: list[str] = _expect) -> Case:
        (t / "bench.yaml").write_text(text + "\n")
        return Case(["bench", str(t / "bench.yaml"), "--out", str(t / "report")], expect)

    case(f"bench: {_name}")(_bench)


# D11, D14, D4: predict, export and serve
def nan_run(t: Path, w: World) -> Path:
    shutil.copytree(w.run, t / "run")
    weights = load_file(str(t / "run" / "model.safetensors"))
    for name in list(weights)[:8]:
        weights[name] = weights[name].clone().fill_(float("nan"))
    save_file(weights, str(t / "run" / "model.safetensors"))
    return t / "run"


def predict_argv(w: World, run: Path, input_file: Path, out: Path | str, *extra: str) -> list[str]:
    return ["predict", str(run), "--input", str(input_file), "--out", str(out), "--backend", "torch", *extra]


@case("predict: --out is the input")
def _(t: Path, w: World, mp: pytest.MonkeyPatch) -> Case:
    shutil.copy(w.scoring, t / "in.csv")
    return Case(predict_argv(w, w.run, t / "in.csv", t / "in.csv"), ["in.csv", "is the input file"])


@case("predict: --chunk-rows 0")
def _(t: Path, w: World, mp: pytest.MonkeyPatch) -> Case:
    return Case(predict_argv(w, w.run, w.scoring, t / "out.csv", "--chunk-rows", "0"), ["--chunk-rows"])


@case("predict: --out is a directory")
def _(t: Path, w: World, mp: pytest.MonkeyPatch) -> Case:
    (t / "scores").mkdir()
    return Case(predict_argv(w, w.run, w.scoring, t / "scores"), ["scores is a directory"])


@case("predict: --out .")
def _(t: Path, w: World, mp: pytest.MonkeyPatch) -> Case:
    mp.chdir(t)
    return Case(predict_argv(w, w.run, w.scoring, "."), [f"{t} is a directory"])


@case("predict: --out under a file")
def _(t: Path, w: World, mp: pytest.MonkeyPatch) -> Case:
    (t / "file").write_text("mine")
    return Case(predict_argv(w, w.run, w.scoring, t / "file" / "out.csv"), ["is a file, not a directory"])


@case("predict: NaN weights (torch backend)")
def _(t: Path, w: World, mp: pytest.MonkeyPatch) -> Case:
    return Case(predict_argv(w, nan_run(t, w), w.scoring, t / "out.csv"), ["model.safetensors", "NaN"])


@case("predict: NaN weights (onnx backend)")
def _(t: Path, w: World, mp: pytest.MonkeyPatch) -> Case:
    argv = predict_argv(w, nan_run(t, w), w.scoring, t / "out.csv")
    return Case([*argv[:-2], "--backend", "onnx"], ["model.safetensors", "NaN"])


@case("predict: an infinite value")
def _(t: Path, w: World, mp: pytest.MonkeyPatch) -> Case:
    rows = [dict(r) for r in w.rows[:10]]
    rows[3]["price"] = "inf"
    (t / "in.csv").write_text(csv_text(rows, FEATURES))
    return Case(predict_argv(w, w.run, t / "in.csv", t / "out.csv"), ["in.csv, line 5", "'price'", "'inf'"],
                absent=["pyarrow", "Scalar"])


@case("predict: a missing column")
def _(t: Path, w: World, mp: pytest.MonkeyPatch) -> Case:
    (t / "in.csv").write_text(csv_text(w.rows[:10], FEATURES[:-1]))
    return Case(predict_argv(w, w.run, t / "in.csv", t / "out.csv"), ["in.csv", f"'{FEATURES[-1]}'"])


@case("predict: input not found")
def _(t: Path, w: World, mp: pytest.MonkeyPatch) -> Case:
    return Case(predict_argv(w, w.run, t / "nope.csv", t / "out.csv"), ["nope.csv", "not found"])


@case("export: --out is a directory")
def _(t: Path, w: World, mp: pytest.MonkeyPatch) -> Case:
    (t / "models").mkdir()
    return Case(["export", str(w.run), "--out", str(t / "models")], ["models is a directory"])


@case("export: --out .")
def _(t: Path, w: World, mp: pytest.MonkeyPatch) -> Case:
    mp.chdir(t)
    return Case(["export", str(w.run), "--out", "."], [f"{t} is a directory"])


@case("export: --out under /proc")
def _(t: Path, w: World, mp: pytest.MonkeyPatch) -> Case:
    return Case(["export", str(w.run), "--out", "/proc/mtrec-battery/m.onnx"], ["/proc/mtrec-battery/m.onnx"])


@case("export: NaN weights")
def _(t: Path, w: World, mp: pytest.MonkeyPatch) -> Case:
    return Case(["export", str(nan_run(t, w)), "--out", str(t / "m.onnx")], ["model.safetensors", "NaN"])


@case("serve: NaN weights")
def _(t: Path, w: World, mp: pytest.MonkeyPatch) -> Case:
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the server was started with an invalid model")

    mp.setattr(uvicorn, "run", refuse)
    return Case(["serve", str(nan_run(t, w)), "--backend", "torch"], ["model.safetensors", "NaN"])


# ---- running a case --------------------------------------------------------------------------------------
def snapshot(*roots: Path) -> dict[Path, str]:
    """Every file under ``roots`` -> its SHA-256."""
    return {p: hashlib.sha256(p.read_bytes()).hexdigest()
            for root in roots for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_one_clear_line_and_loses_nothing(
    name: str, world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    check_built(CASES[name], tmp_path, world, monkeypatch, capfd)


def check_built(build: Builder, tmp_path: Path, world: World, monkeypatch: pytest.MonkeyPatch,
                capfd: pytest.CaptureFixture[str]) -> None:
    """Build a case in a directory of its own under ``tmp_path`` and check it (:func:`check_case`)."""
    t = tmp_path / "case"
    t.mkdir()
    check_case(build(t, world, monkeypatch), t, world, capfd)


def check_case(case: Case, t: Path, world: World, capfd: pytest.CaptureFixture[str]) -> None:
    """Run ``case`` (built in ``t``): one ``error:`` line holding what it expects, exit status 2, no input
    changed, nothing written outside its output."""
    before = snapshot(t, world.root)
    capfd.readouterr()
    try:
        status = main_status(case.argv)
    except BaseException:  # an exception escaped main: a traceback
        record_outcome(status=None, traceback=True, lines=0, lost=[], stray=[])
        raise
    err = capfd.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    after = snapshot(t, world.root)
    changed = [str(p) for p, digest in before.items() if after.get(p) != digest]
    new = [p for p in after if p not in before and not (case.out and (p == case.out or case.out in p.parents))]
    record_outcome(status=status, traceback="Traceback" in err, lines=len(lines), lost=changed,
                   stray=[str(p) for p in new])
    assert status == 2, err
    assert "Traceback" not in err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for part in case.expect:
        assert part in lines[0], f"{part!r} not in {lines[0]!r}"
    for part in case.absent:
        assert part not in lines[0], f"{part!r} in {lines[0]!r}"
    assert not changed, f"inputs changed or deleted: {changed}"
    assert not new, f"files written outside the output: {new}"


BATTERY_LOG = "MTREC_BATTERY_LOG"


def record_outcome(**outcome: Any) -> None:
    """Append the running case's outcome (and its test id) to ``$MTREC_BATTERY_LOG`` if it is set."""
    path = os.environ.get(BATTERY_LOG)
    if path:
        test = os.environ.get("PYTEST_CURRENT_TEST", "").rsplit(" (", 1)[0]
        with open(path, "a") as fh:
            fh.write(json.dumps({"test": test, **outcome}) + "\n")


# ---- the service -----------------------------------------------------------------------------------------
LIMIT = 4096


@pytest.fixture(scope="module")
def client(world: World) -> Iterator[httpx.Client]:
    """The service on loopback, with a small body limit."""
    app = create_app(Predictor.from_run(world.run, backend="torch"), max_body_bytes=LIMIT)
    with serving(app) as url, httpx.Client(base_url=url, timeout=20) as c:
        yield c


def _streamed(total: int) -> Iterator[bytes]:
    """A JSON body of about ``total`` bytes, sent in chunks without a Content-Length."""
    yield b'{"user": {}, "candidates": ["'
    for _ in range(total // 1024):
        yield b"x" * 1024
    yield b'"]}'


HTTP_CASES: dict[str, tuple[Callable[[], bytes | Iterator[bytes]], int, str]] = {
    "invalid UTF-8": (lambda: b'{"user": {"user_id": "\xff\xfe"}, "candidates": [{}]}', 422,
                      "body: not valid JSON: not UTF-8 text"),
    "JSON nested too deeply": (lambda: b"[" * 2000 + b"]" * 2000, 422, "body: not valid JSON: nested too deeply"),
    "malformed JSON": (lambda: b'{"user": ', 422, "body: not valid JSON"),
    "body over the limit, declared": (lambda: b" " * (LIMIT + 1), 413, f"over {LIMIT} bytes"),
    "body over the limit, streamed": (lambda: _streamed(LIMIT * 64), 413, f"over {LIMIT} bytes"),
}


@pytest.mark.parametrize("name", list(HTTP_CASES))
def test_bad_request_gets_the_documented_error_shape(name: str, client: httpx.Client) -> None:
    body, status, message = HTTP_CASES[name]
    response = client.post("/v1/score", content=body(), headers={"content-type": "application/json"})
    assert response.status_code == status, response.text
    answer = response.json()
    assert set(answer) == {"error", "detail"} and "\n" not in answer["error"]
    assert message in answer["error"], answer


def test_head_healthz_and_unknown_routes(client: httpx.Client) -> None:
    assert client.head("/healthz").status_code == 200
    for response, status in ((client.get("/nope"), 404), (client.post("/healthz"), 405)):
        assert response.status_code == status
        assert set(response.json()) == {"error", "detail"} and "/" in response.json()["error"]


# ---- files as common tools write them ----------------------------------------------------------------------
def _spark(t: Path, w: World) -> Path:
    """Spark's output directory: part files, a _SUCCESS marker and hidden .crc checksums."""
    out = t / "spark"
    out.mkdir()
    half = len(w.rows) // 2
    (out / "part-00000.csv").write_text(csv_text(w.rows[:half]))
    (out / "part-00001.csv").write_text(csv_text(w.rows[half:]))
    (out / "_SUCCESS").write_text("")
    (out / ".part-00000.csv.crc").write_bytes(b"\x00crc")
    return out


def _parquet_booleans(t: Path, w: World) -> Path:
    columns: dict[str, Any] = {c: [r[c] for r in w.rows] for c in FEATURES}
    columns.update({task: [r[task] == "1" for r in w.rows] for task in ("click", "conversion")})
    pq.write_table(pa.table(columns), t / "raw.parquet")
    return t / "raw.parquet"


def _text(t: Path, text: str, encoding: str = "utf-8") -> Path:
    (t / "raw.csv").write_bytes(text.encode(encoding))
    return t / "raw.csv"


WRITERS: dict[str, Callable[[Path, World], Path]] = {
    "Excel: UTF-8 with a byte-order mark, CRLF": lambda t, w: _text(t, csv_text(w.rows).replace("\n", "\r\n"),
                                                                     "utf-8-sig"),
    "classic Mac OS: CR line endings": lambda t, w: _text(t, csv_text(w.rows).replace("\n", "\r")),
    "pandas: labels True/False": lambda t, w: _text(t, csv_text(
        [{**r, "click": str(r["click"] == "1"), "conversion": str(r["conversion"] == "1")} for r in w.rows])),
    "pandas: labels 1.0/0.0": lambda t, w: _text(t, csv_text(
        [{**r, "click": f"{r['click']}.0", "conversion": f"{r['conversion']}.0"} for r in w.rows])),
    "Spark: part files, _SUCCESS, .crc": _spark,
    "Parquet: boolean labels": _parquet_booleans,
}


@pytest.mark.parametrize("writer", list(WRITERS))
def test_files_as_common_tools_write_them_prepare_the_same_dataset(writer: str, world: World, tmp_path: Path) -> None:
    raw = WRITERS[writer](tmp_path, world)
    config = write_config(tmp_path / "shop.yaml", raw)
    assert main_status(prepare_argv(config, tmp_path / "out")) == 0
    for block in ("sparse.npy", "dense.npy", "labels.npy", "seq__hist_click.npy", "splits/train.npy"):
        assert np.array_equal(np.load(tmp_path / "out" / block), np.load(world.data / block)), block


def test_overwrite_replaces_a_prepared_dataset(world: World, tmp_path: Path) -> None:
    shutil.copytree(world.data, tmp_path / "out")
    (tmp_path / "out" / "sparse.npy").write_bytes(b"")
    assert main_status(prepare_argv(world.config, tmp_path / "out", "--overwrite")) == 0
    assert PreparedDataset.load(tmp_path / "out").num_rows == ROWS
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # nothing left beside it


def test_a_number_in_yaml_is_a_number(world: World, tmp_path: Path) -> None:
    (tmp_path / "run.yaml").write_text("model: mmoe\ntrain: {lr: 1e-3, epochs: 1, batch_size: 32}\n")
    argv = ["train", "--config", str(tmp_path / "run.yaml"), "--data", str(world.data), "--out", str(tmp_path / "run")]
    assert main_status(argv) == 0
    assert json.loads((tmp_path / "run" / "config.json").read_text())["train"]["lr"] == 0.001


def _strict(text: str) -> Any:
    def refuse(name: str) -> None:
        raise AssertionError(f"{name} in a JSON file")

    return json.loads(text, parse_constant=refuse)


def test_json_files_are_strict_json_with_null_for_undefined_metrics(tmp_path: Path) -> None:
    data = tiny_dataset(rows=100)
    data.labels[:, 1] = 0.0  # no conversion at all: its AUC is undefined
    data.save(tmp_path / "data")
    assert main_status(train_argv(tmp_path / "data", tmp_path / "run")) == 0
    metrics = _strict((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["test"]["conversion"]["auc"] is None and metrics["warnings"] == []
    for line in (tmp_path / "run" / "history.jsonl").read_text().splitlines():
        assert _strict(line)["valid"]["conversion"]["auc"] is None
    for path in [*(tmp_path / "run").glob("*.json"), *(tmp_path / "data").rglob("*.json")]:
        _strict(path.read_text())


def test_a_diverged_run_says_so_in_the_log_and_metrics(world: World, tmp_path: Path,
                                                       capfd: pytest.CaptureFixture[str]) -> None:
    # in fp32 this learning rate leaves the losses finite but far above the first step's (in bf16 the run
    # reaches a non-finite loss, which stops the run instead)
    argv = train_argv(world.data, tmp_path / "run", "--lr", "1e6", "--epochs", "2", "--precision", "fp32")
    assert main_status(argv) == 0
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["warnings"] and all("training diverged" in w for w in metrics["warnings"])
    assert len(metrics["warnings"]) <= len(metrics["tasks"])  # once per task, not once per epoch
    assert "warning: training diverged: epoch " in capfd.readouterr().out


def test_stale_temporaries_of_killed_writes_are_removed_and_nothing_else(world: World, tmp_path: Path) -> None:
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    shutil.copytree(world.run, tmp_path / "run")
    stale = tmp_path / "run" / f"{temporary_prefix('metrics.json', pid)}abc.tmp"
    live = tmp_path / "run" / f"{temporary_prefix('roc.png')}abc.tmp"  # this process: still writing
    stale.write_text("half")
    live.write_text("half")
    stale_dir = tmp_path / f"{temporary_prefix('data', pid)}abc.tmp"
    shutil.copytree(world.data, stale_dir)
    assert main_status(train_argv(world.data, tmp_path / "run", "--overwrite")) == 0
    assert not stale.exists() and live.exists()
    assert main_status(prepare_argv(world.config, tmp_path / "data")) == 0
    assert not stale_dir.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "run"]


def test_dynamo_exports_a_model_without_histories_and_no_shape_warnings(capfd: pytest.CaptureFixture[str]) -> None:
    import dataclasses

    import torch

    from mtrec.export.onnx import export_checked, parity_batches
    from mtrec.models import create_model

    schema = dataclasses.replace(tiny_dataset(rows=8).schema, sequences=())
    torch.manual_seed(0)
    model = create_model("shared_bottom", schema, bottom_sizes=[8], tower_sizes=[4]).eval()
    batches, source = parity_batches(schema, None, rows=64, batch_size=32)
    for exporter in ("torchscript", "dynamo"):
        checked = export_checked(model, batches, source, exporter=exporter)  # type: ignore[arg-type]
        assert checked.exporter == exporter and checked.parity.ok
    assert "VerifyOutputSizes" not in capfd.readouterr().err


def test_roc_plot_leaves_out_rows_without_a_finite_score(tmp_path: Path) -> None:
    from mtrec.training.plots import plot_roc

    probs = {"click": np.array([0.1, np.nan, 0.7, 0.4, np.inf])}
    labels = {"click": np.array([0.0, 1.0, 1.0, 0.0, 1.0])}
    plot_roc(probs, labels, {"click": np.ones(5)}, tmp_path / "roc.png")
    assert (tmp_path / "roc.png").stat().st_size > 0
