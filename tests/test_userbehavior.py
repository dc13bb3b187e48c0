"""The Taobao UserBehavior reader (src/mtrec/data/formats/userbehavior.py): no label leaks into a history, labels
follow the view, sampled negatives, determinism, streaming, bad logs; the shipped config on a slice of the
real log (prepare, train) and the Census standard protocol config on slices of the real files."""

from __future__ import annotations

import gzip
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from conftest import require_shared_data
from mtrec.cli import main
from mtrec.data.config import DatasetConfigError, SourceConfig, load_dataset_config, parse_dataset_config
from mtrec.data.formats.userbehavior import (
    BEHAVIOURS,
    COLUMNS,
    Events,
    UserBehaviorError,
    UserBehaviorOptions,
    training_rows,
)
from mtrec.data.prepare import prepare_dataset
from mtrec.data.readers import iter_chunks, read_layout
from mtrec.training.config import RunConfig, TrainConfig
from mtrec.training.run import train_run

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "datasets"
LOG = "taobao-userbehavior/UserBehavior_head.csv"


def _log(n_users: int = 12, per_user: int = 40, seed: int = 0) -> list[tuple[int, int, int, str, int]]:
    """Events grouped by user, time-ordered within a user, with repeated timestamps and repeated items."""
    rng = np.random.default_rng(seed)
    events = []
    for u in range(n_users):
        t = 1_000_000 + int(rng.integers(0, 1000))
        for _ in range(per_user):
            t += int(rng.choice([0, 0, 30, 600, 50_000]))  # same-second events are common
            item = int(rng.integers(0, 25))
            behaviour = str(rng.choice(BEHAVIOURS, p=[0.7, 0.1, 0.1, 0.1]))
            events.append((100 + u, item, item % 5, behaviour, t))
    return events


def _write(path: Path, events: list[tuple[int, int, int, str, int]]) -> Path:
    path.write_text("".join(",".join(map(str, e)) + "\n" for e in events))
    return path


def _rows(path: Path, chunk_rows: int = 1000, **options: Any) -> list[dict[str, str]]:
    source = SourceConfig(path=(str(path),), format="userbehavior", options=UserBehaviorOptions(**options))
    layout = read_layout(path, source)
    return [r for chunk in iter_chunks(path, source, layout, list(COLUMNS), chunk_rows)
            for r in chunk.table.to_pylist()]


def _tokens(text: str) -> list[int]:
    return [int(t) for t in text.split("|")] if text else []


def test_histories_hold_only_events_strictly_before_the_row(tmp_path: Path) -> None:
    """With every event on its own item, a history token identifies its event: each one is of the
    history's behaviour, the row's user, strictly earlier; and the history is all of them (the latest
    max_history)."""
    events = [(u, 10_000 + i, i % 7, b, t) for i, (u, _, _, b, t) in enumerate(_log())]
    rows = _rows(_write(tmp_path / "log.csv", events), max_history=6, negatives=2)
    by_item = {e[1]: e for e in events}
    assert len(rows) > 300
    for row in rows:
        user, t = int(row["user_id"]), int(row["timestamp"])
        for b in BEHAVIOURS:
            history = _tokens(row[f"hist_{b}_item"])
            assert all(by_item[i][4] < t and by_item[i][0] == user and by_item[i][3] == b for i in history)
            expected = [e[1] for e in events if e[0] == user and e[3] == b and e[4] < t][-6:]
            assert history == expected
            assert _tokens(row[f"hist_{b}_cat"]) == [by_item[i][2] for i in history]


def test_labels_follow_the_view_on_the_same_item_within_the_window(tmp_path: Path) -> None:
    day = 86_400
    events = [
        (1, 7, 1, "cart", 50),           # a cart before the view is no label of it
        (1, 7, 1, "pv", 100),            # cart 1 (t 200), buy 0 (more than a day later), fav 0
        (1, 8, 2, "pv", 100),            # fav at the same second, after it in the log: fav 1
        (1, 8, 2, "fav", 100),
        (1, 7, 1, "cart", 200),
        (1, 7, 1, "pv", 100 + day),      # buy 1 (a second later), cart 0 (the cart came before)
        (1, 7, 1, "buy", 100 + day + 1),
        (2, 7, 1, "pv", 100),            # another user's view of item 7: no label from user 1
        (2, 9, 3, "pv", 120),
    ]
    rows = [r for r in _rows(_write(tmp_path / "log.csv", events), negatives=0)]
    got = [(r["user_id"], r["item_id"], r["timestamp"], r["cart"], r["fav"], r["buy"]) for r in rows]
    assert got == [("1", "7", "100", "1", "0", "0"), ("1", "8", "100", "0", "1", "0"),
                   ("1", "7", str(100 + day), "0", "0", "1"), ("2", "7", "100", "0", "0", "0"),
                   ("2", "9", "120", "0", "0", "0")]
    assert all(r["click"] == "1" for r in rows)
    no_window = _rows(tmp_path / "log.csv", negatives=0, window=None)
    assert no_window[0]["buy"] == "1"


