"""ONNX export of any registered model, with a parity check of ONNX Runtime against eager PyTorch.

The exported graph is :class:`~mtrec.export.scoring.ScoringModule`: inputs ``sparse`` int64
``[B, F_sparse]``, ``dense`` float32 ``[B, F_dense]`` and ``seq__<name>`` int64 ``[B, L]`` per sequence
feature; outputs named after the tasks, each task's probability ``[B]``; the batch axis is dynamic.

Two PyTorch exporters can produce the graph: ``torchscript`` (tracing; exports a model in well under a
second) and ``dynamo`` (``torch.export`` + onnxscript; several seconds, but it follows Python-level shape
arithmetic symbolically, such as ``F.layer_norm(x, x.shape[-1:])``, which tracing cannot export).
``auto`` (the default) tries ``torchscript`` and falls back to ``dynamo`` when tracing fails or its graph
fails the parity check. Whichever is used, the graph is returned (or written) only after it matches eager
PyTorch within the tolerance on real rows (the run's own data when it can be loaded, else generated valid
ids) and on edge rows (empty and full histories, padding and out-of-vocabulary ids) at several batch
sizes, one of them 1: a shape frozen by tracing or an op the runtime computes differently fails the
export instead of reaching production.
"""

from __future__ import annotations

import io
import json
import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from mtrec.data.batches import gather_batch
from mtrec.data.dataset import DatasetError
from mtrec.data.source import load_data
from mtrec.errors import CheckFailed
from mtrec.export.model_file import (
    INPUT_KINDS,
    InputKind,
    input_names,
    load_encoders,
    metadata,
    onnx_session,
    output_names,
)
from mtrec.export.quantize import Quantization, QuantizedParity, quantize_int8, quantized_parity
from mtrec.export.scoring import ScoringModule, feature_inputs
from mtrec.export.standalone import RAW_OPSET, StandaloneError, raw_input_parity, standalone_model, with_metadata
from mtrec.features.encoders import FeatureEncoders
from mtrec.features.inputs import Features, features_of
from mtrec.features.schema import OOV_ID, PADDING_ID, DatasetSchema, SchemaError
from mtrec.io import atomic_write_bytes
from mtrec.objectives.scorer import Scorer
from mtrec.training.checkpoint import load_model
from mtrec.training.config import RunConfig

Exporter = Literal["auto", "torchscript", "dynamo"]
EXPORTERS: tuple[Exporter, ...] = ("auto", "torchscript", "dynamo")
DEFAULT_TOLERANCE = 1e-4
DEFAULT_AUC_TOLERANCE = 0.005  # largest |test AUC difference| of a quantized model, per task
QUANTIZED_PARITY_ROWS = 100_000  # test rows scored by both models for the quantized AUC parity
OPSET = 18
_EXAMPLE_ROWS = 8  # > 1, so that no exporter specialises the batch axis to a constant 1


class ExportError(CheckFailed, RuntimeError):
    """The model could not be converted to ONNX."""


class ParityError(CheckFailed, RuntimeError):
    """The exported graph does not reproduce eager PyTorch within the tolerance."""


# ---- inputs ------------------------------------------------------------------------------------
def random_features(schema: DatasetSchema, rows: int, seed: int = 0) -> Features:
    """``rows`` rows of valid inputs for ``schema``, covering the edge cases a service meets.

    Ids are drawn from each feature's whole range (padding and OOV included); row 0 has every history
    empty and row 1 (if any) every history full; other histories have random lengths. Dense values are
    standard normal.
    """
    rng = np.random.default_rng(seed)
    columns = [rng.integers(0, f.vocab_size, rows) for f in schema.sparse]
    sparse = np.stack(columns, axis=1) if columns else np.zeros((rows, 0), dtype=np.int64)  # [N, F_sparse]
    if rows and columns:
        sparse[0] = OOV_ID
    dense = rng.normal(size=(rows, len(schema.dense))).astype(np.float32)
    sequences = {}
    for s in schema.sequences:
        ids = rng.integers(min(2, s.vocab_size - 1), s.vocab_size, (rows, s.max_len))  # [N, L]; OOV if no value
        lengths = rng.integers(0, s.max_len + 1, rows)
        lengths[: min(rows, 2)] = [0, s.max_len][: min(rows, 2)]
        ids[np.arange(s.max_len)[None, :] >= lengths[:, None]] = PADDING_ID
        sequences[s.name] = torch.from_numpy(ids.astype(np.int64))
    return features_of(schema, torch.from_numpy(sparse.astype(np.int64)), torch.from_numpy(dense), sequences)


