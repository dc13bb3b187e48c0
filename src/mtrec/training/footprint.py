"""The memory a run's model needs, estimated before anything is allocated.

:func:`check_fits` builds the model on PyTorch's ``meta`` device (tensors with shapes and dtypes but no
storage) and counts its parameter and buffer bytes; training holds them about :data:`TRAINING_COPIES`
times (weights, gradients, Adam's two moments, the best epoch's copy), scoring once per model copy.
Activations are not counted: they depend on the batch size, not on the model's spec. A model beyond this
machine's memory (:func:`mtrec.resources.check_memory`) is refused in one line that names the setting
responsible, found by rebuilding (again on ``meta``, in milliseconds) with each numeric model option, and
each vocabulary of the schema, at its smallest: the one whose reduction saves the most is named.

While the meta model is built, random initialisation is skipped (its values are never read) and a few
elementwise operations are given their output shape directly: PyTorch would otherwise import its
compiler stack (seconds) to compute them on ``meta``. The RNG state is left as it was.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, TypeVar

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from mtrec.features.schema import DatasetSchema, SequenceFeature, SparseFeature
from mtrec.models import ModelConfigError, create_model
from mtrec.resources import check_memory, machine_memory
from mtrec.training.config import ConfigError

TRAINING_COPIES = 5  # weights, gradients, Adam's two moments, the best epoch's weights
_T = torch.Tensor
_RANDOM_FILLS = {_T.normal_, _T.uniform_, _T.random_, _T.bernoulli_, _T.exponential_, _T.log_normal_, _T.cauchy_,
                 _T.geometric_}
_RANDOM_TENSORS = {torch.randn, torch.rand}
_ELEMENTWISE = {getattr(_T, name) for name in (
    "mul", "__mul__", "__rmul__", "add", "__add__", "__radd__", "sub", "__sub__", "__rsub__", "div",
    "__truediv__", "__rtruediv__", "neg", "__neg__", "abs", "exp", "log", "sqrt")} | {
    torch.mul, torch.add, torch.sub, torch.div, torch.exp, torch.log, torch.sqrt}
_IN_PLACE = {getattr(_T, name) for name in (
    "mul_", "add_", "sub_", "div_", "__imul__", "__iadd__", "__isub__", "__itruediv__", "clamp_", "fill_", "zero_")}
_SMALL_FACTORIES = {torch.arange, torch.linspace}
Feature = TypeVar("Feature", SparseFeature, SequenceFeature)


def _broadcast(shapes: list[tuple[int, ...]]) -> tuple[int, ...]:
    """NumPy broadcasting of ``shapes`` (assumed compatible: the real build checks them)."""
    out = [1] * max(len(s) for s in shapes)
    for shape in shapes:
        for i, size in enumerate(shape, len(out) - len(shape)):
            out[i] = size if out[i] == 1 else out[i]
    return tuple(out)


class _ShapesOnly(TorchFunctionMode):
    """Inside ``torch.device("meta")``: skip random initialisation; elementwise results by shape only."""

    def __torch_function__(self, func: Callable[..., Any], types: Any, args: tuple[Any, ...] = (),
                           kwargs: dict[str, Any] | None = None) -> Any:
        kwargs = kwargs or {}
        if func in _RANDOM_FILLS or func in _IN_PLACE or getattr(func, "__module__", "") == "torch.nn.init":
            return args[0] if args else kwargs["tensor"]
        if func in _RANDOM_TENSORS:
            kwargs.pop("generator", None)
            return torch.empty(*args, **kwargs)
        if func in _SMALL_FACTORIES:  # index ranges of a module's own sizes
            return func(*args, **{**kwargs, "device": "cpu"}).to("meta")
        if func in _ELEMENTWISE:
            tensors = [a for a in args if isinstance(a, torch.Tensor)]
            dtype = torch.result_type(args[0], args[1]) if len(args) > 1 else tensors[0].dtype
            return torch.empty(_broadcast([tuple(t.shape) for t in tensors]), dtype=dtype, device="meta")
        return func(*args, **kwargs)


def model_bytes(model: str, schema: DatasetSchema, options: dict[str, Any]) -> int:
    """Bytes of the parameters and buffers of ``model`` built with ``options`` on ``schema`` (on meta)."""
    with torch.random.fork_rng(devices=[]), torch.device("meta"), _ShapesOnly():
        module: nn.Module = create_model(model, schema, **options)
    tensors = [*module.parameters(), *module.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors)


def _smallest(value: Any) -> Any:
    """``value`` (an int, or a list of ints) at its smallest size, or None if it is not a size."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 1:
        return 1
    if isinstance(value, list) and value and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        return [1] * len(value) if any(v > 1 for v in value) else None
    return None


def _at_two(feature: Feature, name: str) -> Feature:
    """``feature`` with the smallest vocabulary if it is the one named ``name``."""
    return dataclasses.replace(feature, vocab_size=2) if feature.name == name else feature


def _culprit(model: str, schema: DatasetSchema, options: dict[str, Any], total: int) -> str:
    """The setting whose reduction to its smallest size saves the most bytes, in words."""
    saved: dict[str, int] = {}
    for key, value in options.items():
        small = _smallest(value)
        if small is not None:
            try:
                saved[f"model_options.{key} = {value}"] = total - model_bytes(model, schema, {**options, key: small})
            except (ModelConfigError, ValueError, RuntimeError):  # a size the model cannot take at its smallest
                continue
    features: list[SparseFeature | SequenceFeature] = [*schema.sparse, *schema.sequences]
    for feature in features:
        if feature.vocab_size > 2:
            smaller = dataclasses.replace(
                schema, sparse=tuple(_at_two(f, feature.name) for f in schema.sparse),
                sequences=tuple(_at_two(f, feature.name) for f in schema.sequences))
            name = f"schema: feature {feature.name!r} vocab_size = {feature.vocab_size}"
            saved[name] = total - model_bytes(model, smaller, options)
    return max(saved, key=lambda k: saved[k]) if saved else "the model's size"


def check_fits(model: str, schema: DatasetSchema, options: dict[str, Any], copies: int) -> None:
    """ConfigError naming the setting responsible if ``copies`` times the model's bytes exceed this
    machine's memory."""
    total = model_bytes(model, schema, options)
    if total * copies > machine_memory():  # only then: which setting asked for it
        check_memory(total * copies, f"model {model!r} ({copies} copies of its weights; the largest part from "
                                     f"{_culprit(model, schema, options, total)})", ConfigError)
