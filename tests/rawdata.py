"""A small raw CSV (one column per feature, raw text values) and a prepared dataset + run made from it,
for the serving tests: predict and serve read raw values through the run's encoders.json."""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import numpy as np

from mtrec.data.dataset import PreparedDataset
from mtrec.features.encoders import ENCODERS_FILE, DenseTransform, FeatureEncoders, SequenceFormat
from mtrec.features.schema import DatasetSchema, DenseFeature, SequenceFeature, SparseFeature, TaskSpec
from mtrec.features.vocab import Vocabulary

USER_FEATURES = ("user_id", "activity", "hist_click", "hist_buy")
ITEM_FEATURES = ("item_id", "category", "price")
FEATURES = (*USER_FEATURES, *ITEM_FEATURES)
SEQ_LEN = 5


def raw_rows(rows: int, seed: int = 0) -> list[dict[str, str]]:
    """Raw rows as text, as a log export would have them; labels depend on price, activity and history."""
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


def write_csv(path: Path, rows: list[dict[str, str]], columns: tuple[str, ...] | None = None) -> Path:
    columns = columns or tuple(rows[0])
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path


def prepare_raw(rows: list[dict[str, str]], out: Path) -> Path:
    """Fit encoders on the first 60% of ``rows`` and write a prepared dataset with encoders.json."""
    n = len(rows)
    train = rows[: int(0.6 * n)]
    items = Counter(r["item_id"] for r in train) + Counter(
        t for r in train for name in ("hist_click", "hist_buy") for t in r[name].split("|") if t)
    prices = np.array([float(r["price"]) for r in train])
    activity = np.array([float(r["activity"]) for r in train])
    encoders = FeatureEncoders(
        vocabularies={"user_id": Vocabulary.from_values(r["user_id"] for r in train),
                      "item_id": Vocabulary.fit(items),
                      "category": Vocabulary.from_values(r["category"] for r in train)},
        dense={"price": DenseTransform(log1p=True, mean=float(np.log1p(prices).mean()),
                                       std=float(np.log1p(prices).std())),
               "activity": DenseTransform(mean=float(activity.mean()), std=float(activity.std()))},
        sequences={"hist_click": SequenceFormat(separator="|"), "hist_buy": SequenceFormat(separator="|")},
    )
    v = encoders.vocabularies
    schema = DatasetSchema(
        sparse=(SparseFeature("user_id", v["user_id"].size), SparseFeature("item_id", v["item_id"].size),
                SparseFeature("category", v["category"].size)),
        dense=(DenseFeature("price"), DenseFeature("activity")),
        sequences=(SequenceFeature("hist_click", v["item_id"].size, SEQ_LEN, "click", "item_id", "item_id"),
                   SequenceFeature("hist_buy", v["item_id"].size, SEQ_LEN, "buy", "item_id", "item_id")),
        tasks=(TaskSpec("click"), TaskSpec("conversion", observed_after="click")),
        user_id="user_id",
    )
    sparse, dense, sequences = encoders.encode({f: [r[f] for r in rows] for f in FEATURES}, schema)
    labels = np.array([[float(r["click"]), float(r["conversion"])] for r in rows], dtype=np.float32)
    a, b = int(0.6 * n), int(0.8 * n)
    PreparedDataset(schema, sparse, dense, sequences, labels,
                    {"train": np.arange(a), "valid": np.arange(a, b), "test": np.arange(b, n)}).save(out)
    encoders.save(out / ENCODERS_FILE)
    return out