def run_test_rows(schema: DatasetSchema, config: RunConfig, rows: int) -> tuple[Any, np.ndarray, str]:
    """The run's data and up to ``rows`` rows of its test split (its valid split if it has no test rows),
    described; ``(None, [], reason)`` when the data can't be loaded or no longer matches the run."""
    try:
        dataset = load_data(config.data)
    except (DatasetError, SchemaError, OSError, ValueError, KeyError, ImportError) as exc:
        return None, np.zeros(0, dtype=np.int64), f"the run's data {config.data!r} is not available ({exc})"
    if dataset.schema != schema:
        return None, np.zeros(0, dtype=np.int64), f"the run's data {config.data!r} no longer matches the run's schema"
    split = "test" if dataset.split_size("test") else "valid"
    index = np.asarray(dataset.splits[split][:rows])
    return dataset, index, f"{len(index)} rows of the {split} split of {config.data}"


def _run_data_batches(
    schema: DatasetSchema, config: RunConfig, rows: int, batch_size: int
) -> tuple[list[Features], str]:
    """Batches of the run's own test rows, or ``([], reason)`` when its data can't be loaded."""
    dataset, index, source = run_test_rows(schema, config, rows)
    if dataset is None:
        return [], source
    return [gather_batch(dataset, index[i : i + batch_size]).features for i in range(0, len(index), batch_size)], source


def parity_batches(
    schema: DatasetSchema, config: RunConfig | None = None, rows: int = 2048, batch_size: int = 512
) -> tuple[list[Features], str]:
    """Batches for the parity check and a description of where they come from.

    Real rows (the run's test split) when the run's data can be loaded, else generated valid ids; in both
    cases also a batch of one row and a generated batch of edge cases, so several batch sizes are checked.
    """
    batches, source = _run_data_batches(schema, config, rows, batch_size) if config else ([], "no run config")
    if not batches:
        source = f"{rows} generated rows ({source})"
        batches = [random_features(schema, min(batch_size, rows - i), seed=1 + i) for i in range(0, rows, batch_size)]
    edge = random_features(schema, 37, seed=0)
    one = random_features(schema, 1, seed=0)
    return [*batches, edge, one], source + " + generated edge cases (batches of 37 and 1)"


# ---- export ------------------------------------------------------------------------------------
def export_onnx(model: Scorer, exporter: Literal["torchscript", "dynamo"] = "torchscript",
                opset: int = OPSET) -> bytes:
    """Convert ``model`` (via :class:`ScoringModule`) to a serialized ONNX model with a dynamic batch axis,
    without checking it (see :func:`export_checked`)."""
    if exporter not in ("torchscript", "dynamo"):
        raise ExportError(f"unknown exporter {exporter!r}; choose one of {list(EXPORTERS)}")
    schema = model.schema
    module = ScoringModule(model).eval()
    example = feature_inputs(random_features(schema, _EXAMPLE_ROWS, seed=0), schema)
    names, outputs = input_names(schema), output_names(schema)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # tracer and deprecation chatter; parity is what we trust
            if exporter == "torchscript":
                buffer = io.BytesIO()
                torch.onnx.export(
                    module, example, buffer,  # type: ignore[arg-type]  # the TorchScript exporter takes file objects
                    dynamo=False, input_names=names, output_names=outputs,
                    dynamic_axes={n: {0: "batch"} for n in [*names, *outputs]}, opset_version=opset,
                )
                return buffer.getvalue()
            # the exporter logs one warning per torchvision op it cannot find; mtrec uses none of them
            logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
            dims = {0: torch.export.Dim("batch")}
            # one entry per positional input; the *sequences tuple only when there are sequences
            shapes = (dims, dims, *((tuple(dims for _ in schema.sequences),) if schema.sequences else ()))
            program = torch.onnx.export(
                module, example, dynamo=True, input_names=names, output_names=outputs, opset_version=opset,
                dynamic_shapes=shapes, verbose=False, report=False,
            )
            assert program is not None
            return bytes(program.model_proto.SerializeToString())
    except Exception as exc:  # exporters raise many unrelated types; name the model and the cause
        raise ExportError(
            f"model {model.name!r} could not be exported to ONNX with the "
            f"{exporter} exporter: {type(exc).__name__}: {exc}"
        ) from exc


# ---- parity ------------------------------------------------------------------------------------
@dataclass
class ParityReport:
    """Largest absolute difference per task between ONNX Runtime and eager PyTorch."""

    per_task: dict[str, float]
    rows: int
    batch_sizes: list[int]
    source: str
    tolerance: float
    problems: list[str] = field(default_factory=list)

    @property
    def max_abs_diff(self) -> float:
        return max(self.per_task.values(), default=0.0)

    @property
    def ok(self) -> bool:
        return not self.problems and self.max_abs_diff <= self.tolerance


