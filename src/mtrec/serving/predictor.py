"""Raw feature values -> each task's probability, for one trained run.

A :class:`Predictor` is built from a run directory and reads only data, never code: ``model.safetensors``
(tensors), ``schema.json`` and ``config.json`` (rebuilt through the model registry, see
:func:`mtrec.training.checkpoint.load_model`) and ``encoders.json`` (the vocabularies and dense transforms
that ``mtrec prepare`` fitted; see :mod:`mtrec.features.encoders`). Anything else is refused with an
:class:`~mtrec.training.checkpoint.ArtifactError` before a request is served.

Raw values go through the encoders exactly as at preparation (unseen values -> the OOV id), then through
one of two runtimes:

- ``onnx``: the model is exported in memory from the loaded weights (:func:`mtrec.export.onnx.export_checked`,
  parity-checked against eager PyTorch) and run by ONNX Runtime on CPU;
- ``torch``: the model runs eagerly in PyTorch (inference mode).

Both give the same probabilities to within the export tolerance; ``benchmarks/serving.py`` compares their
speed (see docs/serving.md), which chose the default.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Literal, Protocol

import numpy as np
import torch

from mtrec.export.onnx import export_checked, onnx_session, parity_batches
from mtrec.export.scoring import ScoringModule, array_feeds, input_names
from mtrec.export.standalone import load_encoders
from mtrec.features.encoders import FeatureEncoders, RawColumn
from mtrec.objectives.scorer import Scorer
from mtrec.training.checkpoint import load_model

Backend = Literal["onnx", "torch"]
BACKENDS: tuple[Backend, ...] = ("onnx", "torch")
DEFAULT_BACKEND: Backend = "onnx"
DEFAULT_BATCH_SIZE = 8192


class Runner(Protocol):
    """Named input arrays (see :mod:`mtrec.export.scoring`) -> probabilities ``[B]`` per task, in task order."""

    def __call__(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]: ...


class OnnxRunner:
    """ONNX Runtime on a graph exported from the model in memory (after the parity check)."""

    def __init__(self, model: Scorer, threads: int = 1) -> None:
        batches, source = parity_batches(model.schema, None, rows=256, batch_size=128)
        self.export = export_checked(model, batches, source)
        self.session = onnx_session(self.export.onnx_model, threads)
        self.inputs = {i.name for i in self.session.get_inputs()}  # type: ignore[attr-defined]
        self.outputs = model.schema.task_names

    def __call__(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        used = {name: value for name, value in feeds.items() if name in self.inputs}
        return list(self.session.run(self.outputs, used))  # type: ignore[attr-defined]


class TorchRunner:
    """The model itself, eagerly, in inference mode."""

    def __init__(self, model: Scorer, threads: int | None = None) -> None:
        if threads:
            torch.set_num_threads(threads)
        self.module = ScoringModule(model).eval()
        self.names = input_names(model.schema)

    def __call__(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        with torch.inference_mode():
            outputs = self.module(*(torch.from_numpy(feeds[name]) for name in self.names))
        return [t.numpy() for t in outputs]


def make_runner(model: Scorer, backend: Backend, threads: int = 1) -> Runner:
    if backend == "onnx":
        return OnnxRunner(model, threads)
    if backend == "torch":
        return TorchRunner(model, threads)
    raise ValueError(f"unknown backend {backend!r}; choose one of {list(BACKENDS)}")


class Predictor:
    """Scores raw feature values with a trained model.

    ``predict(columns)`` takes ``{feature name: N raw values}`` (every feature of the schema; a sequence
    as N lists of raw tokens or N separator-joined strings) and returns ``{task: float32 [N]}``.
    """

    def __init__(
        self,
        model: Scorer,
        encoders: FeatureEncoders,
        backend: Backend = DEFAULT_BACKEND,
        threads: int = 1,
        batch_size: int = DEFAULT_BATCH_SIZE,
    ) -> None:
        self.model_name = model.name
        self.schema = model.schema
        self.encoders = encoders
        self.backend = backend
        self.batch_size = batch_size
        self.runner = make_runner(model, backend, threads)

    @classmethod
    def from_run(
        cls, run_dir: str | Path, backend: Backend = DEFAULT_BACKEND, threads: int = 1,
        batch_size: int = DEFAULT_BATCH_SIZE,
    ) -> Predictor:
        """Load a run directory (weights, schema, config, encoders); ArtifactError if any is not valid."""
        run_dir = Path(run_dir)
        model, _ = load_model(run_dir)
        encoders = load_encoders(run_dir, model.schema)
        assert encoders is not None
        return cls(model, encoders, backend, threads, batch_size)

    def describe(self) -> str:
        """The runtime in words, e.g. ``onnx (torchscript export, parity 6e-08)``."""
        if isinstance(self.runner, OnnxRunner):
            checked = self.runner.export
            return f"onnx ({checked.exporter} export, parity {checked.parity.max_abs_diff:.1g})"
        return self.backend

    @property
    def task_names(self) -> list[str]:
        return self.schema.task_names

    @property
    def feature_names(self) -> list[str]:
        return self.schema.feature_names

    def encode(self, columns: Mapping[str, RawColumn]) -> dict[str, np.ndarray]:
        """Raw columns -> the graph's named inputs; ValueError naming a missing column, EncodingError naming
        the feature and row of a bad value."""
        return array_feeds(*self.encoders.encode(columns, self.schema), self.schema)

    def score(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Encoded inputs ``[N, ...]`` -> ``{task: float32 [N]}``, in slices of ``batch_size`` rows."""
        n = next(iter(feeds.values())).shape[0]
        parts: list[list[np.ndarray]] = []
        for start in range(0, n, self.batch_size):
            parts.append(self.runner({k: v[start : start + self.batch_size] for k, v in feeds.items()}))
        if not parts:
            return {task: np.zeros(0, dtype=np.float32) for task in self.task_names}
        return {task: np.concatenate([p[i] for p in parts]).astype(np.float32, copy=False)
                for i, task in enumerate(self.task_names)}

    def predict(self, columns: Mapping[str, RawColumn]) -> dict[str, np.ndarray]:
        """Raw values keyed by feature name -> ``{task: probability float32 [N]}``."""
        return self.score(self.encode(columns))