def test_negatives_are_unviewed_items_at_the_clicked_rows_time(tmp_path: Path) -> None:
    """A negative is an item the user never viewed, on view by others in the row's period (a day), at
    the clicked row's time, with its histories."""
    events = _log()
    rows = _rows(_write(tmp_path / "log.csv", events), negatives=3, period=86_400)
    viewed = {(e[0], e[1]) for e in events if e[3] == "pv"}
    on_view = {(e[1], e[4] // 86_400) for e in events if e[3] == "pv"}
    clicked = [r for r in rows if r["click"] == "1"]
    assert len(clicked) == sum(e[3] == "pv" for e in events)
    last: dict[str, str] = {}
    negatives = 0
    for row in rows:
        if row["click"] == "1":
            last = row
            continue
        negatives += 1
        assert (int(row["user_id"]), int(row["item_id"])) not in viewed
        assert (int(row["item_id"]), int(row["timestamp"]) // 86_400) in on_view
        assert row["cart"] == row["fav"] == row["buy"] == "0"
        same = ("user_id", "timestamp", *(f"hist_{b}_{a}" for b in BEHAVIOURS for a in ("item", "cat")))
        assert all(row[k] == last[k] for k in same)
        assert int(row["category_id"]) == int(row["item_id"]) % 5  # the drawn item's own category
    assert 2.5 * len(clicked) <= negatives <= 3 * len(clicked)


def test_rows_are_deterministic_for_a_seed_and_chunk_size(tmp_path: Path) -> None:
    path = _write(tmp_path / "log.csv", _log())
    first = _rows(path, chunk_rows=1000, seed=3)
    assert _rows(path, chunk_rows=37, seed=3) == first
    other = _rows(path, seed=4)
    assert [r for r in other if r["click"] == "1"] == [r for r in first if r["click"] == "1"]
    assert [r["item_id"] for r in other] != [r["item_id"] for r in first]


def _blocks(pulled: list[int], n_blocks: int, size: int = 200) -> Iterator[Events]:
    """An endless-looking stream of event blocks (users of 50 events), counting the blocks pulled."""
    for b in range(n_blocks):
        pulled.append(b)
        i = b * size + np.arange(size)
        behaviour = (i % 4 == 3).astype(np.int8)  # every 4th event a cart
        yield Events(user=i // 50, item=i % 97, category=i % 7, behaviour=behaviour, timestamp=1000 + i,
                     line=i + 1)


def test_the_reader_streams_block_by_block() -> None:
    """Rows of the users a block completes come out before the next block is read: memory holds a
    block and the last user's events, whatever the log's length."""
    pulled: list[int] = []
    rows = training_rows(_blocks(pulled, 10_000), UserBehaviorOptions(pool=1000))
    for k in range(5):
        table = next(rows)
        assert len(pulled) == k + 1
        # block k holds users 4k .. 4k+3; the last may go on in block k + 1, so it comes out with it
        assert set(table["user_id"].to_pylist()) == {str(u) for u in range(max(4 * k - 1, 0), 4 * k + 3)}
        assert table["click"].to_pylist().count("1") == sum(1 for u in range(max(4 * k - 1, 0), 4 * k + 3)
                                                             for i in range(50 * u, 50 * u + 50) if i % 4 != 3)
    assert len(pulled) == 5


def test_a_log_not_grouped_by_user_is_refused(tmp_path: Path) -> None:
    events = _log(n_users=3, per_user=5)
    events.append((*events[0][:4], events[-1][4] + 1))  # user 100 again after users 101, 102
    path = _write(tmp_path / "log.csv", events)
    with pytest.raises(UserBehaviorError, match=r"log.csv, line 16: the events of user 100 resume here"):
        _rows(path)


@pytest.mark.parametrize(("line", "message"), [
    ("1,2,3,click,100", "line 2: behavior_type must be one of ['pv', 'cart', 'fav', 'buy'], found 'click'"),
    ("1,x2,3,pv,100", "line 2: item_id must be an integer, found 'x2'"),
    ("1,2,3,pv", "line 2: expected 5 columns"),
])
def test_bad_log_lines_are_named(tmp_path: Path, line: str, message: str, capsys: pytest.CaptureFixture[str]
                                 ) -> None:
    path = tmp_path / "log.csv"
    path.write_text(f"1,2,3,pv,90\n{line}\n")
    config = yaml.safe_load((CONFIGS / "taobao_userbehavior.yaml").read_text())
    config["source"]["path"] = str(path)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(SystemExit) as exited:
        main(["prepare", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert exited.value.code == 2
    assert err.startswith(f"error: {path}, {message}") and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(("options", "message"), [
    ({"negatives": -1}, "u.yaml: source.options.negatives: must be >= 0, got -1"),
    ({"windw": 10}, "u.yaml: source.options.windw: unknown key (did you mean 'window'?)"),
])
def test_reader_options_are_checked(options: dict[str, Any], message: str) -> None:
    config = yaml.safe_load((CONFIGS / "taobao_userbehavior.yaml").read_text())
    config["source"]["options"] = options
    with pytest.raises(DatasetConfigError) as err:
        parse_dataset_config(config, "u.yaml")
    assert str(err.value).startswith(message)


def _real_slice(tmp_path: Path, lines: int = 4000) -> Path:
    shared = require_shared_data()
    with open(shared / LOG) as fh:
        head = [next(fh) for _ in range(lines)]
    cut = max(i for i in range(1, lines) if head[i].split(",")[0] != head[i - 1].split(",")[0])
    path = tmp_path / "log.csv"
    path.write_text("".join(head[:cut]))  # whole users only
    return path


def test_real_log_slice_has_no_leak_and_prepares_and_trains(tmp_path: Path) -> None:
    path = _real_slice(tmp_path)
    by_user: dict[int, list[tuple[int, int, int, str, int]]] = {}
    for u, i, c, b, t in (line.split(",") for line in path.read_text().splitlines()):
        by_user.setdefault(int(u), []).append((int(u), int(i), int(c), b, int(t)))
    for row in _rows(path, max_history=50)[::3]:
        user, t = int(row["user_id"]), int(row["timestamp"])
        for b in BEHAVIOURS:
            earlier = [e for e in sorted(by_user[user], key=lambda e: e[4]) if e[3] == b and e[4] < t][-50:]
            assert _tokens(row[f"hist_{b}_item"]) == [e[1] for e in earlier]
            assert _tokens(row[f"hist_{b}_cat"]) == [e[2] for e in earlier]
    config = load_dataset_config(CONFIGS / "taobao_userbehavior.yaml")
    data = prepare_dataset(config, tmp_path / "data", raw=path, progress=False, log=lambda _: None)
    assert data.schema.task_names == ["click", "cart", "buy"]
    assert [s.behaviour for s in data.schema.sequences] == [b for b in BEHAVIOURS for _ in (0, 1)]
    assert all(data.split_size(s) > 0 for s in ("train", "valid", "test"))
    run = RunConfig(model="mmoe", data=str(tmp_path / "data"),
                    model_options={"embedding_dim": 4, "num_experts": 2, "expert_sizes": [16], "tower_sizes": [8]},
                    train=TrainConfig(epochs=1, batch_size=256, num_threads=1, prefetch=0))
    metrics = train_run(run, tmp_path / "run", log=lambda _: None)
    assert set(metrics["test"]) == {"click", "cart", "buy"}


def test_census_standard_config_on_slices_of_the_real_files(tmp_path: Path) -> None:
    """Train file whole, test file halved by default_rng(2026).permutation(n); features and tasks those of
    census_income.yaml."""
    shared = require_shared_data() / "census-income-kdd"
    (tmp_path / "raw").mkdir()
    lines = []
    for name, n in (("census-income.data.gz", 300), ("census-income.test.gz", 401)):
        with gzip.open(shared / name, "rt") as fh:
            head = [next(fh) for _ in range(n)]
        with gzip.open(tmp_path / "raw" / name, "wt") as out:
            out.write("".join(head))
        lines += head
    standard = load_dataset_config(CONFIGS / "census_income_standard.yaml")
    base = load_dataset_config(CONFIGS / "census_income.yaml")
    assert (standard.sparse, standard.dense, standard.tasks, standard.ignore) == \
        (base.sparse, base.dense, base.tasks, base.ignore)
    assert standard.source.columns == base.source.columns
    data = prepare_dataset(standard, tmp_path / "data", raw=tmp_path / "raw", progress=False, log=lambda _: None)
    perm = np.random.default_rng(2026).permutation(401)
    np.testing.assert_array_equal(data.splits["train"], np.arange(300))
    np.testing.assert_array_equal(data.splits["valid"], 300 + np.sort(perm[:200]))
    np.testing.assert_array_equal(data.splits["test"], 300 + np.sort(perm[200:]))
    income = [line.rstrip().split(", ")[-1] == "50000+." for line in lines]
    np.testing.assert_array_equal(data.labels[:, 0], income)