def check_parity(
    model: Scorer, onnx_model: bytes, batches: list[Features], source: str = "",
    tolerance: float = DEFAULT_TOLERANCE,
) -> ParityReport:
    """Score ``batches`` with eager PyTorch and with ONNX Runtime and compare the outputs: the difference
    of a probability, relative to the value for a value task's output above 1."""
    schema = model.schema
    session = onnx_session(onnx_model)
    graph_inputs = {i.name for i in session.get_inputs()}
    names = input_names(schema)
    module = ScoringModule(model).eval()
    per_task = dict.fromkeys(schema.task_names, 0.0)
    problems: list[str] = []
    for features in batches:
        inputs = feature_inputs(features, schema)
        with torch.no_grad():
            expected = [t.numpy() for t in module(*inputs)]
        # a tracing exporter drops inputs the graph does not read; feed only the declared ones
        feeds = {n: t.numpy() for n, t in zip(names, inputs, strict=True) if n in graph_inputs}
        try:
            got = session.run(schema.task_names, feeds)
        except Exception as exc:  # onnxruntime raises its own exception types
            problems.append(f"ONNX Runtime failed on a batch of {len(features)} rows: {exc}")
            continue
        for task, e, g in zip(schema.task_names, expected, got, strict=True):
            if g.shape != e.shape:
                problems.append(f"task {task!r}: shape {g.shape} from ONNX Runtime, {e.shape} from PyTorch")
                continue
            if not np.isfinite(e).all():
                problems.append(f"task {task!r}: eager PyTorch itself gives non-finite probabilities "
                                f"(batch of {len(features)} rows; a model bug, e.g. on empty histories)")
                continue
            # absolute below 1 (probabilities), relative above (values in their label's units)
            diff = np.abs(g.astype(np.float64) - e.astype(np.float64)) / np.maximum(1.0, np.abs(e))
            worst = float(diff.max()) if diff.size else 0.0
            per_task[task] = max(per_task[task], worst if np.isfinite(worst) else float("inf"))
    return ParityReport(per_task, sum(len(b) for b in batches), [len(b) for b in batches], source, tolerance,
                        problems)


# ---- export + parity -------------------------------------------------------------------------
@dataclass
class CheckedExport:
    """A serialized ONNX model that passed the parity check, and how it was made."""

    onnx_model: bytes
    exporter: Literal["torchscript", "dynamo"]
    parity: ParityReport
    notes: list[str]


def _failure(exporter: str, report: ParityReport) -> str:
    details = "; ".join(report.problems) or (
        f"max abs difference {report.max_abs_diff:.3g} > tolerance {report.tolerance:g} "
        f"(per task: {', '.join(f'{t} {d:.3g}' for t, d in report.per_task.items())})"
    )
    return f"the {exporter} graph failed the parity check: {details}"


def export_checked(
    model: Scorer, batches: list[Features], source: str = "", exporter: Exporter = "auto",
    tolerance: float = DEFAULT_TOLERANCE,
) -> CheckedExport:
    """Export ``model`` and check it on ``batches``; raise ExportError/ParityError if no exporter tried
    gives a graph within ``tolerance`` of eager PyTorch (``auto``: torchscript, then dynamo)."""
    if exporter not in EXPORTERS:
        raise ExportError(f"unknown exporter {exporter!r}; choose one of {list(EXPORTERS)}")
    order: list[Literal["torchscript", "dynamo"]] = ["torchscript", "dynamo"] if exporter == "auto" else [exporter]
    notes: list[str] = []
    parity_failed = False
    for name in order:
        try:
            onnx_model = export_onnx(model, name)
        except ExportError as exc:
            notes.append(str(exc))
            continue
        report = check_parity(model, onnx_model, batches, source, tolerance)
        if report.ok:
            return CheckedExport(onnx_model, name, report, notes)
        parity_failed = True
        notes.append(_failure(name, report))
    model_name = model.name
    error = ParityError if parity_failed else ExportError
    raise error(f"ONNX export of {model_name} failed: " + " | ".join(notes))


# ---- run directory -> file ---------------------------------------------------------------------
@dataclass
class ExportResult:
    path: Path
    exporter: str
    parity: ParityReport
    size_bytes: int
    inputs: str = "ids"
    raw_parity: float | None = None  # max |raw-input model - id-input model| on the parity rows
    quantized: QuantizedParity | None = None


