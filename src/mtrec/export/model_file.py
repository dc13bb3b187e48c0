"""Exported model files without PyTorch: the scoring graph's input names, its metadata, and reading a file.

This module imports numpy, pyarrow and (when a session is opened) ONNX Runtime, never torch or the ``onnx``
package, so ``mtrec predict`` and ``mtrec serve`` load an exported or cached model quickly.

The id-input graph (:mod:`mtrec.export.scoring`) takes

    sparse           int64   [B, F_sparse]  ids, fields in schema order
    dense            float32 [B, F_dense]   transformed values, fields in schema order
    seq__<name>      int64   [B, L]         one per sequence feature, in schema order, 0 = padding

and the raw-input graph (:mod:`mtrec.export.standalone`) one input per feature, named after it
(:func:`raw_feeds`). Every file mtrec writes carries :func:`metadata` in its ``metadata_props``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa

from mtrec import __version__
from mtrec.errors import UserError
from mtrec.features.encoders import (
    ENCODERS_FILE,
    FeatureEncoders,
    RawColumn,
    canonical_strings,
    parse_numbers,
    to_arrow,
)
from mtrec.features.schema import DatasetSchema, SchemaError

SPARSE_INPUT = "sparse"
DENSE_INPUT = "dense"
SEQUENCE_PREFIX = "seq__"
InputKind = Literal["raw", "ids"]
INPUT_KINDS: tuple[InputKind, ...] = ("raw", "ids")
RUN_FILES = ("model.safetensors", "config.json", "schema.json")  # what decides a run's scoring graph
FINISHED_FILE = "metrics.json"  # written when a training run ends


class ModelFileError(UserError, ValueError):
    """A model file or run directory that cannot be scored from: the message names the file."""


def input_names(schema: DatasetSchema) -> list[str]:
    """The id-input graph's input names, in positional order."""
    return [SPARSE_INPUT, DENSE_INPUT, *(SEQUENCE_PREFIX + s.name for s in schema.sequences)]


def output_names(schema: DatasetSchema) -> list[str]:
    """The scoring graph's output names: the task names, in task order."""
    clash = sorted(set(schema.task_names) & set(input_names(schema)))
    if clash:
        raise ValueError(f"task name(s) {clash} collide with input names; rename the task(s)")
    return schema.task_names


def array_feeds(
    sparse: np.ndarray, dense: np.ndarray, sequences: dict[str, np.ndarray], schema: DatasetSchema
) -> dict[str, np.ndarray]:
    """Encoded arrays as the id-input graph's named inputs with its dtypes (ids int64, values float32)."""
    feeds: dict[str, np.ndarray] = {
        SPARSE_INPUT: np.ascontiguousarray(sparse, dtype=np.int64),
        DENSE_INPUT: np.ascontiguousarray(dense, dtype=np.float32),
    }
    for s in schema.sequences:
        feeds[SEQUENCE_PREFIX + s.name] = np.ascontiguousarray(sequences[s.name], dtype=np.int64)
    return feeds


