"""The model registry: the only way to build a model (CLI, configs, benchmark and tests all use it).

A model is registered either as a class (``@register_model("mmoe")`` on a :class:`MultiTaskModel`) or as a
variant: a registered entrypoint function over a base class that only changes defaults
(``register_variant("omoe", MMoE, num_gates=1)``), so a variant never re-lists its base's signature.

The built-in models are listed in :data:`BUILT_IN` (name -> the module that registers it and a one-line
description), so listing and describing them imports neither torch nor any model module; a built-in
model's module is imported the first time the model is asked for by name. A model registered by other
code is described by its class docstring's first line.
"""

from __future__ import annotations

import fnmatch
import importlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

from mtrec.errors import UserError

if TYPE_CHECKING:
    from mtrec.features.schema import DatasetSchema
    from mtrec.models.base import MultiTaskModel

M = TypeVar("M", bound="type[MultiTaskModel]")


class BuiltIn(NamedTuple):
    """A built-in model: the module (under ``mtrec.models``) whose import registers it, and what it is."""

    module: str
    description: str


BUILT_IN: dict[str, BuiltIn] = {
    "adatt": BuiltIn("adatt", "AdaTT (Li et al., KDD 2023): adaptive task-to-task fusion of task-specific and "
                              "shared experts"),
    "aitm": BuiltIn("aitm", "AITM (Xi et al., KDD 2021): each conversion step's tower receives information "
                            "transferred from the step before"),
    "apg": BuiltIn("apg", "APG (Yan et al., NeurIPS 2022): task towers whose layer weights are generated per "
                          "example from a condition, in low-rank form"),
    "cgc": BuiltIn("ple", "CGC: PLE with a single extraction level"),
    "cross_stitch": BuiltIn("cross_stitch", "Cross-Stitch (Misra et al., CVPR 2016): one column per task, mixed "
                                            "after every hidden layer by learned cross-stitch units"),
    "dbmtl": BuiltIn("dbmtl", "DBMTL (Wang et al., 2019): task towers chained as a Bayesian network, each task "
                              "conditioned on the tasks before it"),
    "dcrnn": BuiltIn("dcrnn", "DCRNN (Zhou & Yu, 2023): a cross network run as an RNN, partial parameter sharing, "
                              "tasks continuing the recurrence in order"),
    "dcrnn_hard": BuiltIn("dcrnn", "DCRNN with hard sharing: one cross recurrence whose final state every task "
                                   "reads"),
    "dselect_k": BuiltIn("dselect_k", "DSelect-k (Hazimeh et al., NeurIPS 2021): MMoE whose gates select k experts "
                                      "through a smooth-step binary encoding"),
    "dtrn": BuiltIn("dtrn", "DTRN (Liu et al., CIKM 2023): a task-specific bottom representation per task "
                            "(interest module over behaviour histories, field refinement), one tower per task"),
    "dtrn_mmoe": BuiltIn("dtrn", "DTRN with MMoE on top: shared experts over each task's refined input"),
    "esmm": BuiltIn("esmm", "ESMM (Ma et al., SIGIR 2018): conversion learned over the entire exposure space "
                            "as pCTCVR = pCTR x pCVR"),
    "hinet": BuiltIn("hinet", "HiNet (Zhou et al., SIGIR 2023): a scenario extraction layer (shared, specific and "
                              "attended experts) under a task extraction layer; needs a scenario"),
    "hmoe": BuiltIn("hmoe", "HMoE (Li et al., CIKM 2020): MMoE whose task outputs are mixed again in the label "
                            "space, other tasks' under stop-gradient"),
    "home": BuiltIn("home", "HoME (Wang et al., 2024): a hierarchy of normalised multi-gate experts over task "
                            "groups"),
    "m3oe": BuiltIn("m3oe", "M3oE (Zhang et al., SIGIR 2024): shared, scenario and task mixtures of experts fused "
                            "at two levels; needs a scenario"),
    "mmoe": BuiltIn("mmoe", "MMoE (Ma et al., KDD 2018): shared experts mixed by one gate per task"),
    "omoe": BuiltIn("mmoe", "OMoE: MMoE with one gate whose mixture every task reads"),
    "pepnet": BuiltIn("pepnet", "PEPNet (Chang et al., KDD 2023): embeddings and tower layers personalised by "
                                "gates over prior features"),
    "ple": BuiltIn("ple", "PLE (Tang et al., RecSys 2020): progressive layered extraction with shared and "
                          "task-specific experts"),
    "poso": BuiltIn("poso", "POSO (Dai et al., 2021): MMoE whose experts are scaled by a gate on the user's "
                            "personalisation code"),
    "shared_bottom": BuiltIn("shared_bottom", "Shared-Bottom (Caruana, 1997): one shared bottom MLP, one tower "
                                              "per task"),
    "single_task": BuiltIn("single_task", "Single-task baseline: one independent network per task, nothing "
                                          "shared"),
    "snr_aver": BuiltIn("snr", "SNR-Aver (Ma et al., AAAI 2019): sub-networks routed to each task by hard-concrete "
                               "gates, as a gated sum"),
    "snr_trans": BuiltIn("snr", "SNR-Trans (Ma et al., AAAI 2019): sub-networks routed to each task by "
                                "hard-concrete gates, each connection a transformation"),
    "star": BuiltIn("star", "STAR (Sheng et al., CIKM 2021): star-topology layers (shared weights times scenario "
                            "weights) over partitioned normalization; needs a scenario"),
    "stem": BuiltIn("stem", "STEM-Net (Su et al., AAAI 2024): shared and task-specific embeddings with "
                            "all-forward, task-specific-backward gates"),
}


