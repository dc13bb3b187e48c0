"""A small raw log and a dataset config for the serving tests: prepared with ``mtrec prepare``, so the run
trained on it carries encoders.json, and its raw layout differs from the feature names (no header, ';'
separated, short column names) so that reading a file in the dataset's own layout is exercised too."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv

from mtrec.data.prepare import prepare_dataset

USER_FEATURES = ("user_id", "activity", "hist_click", "hist_buy")
ITEM_FEATURES = ("item_id", "category", "price")
FEATURES = (*USER_FEATURES, *ITEM_FEATURES)
COLUMN_OF = {"user_id": "uid", "item_id": "iid", "category": "cat", "price": "p", "activity": "act",
             "hist_click": "clicks", "hist_buy": "buys", "click": "y_click", "conversion": "y_conv"}
RAW_COLUMNS = tuple(COLUMN_OF.values())  # the raw file's column order
SEQ_LEN = 5
CONFIG = """
name: shop
source: {path: PATH, header: false, separator: ";", columns: [COLUMNS], missing_values: ["?"]}
features:
  sparse: [{name: user_id, column: uid}, {name: item_id, column: iid}, {name: category, column: cat}]
  dense: [{name: price, column: p, log1p: true}, {name: activity, column: act}]
  sequences:
    - {name: hist_click, column: clicks, separator: "|", max_len: LEN, table: item_id, target: item_id}
    - {name: hist_buy, column: buys, separator: "|", max_len: LEN, table: item_id, target: item_id}
tasks:
  - {name: click, label: y_click}
  - {name: conversion, label: y_conv, observed_after: click}
user_id: user_id
split: {kind: random, seed: 0, fractions: [0.6, 0.2, 0.2]}
"""


def raw_rows(rows: int, seed: int = 0) -> list[dict[str, str]]:
    """Raw rows keyed by feature (and label) name, as text; labels depend on price, activity, history."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(rows):
        user, item = int(rng.integers(0, 30)), int(rng.integers(0, 40))
        hist = [f"i{int(i)}" for i in rng.integers(0, 40, int(rng.integers(0, SEQ_LEN + 3)))]
        buys = hist[: int(rng.integers(0, len(hist) + 1))]
        price, activity = float(np.round(rng.gamma(2.0, 10.0), 2)), int(rng.integers(0, 50))
        logit = 0.04 * activity - 0.03 * price + 0.5 * (f"i{item}" in hist)
        click = int(rng.random() < 1 / (1 + np.exp(-logit)))
        conversion = click * int(rng.random() < 0.4)
        out.append({"user_id": f"u{user}", "item_id": f"i{item}", "category": f"c{item % 8}", "price": str(price),
                    "activity": str(activity), "hist_click": "|".join(hist), "hist_buy": "|".join(buys),
                    "click": str(click), "conversion": str(conversion)})
    return out


def write_csv(path: Path, rows: list[dict[str, str]], columns: tuple[str, ...]) -> Path:
    """``columns`` of ``rows`` as a CSV with a header."""
    pa_csv.write_csv(pa.table({c: [r[c] for r in rows] for c in columns}), path)
    return path


def write_raw(path: Path, rows: list[dict[str, str]], labels: bool = True) -> Path:
    """Rows in the dataset's raw layout: no header, ';'-separated, short column names (see CONFIG)."""
    names = [f for f in COLUMN_OF if labels or f not in ("click", "conversion")]
    path.write_text("".join(";".join(r[f] for f in names) + "\n" for r in rows))
    return path


def dataset_config(path: Path, raw: Path, labels: bool = True) -> Path:
    columns = [COLUMN_OF[f] for f in COLUMN_OF if labels or f not in ("click", "conversion")]
    path.write_text(CONFIG.replace("PATH", str(raw)).replace("COLUMNS", ", ".join(columns))
                    .replace("LEN", str(SEQ_LEN)))
    return path


def prepare_raw(rows: list[dict[str, str]], root: Path) -> Path:
    """Write ``rows`` as a raw log and its dataset config under ``root``, prepare it, return the dataset."""
    raw = write_raw(root / "log.txt", rows)
    config = dataset_config(root / "shop.yaml", raw)
    prepare_dataset(config, root / "prepared", progress=False, log=lambda _: None)
    return root / "prepared"