def raw_feeds(columns: Mapping[str, RawColumn], schema: DatasetSchema,
              encoders: FeatureEncoders) -> dict[str, np.ndarray]:
    """Raw columns (as :meth:`FeatureEncoders.encode` takes them) -> the raw-input graph's inputs: sparse
    values as text (``""`` for missing), dense values as float64 (NaN for missing; EncodingError naming a
    value that is not a number), histories as text joined by their separator, or ``[B, W]`` tokens
    without one."""
    absent = [name for name in schema.feature_names if name not in columns]
    if absent:
        raise ValueError(f"missing input column(s) {absent}; the schema needs {schema.feature_names}")
    feeds: dict[str, np.ndarray] = {}
    for f in schema.sparse:
        feeds[f.name] = np.array(canonical_strings(columns[f.name]).fill_null("").to_pylist(), dtype=object)
    for d in schema.dense:
        feeds[d.name] = parse_numbers(columns[d.name], encoders.missing_values, d.name, encoders.strip)
    for s in schema.sequences:
        separator = encoders.sequences[s.name].separator
        values = columns[s.name] if isinstance(columns[s.name], np.ndarray) else to_arrow(columns[s.name])
        if isinstance(values, np.ndarray) and values.ndim == 2:  # [B, W] tokens
            rows = [["" if t is None else str(t) for t in row] for row in values.tolist()]
        elif isinstance(values, pa.Array) and (pa.types.is_string(values.type) or pa.types.is_null(values.type)):
            rows = [[t] for t in canonical_strings(values).fill_null("").to_pylist()]
        else:  # lists of tokens
            listed = values.to_pylist() if isinstance(values, pa.Array) else list(values)
            rows = [[_text(t) for t in (row or ())] for row in listed]
        if separator is None:
            width = max((len(r) for r in rows), default=0) or 1
            feeds[s.name] = np.array([r + [""] * (width - len(r)) for r in rows], dtype=object).reshape(-1, width)
        else:
            feeds[s.name] = np.array([separator.join(r) for r in rows], dtype=object)
    return feeds


def _text(token: Any) -> str:
    text = canonical_strings([token])[0].as_py()
    return "" if text is None else str(text)


# ---- metadata ---------------------------------------------------------------------------------------------
def metadata(schema: DatasetSchema, encoders: FeatureEncoders | None, model_name: str, inputs: InputKind,
             **extra: str) -> dict[str, str]:
    """The ``metadata_props`` of a model file: ``mtrec_schema``, ``mtrec_encoders`` (when known),
    ``mtrec_version``, ``mtrec_tasks`` (JSON list), ``mtrec_model``, ``mtrec_inputs``, then ``extra``."""
    props = {"mtrec_schema": json.dumps(schema.to_dict()), "mtrec_version": __version__,
             "mtrec_tasks": json.dumps(schema.task_names), "mtrec_model": model_name, "mtrec_inputs": inputs}
    if encoders is not None:
        props["mtrec_encoders"] = json.dumps(encoders.to_dict(), ensure_ascii=False)
    return {**props, **extra}


@dataclass
class ModelFile:
    """A model file mtrec wrote, opened in ONNX Runtime, with what its metadata says."""

    session: Any  # onnxruntime.InferenceSession
    schema: DatasetSchema
    encoders: FeatureEncoders | None
    model_name: str
    inputs: InputKind
    props: dict[str, str]


def providers_for(device: str) -> list[Any]:
    """ONNX Runtime execution providers for ``--device``: ``cpu``, ``cuda``, ``cuda:N`` or ``auto`` (CUDA when
    this onnxruntime has it, else CPU); ModelFileError naming what to install or use instead."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    kind, _, index = device.partition(":")
    if device == "auto":
        kind = "cuda" if "CUDAExecutionProvider" in available else "cpu"
    if kind == "cpu" and not index:
        return ["CPUExecutionProvider"]
    if kind != "cuda" or (index and not index.isdigit()):
        raise ModelFileError(f"--device {device!r}: expected cpu, cuda, cuda:N or auto")
    if "CUDAExecutionProvider" not in available:
        raise ModelFileError(f"--device {device}: this onnxruntime runs on {', '.join(available)} only; install "
                             f"onnxruntime-gpu for CUDA, or use --device cpu")
    return [("CUDAExecutionProvider", {"device_id": int(index or 0)}), "CPUExecutionProvider"]


def onnx_session(onnx_model: bytes | str, threads: int = 1, providers: list[Any] | None = None) -> Any:
    """An ONNX Runtime session (CPU unless ``providers`` says otherwise) for a serialized model or a path."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(onnx_model, options, providers=providers or ["CPUExecutionProvider"])