class ModelConfigError(UserError, ValueError):
    """An unknown model name or an option the model does not take."""


@dataclass(frozen=True)
class Entry:
    """A registered model: the class that builds it and the defaults it sets over the class's own."""

    cls: type[MultiTaskModel]
    defaults: dict[str, Any] = field(default_factory=dict)
    description: str = ""


_MODELS: dict[str, Entry] = {}


def _add(name: str, entry: Entry) -> None:
    if name in _MODELS:
        raise ModelConfigError(f"model name {name!r} is registered twice")
    _MODELS[name] = entry


def register_model(name: str) -> Callable[[M], M]:
    """Class decorator: make a MultiTaskModel buildable by ``name``."""

    def add(cls: M) -> M:
        _add(name, Entry(cls, description=(inspect.getdoc(cls) or "").partition("\n")[0]))
        cls.registry_name = name
        return cls

    return add


def register_variant(name: str, base: type[MultiTaskModel], **defaults: Any) -> None:
    """Register ``name``: the registered model ``base`` with other defaults (checked against its options)."""
    own = _class_defaults(base)
    unknown = sorted(set(defaults) - set(own))
    if unknown:
        raise ModelConfigError(f"variant {name!r}: {base.__name__} has no option(s) {unknown}")
    options = ", ".join(f"{key}={value!r}" for key, value in defaults.items())
    _add(name, Entry(base, dict(defaults), f"{base.registry_name or base.__name__} with {options}"))


def list_models(*patterns: str) -> list[str]:
    """Registered model names, sorted; with ``patterns`` (fnmatch, e.g. ``"dcrnn*"``) those matching any."""
    names = sorted(set(_MODELS) | set(BUILT_IN))
    if not patterns:
        return names
    return [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in patterns)]


def model_description(name: str) -> str:
    """One line saying what the registered model ``name`` is (a built-in's without importing its module)."""
    return BUILT_IN[name].description if name in BUILT_IN else _entry(name).description


def _entry(name: str) -> Entry:
    if name not in _MODELS and name in BUILT_IN:
        importlib.import_module(f"mtrec.models.{BUILT_IN[name].module}")
    try:
        return _MODELS[name]
    except KeyError:
        raise ModelConfigError(f"unknown model {name!r}; registered models: {', '.join(list_models())}") from None


def model_class(name: str) -> type[MultiTaskModel]:
    """The class that builds the registered model ``name`` (a variant's base class)."""
    return _entry(name).cls


def _class_defaults(cls: type[MultiTaskModel]) -> dict[str, Any]:
    signature = inspect.signature(cls.__init__)
    return {
        p.name: p.default
        for p in signature.parameters.values()
        if p.name not in ("self", "schema") and p.default is not inspect.Parameter.empty
    }


def model_options(name: str, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """The model's full option set: its class's defaults, then the variant's, updated by ``overrides``
    (checked against the type hints of the class's constructor: names, types and ranges)."""
    entry = _entry(name)
    defaults = {**_class_defaults(entry.cls), **entry.defaults}
    unknown = sorted(set(overrides or {}) - set(defaults))
    if unknown:
        raise ModelConfigError(f"model {name!r} has no option(s) {unknown}; its options: {sorted(defaults)}")
    from mtrec.typed import checked_options

    checked = checked_options(entry.cls.__init__, overrides or {}, f"model_options of model {name!r}",
                              ModelConfigError, skip=("schema",))
    return {**defaults, **checked}


def runs_on(name: str, schema: DatasetSchema) -> bool:
    """Whether the registered model ``name`` can be built for ``schema``: a multi-scenario model
    (``needs_scenario``) needs a dataset with a scenario."""
    return schema.scenario is not None or not model_class(name).needs_scenario


def create_model(name: str, schema: DatasetSchema, **options: Any) -> MultiTaskModel:
    """Build the registered model ``name`` for ``schema`` with the given options (wrapped in
    :class:`~mtrec.models.heads.OutputHeads` where a task's loss reads several outputs per row)."""
    from mtrec.models.heads import with_output_heads

    heads = schema.with_output_heads()
    try:
        model = model_class(name)(heads, **model_options(name, options))
        if heads is not schema:
            model = with_output_heads(schema, model)
    except ModelConfigError:
        raise
    except ValueError as exc:  # a block refusing an option value
        raise ModelConfigError(f"model {name!r}: {exc}") from None
    model.registry_name = name  # an instance attribute: a variant's model names the variant
    return model
