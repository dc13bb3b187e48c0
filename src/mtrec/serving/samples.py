"""Raw inputs for ``predict`` and ``serve`` taken from a dataset's own rows (what ``mtrec demo`` writes).

``sample.csv`` holds test rows as raw values, one column per feature (the layout ``mtrec predict`` reads
without a dataset config); ``request.json`` is a ``POST /v1/score`` body: the test impressions of the
user with the most of them (up to ``candidates``), with the features that are the same in all of them
under ``user`` and the others per candidate.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv

from mtrec.data.dataset import PreparedDataset
from mtrec.features.encoders import FeatureEncoders
from mtrec.io import atomic_write, atomic_write_text

SAMPLE_CSV = "sample.csv"
REQUEST_JSON = "request.json"


def raw_rows(dataset: PreparedDataset, encoders: FeatureEncoders, rows: np.ndarray) -> dict[str, list[Any]]:
    """Raw values of ``rows`` ``[R]``, keyed by feature name (:meth:`FeatureEncoders.decode`)."""
    return encoders.decode(np.asarray(dataset.sparse[rows]), np.asarray(dataset.dense[rows]),
                           {k: np.asarray(v[rows]) for k, v in dataset.sequences.items()}, dataset.schema)


def score_request(dataset: PreparedDataset, encoders: FeatureEncoders, candidates: int = 10) -> dict[str, Any]:
    """A scoring request of one user's test impressions (see the module docstring)."""
    test = np.asarray(dataset.splits["test"])
    schema = dataset.schema
    if schema.user_id is not None:
        users = np.asarray(dataset.sparse[test, [f.name for f in schema.sparse].index(schema.user_id)])
        values, counts = np.unique(users, return_counts=True)
        test = test[users == values[np.argmax(counts)]]
    columns = raw_rows(dataset, encoders, test[:candidates])
    shared = {name: values[0] for name, values in columns.items() if all(v == values[0] for v in values)}
    items = [{name: values[i] for name, values in columns.items() if name not in shared}
             for i in range(len(test[:candidates]))]
    return {"user": shared, "candidates": items}


def write_samples(dataset: PreparedDataset, out_dir: Path, rows: int = 1000) -> list[Path]:
    """Write ``sample.csv`` (the first ``rows`` test rows) and ``request.json`` into ``out_dir``; nothing (an
    empty list) if the dataset has no encoders."""
    encoders = dataset.load_encoders()
    if encoders is None:
        return []
    columns = raw_rows(dataset, encoders, np.asarray(dataset.splits["test"][:rows]))
    table = pa.table({name: pa.array(values) for name, values in columns.items()})
    atomic_write(out_dir / SAMPLE_CSV, lambda tmp: pa_csv.write_csv(table, str(tmp)))
    request = json.dumps(score_request(dataset, encoders), indent=1, ensure_ascii=False) + "\n"
    atomic_write_text(out_dir / REQUEST_JSON, request)
    return [out_dir / SAMPLE_CSV, out_dir / REQUEST_JSON]