def open_model_file(source: Path | bytes, threads: int = 1, providers: list[Any] | None = None,
                    name: str = "") -> ModelFile:
    """Open an exported (or cached) model file, or its bytes (``name`` for messages); ModelFileError if it
    is not one mtrec wrote, or is damaged."""
    path = name or str(source)
    try:
        session = onnx_session(source if isinstance(source, bytes) else str(source), threads, providers)
    except Exception as exc:  # onnxruntime raises its own exception types
        raise ModelFileError(f"{path}: not a loadable ONNX model ({type(exc).__name__}: "
                             f"{' '.join(str(exc).split())[:300]})") from None
    props = dict(session.get_modelmeta().custom_metadata_map)
    if "mtrec_schema" not in props:
        raise ModelFileError(f"{path}: not a model exported by mtrec (no mtrec_schema in its metadata)")
    try:
        schema = DatasetSchema.from_dict(json.loads(props["mtrec_schema"]))
        encoders = FeatureEncoders.from_dict(json.loads(props["mtrec_encoders"])) if "mtrec_encoders" in props \
            else None
        if encoders is not None:
            encoders.check(schema)
    except (ValueError, SchemaError) as exc:  # JSONDecodeError is a ValueError
        raise ModelFileError(f"{path}: its metadata does not describe a usable model ({exc})") from None
    inputs = props.get("mtrec_inputs")
    if inputs not in INPUT_KINDS:
        raise ModelFileError(f"{path}: mtrec_inputs {inputs!r} in its metadata is not one of {list(INPUT_KINDS)}")
    expected = input_names(schema) if inputs == "ids" else schema.feature_names
    unknown = sorted({i.name for i in session.get_inputs()} - set(expected))
    absent = sorted(set(schema.task_names) - {o.name for o in session.get_outputs()})
    if unknown or absent:
        raise ModelFileError(f"{path}: its graph does not match the schema in its metadata (inputs the schema "
                             f"does not name: {unknown}; tasks without an output: {absent})")
    return ModelFile(session, schema, encoders, props.get("mtrec_model", "model"), inputs, props)


# ---- a run directory ---------------------------------------------------------------------------------------
def load_encoders(run_dir: Path, schema: DatasetSchema, required: bool = True) -> FeatureEncoders | None:
    """The run's ``encoders.json``, checked against its schema; ModelFileError if unusable, or if absent
    and ``required`` (None if absent and not required)."""
    path = run_dir / ENCODERS_FILE
    if not path.is_file():
        if not required:
            return None
        raise ModelFileError(
            f"{run_dir}: no {ENCODERS_FILE}; raw values can only be scored by a run trained on a dataset "
            f"prepared from raw files (`mtrec prepare`), which saves the vocabularies there (a model taking "
            f"ids is exported with --inputs ids)"
        )
    try:
        encoders = FeatureEncoders.load(path)
        encoders.check(schema)
    except ValueError as exc:
        raise ModelFileError(f"{path}: not usable with the run's schema ({exc})") from exc
    return encoders


def check_finished(path: Path) -> None:
    """ModelFileError if ``path`` is a run directory whose training did not finish (no ``metrics.json``):
    its weights are then whatever checkpoint was last written, not the model training selects."""
    if path.is_dir() and (path / RUN_FILES[0]).is_file() and not (path / FINISHED_FILE).is_file():
        raise ModelFileError(f"{path}: the training did not finish (no {FINISHED_FILE}): its weights are a "
                             f"checkpoint taken mid-training; finish it (mtrec train ... --resume), or pass "
                             f"--allow-unfinished to use them anyway")


def run_fingerprint(run_dir: Path) -> str:
    """SHA-256 over the files that decide a run's scoring graph (:data:`RUN_FILES`), for a cached export."""
    digest = hashlib.sha256()
    for name in RUN_FILES:
        digest.update(name.encode() + b"\0")
        with open(run_dir / name, "rb") as fh:
            while block := fh.read(1 << 22):
                digest.update(block)
    return digest.hexdigest()
