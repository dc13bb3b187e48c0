"""The bad-input battery of the data side: config files that attack the reader (YAML alias bombs, files
that never end), values that would become ±inf, number tokens Arrow refuses, raw files as some tools
write them, sizes beyond the machine, a full disk, two writers of one directory, outputs that are not
regular files.

Each case runs through :func:`test_bad_input.check_case`: exit status 2, one ``error:`` line naming what
is wrong and where, no input changed, nothing written outside the case's output. A case's name starts
with its family (``yaml: ...``), which the battery script counts by.
"""

from __future__ import annotations

import datetime
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mtrec.locks import locked_directory
from procs import child_env
from rawdata import FEATURES, raw_rows
from test_bad_input import (
    CONFIG,
    Builder,
    Case,
    World,
    build_world,
    check_built,
    check_case,
    config_edit_case,
    csv_text,
    main_status,
    predict_argv,
    prepare_argv,
    raw_variant,
    registrar,
    setter,
    train_argv,
    write_config,
)

pytestmark = pytest.mark.usefixtures("one_thread")
CASES: dict[str, Builder] = {}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    return build_world(tmp_path_factory)


case = registrar(CASES)
# ---- yaml: config files that attack the reader ------------------------------------------------------------
def alias_bomb(depth: int = 9) -> str:
    """About 600 bytes of YAML whose aliases expand to 9**depth strings: anchors ``&l0 .. &l{depth-1}``."""
    lines = ['l0: &l0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    lines += [f"l{i}: &l{i} [{','.join([f'*l{i - 1}'] * 9)}]" for i in range(1, depth)]
    return "\n".join(lines) + "\n"


@case("yaml: alias bomb under a dataset config's ignore")
def _(t: Path, w: World, mp: pytest.MonkeyPatch) -> Case:
    bomb = alias_bomb()
    config = write_config(t / "shop.yaml", w.raw, bomb + CONFIG + "ignore: *l8\n")
    assert len(bomb) < 700
    return Case(prepare_argv(config, t / "out"), ["shop.yaml", "not valid YAML", "alias"])


for _key in ("model_options", "model"):
    def _bomb_in_run_config(t: Path, w: World, mp: pytest.MonkeyPatch, key: str = _key) -> Case:
        value = {"model_options": "{embedding_dim: *l8}", "model": "*l8"}[key]
        (t / "run.yaml").write_text(alias_bomb() + f"data: {w.data}\n" + ("model: mmoe\n" if key != "model" else "")
                                    + f"{key}: {value}\n")
        return Case(["train", "--config", str(t / "run.yaml"), "--out", str(t / "run")], ["run.yaml", "alias"])

    case(f"yaml: alias bomb under a run config's {_key}")(_bomb_in_run_config)


@case("yaml: a large value is printed short")
def _(t: Path, w: World, mp: pytest.MonkeyPatch) -> Case:
    config = write_config(t / "shop.yaml", w.raw, alias_bomb(4) + CONFIG + "ignore: [*l3, *l3]\n")
    return Case(prepare_argv(config, t / "out"), ["shop.yaml", "ignore", "..."],
                absent=["'lol', 'lol', 'lol', 'lol', 'lol', 'lol', 'lol'"])


@case("yaml: an alias inside its own value")
def _(t: Path, w: World, mp: pytest.MonkeyPatch) -> Case:
    config = write_config(t / "shop.yaml", w.raw, CONFIG + "ignore: &a [x, *a]\n")
    return Case(prepare_argv(config, t / "out"), ["shop.yaml", "not valid YAML"])


for _command in ("prepare", "train"):
    def _device_config(t: Path, w: World, mp: pytest.MonkeyPatch, command: str = _command) -> Case:
        argv = (prepare_argv(Path("/dev/zero"), t / "out") if command == "prepare"
                else ["train", "--config", "/dev/zero", "--out", str(t / "run")])
        return Case(argv, ["/dev/zero", "not a regular file"])

    case(f"yaml: {_command} --config /dev/zero")(_device_config)


@case("yaml: --config names a FIFO")
def _(t: Path, w: World, mp: pytest.MonkeyPatch) -> Case:
    os.mkfifo(t / "config.yaml")  # opening it to read would wait for a writer forever
    return Case(prepare_argv(t / "config.yaml", t / "out"), ["config.yaml", "not a regular file"])


@case("yaml: a config file of 17 MiB")
def _(t: Path, w: World, mp: pytest.MonkeyPatch) -> Case:
    config = write_config(t / "shop.yaml", w.raw, CONFIG + "#" + "x" * (17 << 20) + "\n")
    return Case(prepare_argv(config, t / "out"), ["shop.yaml", "bytes, more than a dataset config may be"])


# ---- values: what would become ±inf, and number tokens Arrow refuses ---------------------------------------
def every_row(column: str, value: str) -> Callable[[list[dict[str, str]]], None]:
    def edit(rows: list[dict[str, str]]) -> None:
        for row in rows[::3]:
            row[column] = value

    return edit


for _value in ("1e308", "1e200", "-1e200"):
    def _huge(t: Path, w: World, mp: pytest.MonkeyPatch, value: str = _value) -> Case:
        _, config = raw_variant(t, w, every_row("price", value))
        return Case(prepare_argv(config, t / "out"), ["raw.csv, line", "column 'price'"])

    case(f"values: {_value} among prices, standardised")(_huge)


@case("values: 1e39 with standardize: false (float32 overflow)")
def _(t: Path, w: World, mp: pytest.MonkeyPatch) -> Case:
    raw, _ = raw_variant(t, w, setter(4, "price", "1e39"))
    config = write_config(t / "shop.yaml", raw, CONFIG.replace("dense: [price, activity]",
                                                              "dense: [{name: price, standardize: false}, activity]"))
    return Case(prepare_argv(config, t / "out"), ["raw.csv, line 6", "column 'price'", "'1e39'", "out of range"])


case("values: fill: 1e300")(config_edit_case("dense: [price, activity]", "dense: [{name: price, fill: 1e300}, "
                                               "activity]", ["features.dense[0].fill", "1e+300"]))


@case("values: Parquet price 1.7e308")
def _(t: Path, w: World, mp: pytest.MonkeyPatch) -> Case:
    columns: dict[str, list[object]] = {c: [r[c] for r in w.rows] for c in (*FEATURES, "click", "conversion")}
    columns["price"] = [1.7e308 if i % 3 == 0 else float(v) for i, v in enumerate(columns["price"])]
    pq.write_table(pa.table(columns), t / "raw.parquet")
    config = write_config(t / "shop.yaml", t / "raw.parquet")
    return Case(prepare_argv(config, t / "out"), ["raw.parquet, row", "column 'price'"])


for _token in (" 5.0 ", "1_000", "\u0665", "\uff15", "5\u00a0"):
    def _token_case(t: Path, w: World, mp: pytest.MonkeyPatch, token: str = _token) -> Case:
        _, config = raw_variant(t, w, setter(4, "price", token))
        return Case(prepare_argv(config, t / "out"), ["raw.csv, line 6", "column 'price'", repr(token)])

    case(f"values: dense token {_token!r} Python reads and Arrow does not")(_token_case)


# ---- files: raw files as some tools write them --------------------------------------------------------------
@case("files: a record longer than the largest read block")
def _(t: Path, w: World, mp: pytest.MonkeyPatch) -> Case:
    mp.setattr("mtrec.data.readers._BLOCK_SIZES", (1 << 12, 1 << 13))
    _, config = raw_variant(t, w, setter(9, "hist_click", "|".join(["i1"] * 20_000)))
    return Case(prepare_argv(config, t / "out"), ["raw.csv, line 11", "record longer than"])


@case("files: a Parquet timestamp split column and a bound that is no time")
def _(t: Path, w: World, mp: pytest.MonkeyPatch) -> Case:
    config = _timestamp_split(t, w, "2024-01-3x")
    return Case(prepare_argv(config, t / "out"), ["raw.parquet", "split.train.to", "'2024-01-3x'"])


def _timestamp_split(t: Path, w: World, bound: str) -> Path:
    """A Parquet copy of the raw rows with a timestamp column ``day`` (one day per row) and a config that
    splits by it: train before ``bound``, valid up to 2024-02-15, test after."""
    columns: dict[str, object] = {c: [r[c] for r in w.rows] for c in (*FEATURES, "click", "conversion")}
    start = datetime.datetime(2024, 1, 1)
    columns["day"] = pa.array([start + datetime.timedelta(days=i) for i in range(len(w.rows))], pa.timestamp("ms"))
    pq.write_table(pa.table(columns), t / "raw.parquet")
    split = (f'split: {{kind: column, column: day, train: {{to: "{bound}"}}, valid: {{from: "{bound}", '
             f'to: "2024-02-15"}}, test: {{from: "2024-02-15"}}}}')
    return write_config(t / "shop.yaml", t / "raw.parquet",
                        CONFIG.replace("split: {kind: random, seed: 0, fractions: [0.6, 0.2, 0.2]}", split))


def test_a_parquet_timestamp_split_column_splits_by_time(world: World, tmp_path: Path) -> None:
    config = _timestamp_split(tmp_path, world, "2024-01-31")
    assert main_status(prepare_argv(config, tmp_path / "out")) == 0
    splits = {s: np.load(tmp_path / "out" / "splits" / f"{s}.npy") for s in ("train", "valid", "test")}
    assert splits["train"].tolist() == list(range(30))  # days 2024-01-01 .. 01-30
    assert splits["valid"].tolist() == list(range(30, 45)) and splits["test"].tolist() == list(range(45, 60))


def test_a_field_longer_than_a_read_block_is_read(world: World, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A record longer than the read block is read again with the next block size, from its row on: the
    dataset is the one a large block reads at once."""
    history = "|".join(f"i{k % 40}" for k in range(3000))  # ~14 KB
    _, config = raw_variant(tmp_path, world, setter(9, "hist_click", history))
    for out, sizes in (("small", (1 << 12, 1 << 16)), ("large", (1 << 20,))):
        monkeypatch.setattr("mtrec.data.readers._BLOCK_SIZES", sizes)
        assert main_status(prepare_argv(config, tmp_path / out)) == 0
    for block in ("sparse.npy", "seq__hist_click.npy", "labels.npy", "splits/train.npy"):
        assert np.array_equal(np.load(tmp_path / "small" / block), np.load(tmp_path / "large" / block)), block


# ---- sizes: beyond the machine's memory ------------------------------------------------------------------------
@case("sizes: train --data synthetic:easy:1000000000000")
def _(t: Path, w: World, mp: pytest.MonkeyPatch) -> Case:
    return Case(train_argv("synthetic:easy:1000000000000", t / "run"),
                ["synthetic:easy:1000000000000", "ROWS", "memory"])


case("sizes: sequence max_len 1000000000")(config_edit_case("max_len: 5,", "max_len: 1000000000,",
                                                           ["features.sequences[0].max_len", "memory"]))


# ---- disk: a file system without room ----------------------------------------------------------------------------
@case("disk: less free space than the dataset needs")
def _(t: Path, w: World, mp: pytest.MonkeyPatch) -> Case:
    real = __import__("shutil").disk_usage

    def nearly_full(path: str | Path) -> object:
        return real(path)._replace(free=1000)

    mp.setattr("mtrec.resources.shutil.disk_usage", nearly_full)
    return Case(prepare_argv(w.config, t / "out"), ["prepared dataset", "free"], t / "out")


def test_prepare_into_a_file_size_limit_is_one_line_not_a_signal(world: World, tmp_path: Path) -> None:
    """A file system that fills up half way through a column block, made with ``RLIMIT_FSIZE`` (no mount
    needed): writes past the limit fail as writes to a full disk do. The blocks are written with plain
    writes (a full disk under a memory map is SIGBUS, exit 135, no message), so it is one line, exit 2,
    and no temporary is left."""
    rows = raw_rows(4000, seed=3)
    (tmp_path / "raw.csv").write_text(csv_text(rows))
    config = write_config(tmp_path / "shop.yaml", tmp_path / "raw.csv")

    def limit() -> None:
        import resource

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (60_000, 60_000))

    done = subprocess.run([sys.executable, "-m", "mtrec", "prepare", str(config), "--out", str(tmp_path / "out")],
                          env=child_env(), capture_output=True, text=True, timeout=120, preexec_fn=limit)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, done.stderr
    assert len(lines) == 1 and lines[0].startswith("error: ") and "File too large" in lines[0], done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw.csv", "shop.yaml"]


# ---- locks: two writers of one directory ------------------------------------------------------------------------
def test_prepare_and_bench_refuse_a_directory_another_process_writes(world: World, tmp_path: Path,
                                                                    capfd: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "bench.yaml").write_text("models: [mmoe]\ndatasets: [synthetic]\n")
    commands = {"prepare": prepare_argv(world.config, tmp_path / "out"),
                "bench": ["bench", str(tmp_path / "bench.yaml"), "--out", str(tmp_path / "out")]}
    for command, argv in commands.items():
        with locked_directory(tmp_path / "out"):
            check_case(Case(argv, [str(tmp_path / "out"), "another mtrec process"], tmp_path / "out"),
                       tmp_path, world, capfd)
        assert not (tmp_path / "out").exists(), command


# ---- paths: outputs that are not regular files, names that leave their directory -------------------------------
@case("paths: predict --out names a FIFO")
def _(t: Path, w: World, mp: pytest.MonkeyPatch) -> Case:
    os.mkfifo(t / "scores.csv")
    return Case(predict_argv(w, w.run, w.scoring, t / "scores.csv"), ["scores.csv", "not a regular file"])


@case("paths: prepare --out names a FIFO")
def _(t: Path, w: World, mp: pytest.MonkeyPatch) -> Case:
    os.mkfifo(t / "data")
    return Case(prepare_argv(w.config, t / "data"), ["data", "a device, FIFO or socket, not a directory"])


@case("paths: bench --out names a FIFO")
def _(t: Path, w: World, mp: pytest.MonkeyPatch) -> Case:
    os.mkfifo(t / "report")
    (t / "bench.yaml").write_text("models: [mmoe]\ndatasets: [synthetic]\n")
    return Case(["bench", str(t / "bench.yaml"), "--out", str(t / "report")],
                ["bench report directory", "report", "not a directory"])


@case("paths: train --data ''")
def _(t: Path, w: World, mp: pytest.MonkeyPatch) -> Case:
    return Case(train_argv("", t / "run"), ["data spec is empty"])


@case("paths: bench name ../../..")
def _(t: Path, w: World, mp: pytest.MonkeyPatch) -> Case:
    (t / "bench.yaml").write_text("name: ../../..\nmodels: [mmoe]\ndatasets: [synthetic]\n")
    return Case(["bench", str(t / "bench.yaml")], ["bench.yaml", "name", "plain name", "'../../..'"])


@pytest.mark.parametrize("name", list(CASES))
def test_bad_data_input_is_one_clear_line_and_loses_nothing(
    name: str, world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    check_built(CASES[name], tmp_path, world, monkeypatch, capfd)


def test_a_fifo_named_as_output_is_left_a_fifo(world: World, tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "scores.csv")
    assert main_status(predict_argv(world, world.run, world.scoring, tmp_path / "scores.csv")) == 2
    assert (tmp_path / "scores.csv").is_fifo()