def export_run(
    run_dir: str | Path,
    out: str | Path,
    exporter: Exporter = "auto",
    tolerance: float = DEFAULT_TOLERANCE,
    rows: int = 2048,
    log: Callable[[str], None] = print,
    inputs: InputKind = "raw",
    quantize: Quantization | None = None,
    auc_tolerance: float = DEFAULT_AUC_TOLERANCE,
) -> ExportResult:
    """Export the model of ``run_dir`` to ``out`` (.onnx) after checking parity: a model that takes raw values
    (``inputs="raw"``, :mod:`mtrec.export.standalone`) or the scoring graph's ids (``"ids"``), in float32 or
    quantized (``quantize="int8"``, :mod:`mtrec.export.quantize`). Raises ParityError (and writes nothing)
    when ONNX Runtime and eager PyTorch differ by more than ``tolerance``, or a quantized model's test AUC
    differs from the float32 model's by more than ``auc_tolerance`` for some task."""
    if inputs not in INPUT_KINDS:
        raise ExportError(f"unknown input kind {inputs!r}; choose one of {list(INPUT_KINDS)}")
    model, config = load_model(run_dir)
    encoders = load_encoders(Path(run_dir), model.schema, required=inputs == "raw")
    opset = RAW_OPSET if inputs == "raw" else OPSET
    log(f"exporting {config.model} from {run_dir} ({inputs} inputs, exporter: {exporter}, opset {opset})")
    batches, source = parity_batches(model.schema, config, rows)
    try:
        checked = export_checked(model, batches, source, exporter, tolerance)
    except (ExportError, ParityError) as exc:
        raise type(exc)(f"{exc}; nothing was written to {out}") from exc
    for note in checked.notes:
        log(f"note: {note}")
    report = checked.parity
    log(f"parity ({checked.exporter} graph) on {report.rows} rows: {report.source}")
    for task, diff in report.per_task.items():
        log(f"  {task}: max abs difference {diff:.3g}")
    log(f"max abs difference {report.max_abs_diff:.3g} (tolerance {tolerance:g})")
    raw_parity = None
    if inputs == "raw":
        assert encoders is not None
        try:
            onnx_model = standalone_model(checked.onnx_model, model.schema, encoders, config.model)
        except StandaloneError as exc:
            raise ExportError(f"{run_dir}: {exc}; nothing was written to {out}") from None
        raw_parity = raw_input_parity(checked.onnx_model, onnx_model, batches, model.schema, encoders)
        log(f"raw-input graph against the id graph on the same rows: max abs difference {raw_parity:.3g}")
        if not raw_parity <= tolerance:
            raise ParityError(f"the raw-input graph differs from the id graph by {raw_parity:.3g} > tolerance "
                              f"{tolerance:g}; nothing was written to {out}")
    else:
        onnx_model = with_metadata(checked.onnx_model, metadata(model.schema, encoders, config.model, "ids"))
    quantized = None
    if quantize is not None:
        onnx_model, quantized = _quantized(onnx_model, model.schema, config, encoders, inputs == "raw",
                                           auc_tolerance, log, out)
    atomic_write_bytes(Path(out), onnx_model)
    return ExportResult(Path(out), checked.exporter, report, len(onnx_model), inputs, raw_parity, quantized)


def _quantized(onnx_model: bytes, schema: DatasetSchema, config: RunConfig, encoders: FeatureEncoders | None,
               raw: bool, auc_tolerance: float, log: Callable[[str], None], out: str | Path
               ) -> tuple[bytes, QuantizedParity]:
    """The int8 model of ``onnx_model`` and its parity on the run's test split (ParityError beyond
    ``auc_tolerance``; ExportError without the run's labelled data)."""
    dataset, index, source = run_test_rows(schema, config, QUANTIZED_PARITY_ROWS)
    if dataset is None or not len(index):
        raise ExportError(f"--quantize int8 states its parity as test AUC, but {source}; nothing was written "
                          f"to {out}")
    quantized = quantize_int8(onnx_model)
    parity = quantized_parity(onnx_model, quantized, dataset, index, schema, encoders, raw, source)
    log(f"int8 against float32 on {parity.source}:")
    for task, m in parity.per_task.items():
        aucs = (f"AUC {m['auc_fp32']:.5f} -> {m['auc_quantized']:.5f} ({m['auc_diff']:+.5f}), "
                if "auc_diff" in m else "")
        log(f"  {task}: {aucs}max abs difference {m['max_abs_diff']:.3g}")
    if parity.worst_auc_diff > auc_tolerance:
        raise ParityError(f"the int8 model's test AUC differs from the float32 model's by "
                          f"{parity.worst_auc_diff:.5f} > --auc-tolerance {auc_tolerance:g}; nothing was written "
                          f"to {out}")
    summary = {task: {k: round(v, 6) for k, v in m.items()} for task, m in parity.per_task.items()}
    return with_metadata(quantized, {"mtrec_quantized": "int8", "mtrec_quantized_parity": json.dumps(
        {"rows": parity.rows, "source": parity.source, "tasks": summary})}), parity
