"""int8 scoring: ONNX Runtime's dynamic quantization of an exported model, with its parity stated as AUC.

:func:`quantize_int8` quantizes the weights of every ``MatMul``/``Gemm`` to int8 (ONNX Runtime's
``quantize_dynamic``; activations are quantized per call, so no calibration data is needed); embedding
lookups, the encoders of a raw-input model and everything else stay float32. :func:`quantized_parity`
scores the run's test split (up to ``rows`` rows) with the float32 and the int8 model and states the
difference as each binary task's AUC (over the rows where the task is observed) and the largest
|difference| of the predictions.

bf16 is not offered: ONNX Runtime's CPU provider has no bf16 ``MatMul`` kernel (a bf16 graph does not
load), and on CPUs without native float16 arithmetic its fp16 kernels convert to float32 and back.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from mtrec.export.model_file import array_feeds, onnx_session, raw_feeds
from mtrec.features.encoders import FeatureEncoders
from mtrec.features.schema import DatasetSchema
from mtrec.metrics.ranking import auc

Quantization = Literal["int8"]
QUANTIZATIONS: tuple[Quantization, ...] = ("int8",)
QUANTIZED_OPS = ["MatMul", "Gemm"]
_BATCH = 8192


def quantize_int8(onnx_model: bytes) -> bytes:
    """``onnx_model`` with int8 weights in its MatMul/Gemm nodes (dynamic quantization); metadata kept."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()
    level = root.level
    with tempfile.TemporaryDirectory(prefix="mtrec-quantize-") as tmp:
        source, target = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        source.write_bytes(onnx_model)
        root.setLevel(logging.ERROR)  # the quantizer's advice to pre-process (shape inference) goes to root
        try:
            quantize_dynamic(source, target, weight_type=QuantType.QInt8, op_types_to_quantize=QUANTIZED_OPS)
        finally:
            root.setLevel(level)
        return target.read_bytes()


@dataclass
class QuantizedParity:
    """Per task: ``auc_fp32``, ``auc_quantized``, ``auc_diff`` (binary tasks) and ``max_abs_diff``."""

    per_task: dict[str, dict[str, float]]
    rows: int
    source: str

    @property
    def worst_auc_diff(self) -> float:
        return max((abs(m["auc_diff"]) for m in self.per_task.values() if "auc_diff" in m), default=0.0)


def _batches(dataset: Any, index: np.ndarray, schema: DatasetSchema, encoders: FeatureEncoders | None,
             raw: bool) -> Iterator[dict[str, np.ndarray]]:
    """The rows ``index`` of a prepared dataset as a model's inputs, in batches (raw values when ``raw``)."""
    for start in range(0, len(index), _BATCH):
        rows = index[start : start + _BATCH]
        sparse, dense = np.asarray(dataset.sparse[rows]), np.asarray(dataset.dense[rows])
        sequences = {name: np.asarray(block[rows]) for name, block in dataset.sequences.items()}
        if raw:
            assert encoders is not None
            yield raw_feeds(encoders.decode(sparse, dense, sequences, schema), schema, encoders)
        else:
            yield array_feeds(sparse, dense, sequences, schema)


def quantized_parity(fp32_model: bytes, quantized: bytes, dataset: Any, index: np.ndarray, schema: DatasetSchema,
                     encoders: FeatureEncoders | None, raw: bool, source: str) -> QuantizedParity:
    """Score the rows ``index`` of ``dataset`` (a prepared dataset with labels) with both models; see above."""
    sessions = [onnx_session(m) for m in (fp32_model, quantized)]
    inputs = {i.name for i in sessions[0].get_inputs()}
    scores: list[list[list[np.ndarray]]] = [[], []]
    for feeds in _batches(dataset, index, schema, encoders, raw):
        used = {k: v for k, v in feeds.items() if k in inputs}
        for kept, session in zip(scores, sessions, strict=True):
            kept.append(session.run(schema.task_names, used))
    labels = np.asarray(dataset.labels[index])
    per_task: dict[str, dict[str, float]] = {}
    for t, task in enumerate(schema.tasks):
        p32, p8 = (np.concatenate([batch[t] for batch in kept]).astype(np.float64) for kept in scores)
        figures = {"max_abs_diff": float(np.abs(p8 - p32).max()) if len(p32) else 0.0}
        if task.is_binary:
            observed = np.ones(len(index), dtype=bool) if task.observed_after is None else \
                labels[:, schema.task_names.index(task.observed_after)] == 1
            y = labels[observed, t]
            if len(np.unique(y)) == 2:
                a32, a8 = auc(y, p32[observed]), auc(y, p8[observed])
                figures.update(auc_fp32=a32, auc_quantized=a8, auc_diff=a8 - a32)
        per_task[task.name] = figures
    return QuantizedParity(per_task, len(index), source)
