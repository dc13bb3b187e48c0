"""Raw feature values -> each task's prediction, for one trained run or one exported model file.

A :class:`Predictor` reads only data, never code. From a **run directory**: ``model.safetensors``
(tensors), ``schema.json`` and ``config.json`` (rebuilt through the model registry, see
:func:`mtrec.training.checkpoint.load_model`) and ``encoders.json`` (the vocabularies and dense transforms
that ``mtrec prepare`` fitted; see :mod:`mtrec.features.encoders`). From a **model file** written by
``mtrec export`` (raw or id inputs, fp32 or quantized): the ONNX graph, with the schema and encoders from
its metadata. Anything else is refused with one line naming the file before a row is scored.

Raw values go through the encoders exactly as at preparation (unseen values -> the OOV id), then through
one of two runtimes:

- ``onnx``: ONNX Runtime on the run's scoring graph. The first time a run is scored, its model is exported
  from the loaded weights (:func:`mtrec.export.onnx.export_checked`, parity-checked against eager
  PyTorch) and kept in a cache directory (:func:`cache_dir`) under the SHA-256 of ``model.safetensors``,
  ``config.json`` and ``schema.json``; later loads of the same files read that graph directly, without
  importing PyTorch. The run directory itself is never written.
- ``torch``: the model runs eagerly in PyTorch (inference mode).

A model file taking raw values gets its inputs as :func:`mtrec.export.model_file.raw_feeds` makes them
(the lookups run inside its graph); any other gets the encoders' ids.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

import numpy as np

from mtrec.export.model_file import (
    ModelFile,
    ModelFileError,
    array_feeds,
    input_names,
    load_encoders,
    metadata,
    open_model_file,
    providers_for,
    raw_feeds,
    run_fingerprint,
)
from mtrec.features.encoders import FeatureEncoders, RawColumn
from mtrec.features.schema import DatasetSchema, SchemaError

if TYPE_CHECKING:
    from mtrec.objectives.scorer import Scorer

Backend = Literal["onnx", "torch"]
BACKENDS: tuple[Backend, ...] = ("onnx", "torch")
DEFAULT_BACKEND: Backend = "onnx"
DEFAULT_BATCH_SIZE = 8192
_CACHE_TAG = "mtrec_run_sha256"


class Runner(Protocol):
    """Named input arrays -> predictions ``[B]`` per task, in task order."""

    def __call__(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]: ...


class OnnxRunner:
    """ONNX Runtime on a model file's session."""

    def __init__(self, session: Any, outputs: list[str]) -> None:
        self.session = session
        self.inputs = {i.name for i in session.get_inputs()}
        self.outputs = outputs

    def __call__(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        used = {name: value for name, value in feeds.items() if name in self.inputs}
        return list(self.session.run(self.outputs, used))


class TorchRunner:
    """The model itself, eagerly, in inference mode."""

    def __init__(self, model: Scorer, threads: int | None = None, device: str = "cpu") -> None:
        import torch

        from mtrec.export.scoring import ScoringModule

        if threads:
            torch.set_num_threads(threads)
        self.torch = torch
        self.device = torch.device(device)
        self.module = ScoringModule(model).eval().to(self.device)
        self.names = input_names(model.schema)

    def __call__(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        with self.torch.inference_mode():
            outputs = self.module(*(self.torch.from_numpy(feeds[name]).to(self.device) for name in self.names))
        return [t.cpu().numpy() for t in outputs]


def cache_dir() -> Path:
    """Where exported scoring graphs are kept: ``$MTREC_CACHE_DIR``, else ``$XDG_CACHE_HOME/mtrec/scoring``,
    else ``~/.cache/mtrec/scoring`` (any file there may be deleted at any time)."""
    if os.environ.get("MTREC_CACHE_DIR"):
        return Path(os.environ["MTREC_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mtrec" / "scoring"


def cached_export(run_dir: Path, threads: int = 1, providers: list[Any] | None = None) -> tuple[ModelFile, str]:
    """The run's scoring graph (see the module docstring) and how it was obtained, in words."""
    try:
        fingerprint = run_fingerprint(run_dir)
    except OSError:  # a missing or unreadable file: load_model below names it
        fingerprint = ""
    cache = cache_dir() / f"{fingerprint}.onnx"
    if fingerprint and cache.is_file():
        try:
            cached = open_model_file(cache, threads, providers)
        except ModelFileError:
            cached = None
        if cached is not None and cached.props.get(_CACHE_TAG) == fingerprint:
            return cached, f"exported before: {cache}"
    from mtrec.export.onnx import export_checked, parity_batches
    from mtrec.export.standalone import with_metadata
    from mtrec.io import atomic_write_bytes
    from mtrec.training.checkpoint import load_model

    model, _ = load_model(run_dir)
    batches, source = parity_batches(model.schema, None, rows=256, batch_size=128)
    checked = export_checked(model, batches, source)
    encoders = load_encoders(run_dir, model.schema, required=False)
    props = metadata(model.schema, encoders, model.name, "ids", **{_CACHE_TAG: fingerprint})
    data = with_metadata(checked.onnx_model, props)
    how = f"{checked.exporter} export, parity {checked.parity.max_abs_diff:.1g}"
    if fingerprint:
        try:
            cache.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(cache, data)
            how += f", kept in {cache}"
        except OSError:  # no writable cache: export again next time
            pass
    return open_model_file(data, threads, providers, name=str(cache)), how


def run_schema(run_dir: Path) -> DatasetSchema:
    """The run's ``schema.json``; ModelFileError naming the directory or the file when it is not usable."""
    if not run_dir.is_dir():
        raise ModelFileError(f"run directory not found: {run_dir}")
    try:
        return DatasetSchema.load(run_dir / "schema.json")
    except SchemaError as exc:
        raise ModelFileError(f"{run_dir}: not a valid mtrec run ({exc})") from None


def torch_device_for(device: str) -> str:
    """``--device`` for the torch backend: checked by :func:`mtrec.devices.check_device` (one line saying what
    to install or use instead), ``auto`` resolved; the torch backend scores on cpu or CUDA."""
    import torch

    from mtrec.devices import check_device

    if check_device(device) == "mps":
        raise ModelFileError("--device mps: the torch scoring backend runs on cpu or cuda; use --device cpu")
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


class Predictor:
    """Scores raw feature values with a trained model.

    ``predict(columns)`` takes ``{feature name: N raw values}`` (every feature of the schema; a sequence
    as N lists of raw tokens or N separator-joined strings) and returns ``{task: float32 [N]}``.
    """

    def __init__(
        self,
        runner: Runner,
        schema: DatasetSchema,
        encoders: FeatureEncoders,
        model_name: str,
        backend: Backend = DEFAULT_BACKEND,
        batch_size: int = DEFAULT_BATCH_SIZE,
        raw_inputs: bool = False,
        how: str = "",
    ) -> None:
        encoders.check(schema)
        self.runner = runner
        self.schema = schema
        self.encoders = encoders
        self.model_name = model_name
        self.backend = backend
        self.batch_size = batch_size
        self.raw_inputs = raw_inputs
        self.how = how

    @classmethod
    def load(cls, path: str | Path, backend: Backend = DEFAULT_BACKEND, threads: int = 1,
             batch_size: int = DEFAULT_BATCH_SIZE, device: str = "cpu") -> Predictor:
        """A run directory (:meth:`from_run`) or an exported model file (:meth:`from_file`)."""
        path = Path(path)
        if path.is_file():
            if backend != "onnx":
                raise ModelFileError(f"{path}: a model file runs in ONNX Runtime; --backend {backend} needs the "
                                     f"run directory")
            return cls.from_file(path, threads, batch_size, device)
        return cls.from_run(path, backend, threads, batch_size, device)

    @classmethod
    def from_run(
        cls, run_dir: str | Path, backend: Backend = DEFAULT_BACKEND, threads: int = 1,
        batch_size: int = DEFAULT_BATCH_SIZE, device: str = "cpu",
    ) -> Predictor:
        """Load a run directory (weights, schema, config, encoders) to score on ``device`` (``cpu``, ``cuda``,
        ``cuda:N``, ``auto``); ArtifactError / ModelFileError if any is not valid or the device is absent."""
        run_dir = Path(run_dir)
        if backend == "torch":
            from mtrec.training.checkpoint import load_model

            torch_device = torch_device_for(device)
            model, _ = load_model(run_dir)
            encoders = load_encoders(run_dir, model.schema)
            assert encoders is not None
            return cls(TorchRunner(model, threads, torch_device), model.schema, encoders, model.name, backend,
                       batch_size)
        if backend != "onnx":
            raise ValueError(f"unknown backend {backend!r}; choose one of {list(BACKENDS)}")
        encoders = load_encoders(run_dir, run_schema(run_dir))  # a tampered file is refused before any work
        assert encoders is not None
        graph, how = cached_export(run_dir, threads, providers_for(device))
        return cls(OnnxRunner(graph.session, graph.schema.task_names), graph.schema, encoders, graph.model_name,
                   backend, batch_size, how=how)

    @classmethod
    def from_file(cls, path: str | Path, threads: int = 1, batch_size: int = DEFAULT_BATCH_SIZE,
                  device: str = "cpu") -> Predictor:
        """Load a model file written by ``mtrec export``; ModelFileError if it is not one or has no encoders."""
        graph = open_model_file(Path(path), threads, providers_for(device))
        if graph.encoders is None:
            raise ModelFileError(f"{path}: its metadata has no encoders (exported from a run without "
                                 f"encoders.json), so it cannot score raw values")
        quantized = graph.props.get("mtrec_quantized")
        how = f"{graph.inputs} inputs" + (f", {quantized}" if quantized else "") + f", file {path}"
        return cls(OnnxRunner(graph.session, graph.schema.task_names), graph.schema, graph.encoders,
                   graph.model_name, "onnx", batch_size, raw_inputs=graph.inputs == "raw", how=how)

    def describe(self) -> str:
        """The runtime in words, e.g. ``onnx (torchscript export, parity 6e-08, kept in RUN/scoring.onnx)``."""
        return f"{self.backend} ({self.how})" if self.how else self.backend

    @property
    def task_names(self) -> list[str]:
        return self.schema.task_names

    @property
    def feature_names(self) -> list[str]:
        return self.schema.feature_names

    def encode(self, columns: Mapping[str, RawColumn]) -> dict[str, np.ndarray]:
        """Raw columns -> the graph's named inputs; ValueError naming a missing column, EncodingError naming
        the feature and row of a bad value."""
        if self.raw_inputs:
            return raw_feeds(columns, self.schema, self.encoders)
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
        """Raw values keyed by feature name -> ``{task: prediction float32 [N]}``."""
        return self.score(self.encode(columns))
