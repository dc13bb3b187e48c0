"""Typed configuration: pydantic models for the config files, and options checked against a signature.

mtrec validates every configuration with one library, pydantic: the run config and its training settings
(:mod:`mtrec.training.config`), the dataset config (:mod:`mtrec.data.config`), the bench config
(:mod:`mtrec.bench.runner`), and the options of models, objectives and weighting strategies, which are
checked against the type hints of their constructors (:func:`checked_options`), so a model's signature is
the specification of its options. Values are strict: ``epochs: ten``, ``batch_size: 64.5``, ``true`` for a
number, a string for a list, NaN or infinity are refused, never converted. A failure is one line naming
the key (``run.yaml: train.lr: must be > 0, got nan``).

Type aliases for the constraints options share: :data:`Count` (an integer >= 1), :data:`Sizes` (layer
widths), :data:`Layers` (widths, at least one), :data:`NonNegative`, :data:`NonNegativeFloat`,
:data:`Dropout`, :data:`Rate`.
"""

from __future__ import annotations

import difflib
import inspect
import re
import reprlib
import typing
from collections.abc import Callable, Mapping, Sequence
from functools import cache
from typing import Annotated, Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

Count = Annotated[int, Field(ge=1)]
NonNegative = Annotated[int, Field(ge=0)]
NonNegativeFloat = Annotated[float, Field(ge=0.0)]
Sizes = Sequence[Count]  # hidden-layer widths, first to last
Layers = Annotated[Sequence[Count], Field(min_length=1)]  # widths of a block that needs at least one layer
Dropout = Annotated[float, Field(ge=0.0, lt=1.0)]
Rate = Annotated[float, Field(gt=0.0)]  # a learning rate, a step size: a finite number > 0

STRICT = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False, arbitrary_types_allowed=True)


class ConfigModel(BaseModel):
    """A strict config section: unknown keys and wrongly typed values are errors."""

    model_config = STRICT


def _path(loc: tuple[int | str, ...]) -> str:
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path


_SHORT = reprlib.Repr()
_SHORT.maxlevel, _SHORT.maxdict, _SHORT.maxlist, _SHORT.maxtuple, _SHORT.maxset = 2, 4, 6, 6, 4
_SHORT.maxstring, _SHORT.maxother, _SHORT.maxlong = 80, 60, 40


_MESSAGE_CHARS = 400


def short_repr(value: Any) -> str:
    """``repr(value)`` cut to a few dozen characters (nested and long values elided with ``...``), computed
    without walking all of a huge value: an error line never prints a huge offending value."""
    return _SHORT.repr(value)


def _message(error: Mapping[str, Any]) -> str:
    kind, ctx = str(error.get("type", "")), dict(error.get("ctx") or {})
    got = f", got {short_repr(error['input'])}" if "input" in error and kind != "missing" else ""
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "missing":
        return "missing required key"
    for key, word in (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<=")):
        if key in ctx:
            return f"must be {word} {ctx[key]}{got}"
    if kind == "value_error":  # a validator's own message
        return str(ctx.get("error", error.get("msg", "")))
    if kind == "too_short":
        return f"must have at least {ctx.get('min_length')} item(s){got}"
    if kind == "string_pattern_mismatch":
        return f"not a valid value{got}"
    if kind == "literal_error":
        return f"must be one of {ctx.get('expected', '')}{got}"
    msg = str(error.get("msg", "invalid value"))
    return f"{msg[0].lower()}{msg[1:]}{got}"


_LEADING_KEY = re.compile(r"([A-Za-z_]\w*(?:\.[A-Za-z_]\w*|\[\d+\])*): (?=\S)")


def _keys(cls: type[BaseModel] | None, loc: tuple[int | str, ...]) -> list[str]:
    """The keys allowed where ``loc`` points (in nested config models), or [] where unknown."""
    for part in loc[:-1]:
        field = cls.model_fields.get(str(part)) if cls is not None else None
        annotation = field.annotation if field is not None else None
        cls = annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
    return sorted(cls.model_fields) if cls is not None else []


def error_line(exc: ValidationError, where: str = "", prefix: str = "", cls: type[BaseModel] | None = None
               ) -> str:
    """A validation failure as one line: ``where: prefix.key: problem, got value (and N more)``."""
    errors = exc.errors()
    first = errors[0]
    loc = tuple(part for part in first.get("loc", ()) if not (isinstance(part, str) and "[" in part))
    key = _path((*([prefix] if prefix else []), *loc))
    message = _message(first)
    if first.get("type") == "value_error":  # a section's validator names the key below it: 'valid: part: ...'
        while inner := _LEADING_KEY.match(message):
            key = f"{key}.{inner[1]}" if key else inner[1]
            message = message[inner.end():]
    if first.get("type") == "extra_forbidden" and (keys := _keys(cls, loc)):
        close = difflib.get_close_matches(str(loc[-1]), keys, n=1)
        message += (f" (did you mean {close[0]!r}?)" if close else "") + f"; expected one of {keys}"
    if len(message) > _MESSAGE_CHARS:  # a validator's own message may quote a long value
        message = message[:_MESSAGE_CHARS] + "..."
    more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
    head = f"{where}: " if where else ""
    return f"{head}{key}: {message}{more}" if key else f"{head}{message}{more}"


def first_problem(exc: ValidationError) -> str:
    """The first problem of a validation failure, without its key (``must be > 0, got -1``)."""
    return _message(exc.errors()[0])


M = TypeVar("M", bound=BaseModel)


def validate(cls: type[M], data: Any, where: str, error: type[Exception], prefix: str = "") -> M:
    """``cls`` validated from ``data``; ``error`` with :func:`error_line`'s message if it is not valid."""
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        raise error(error_line(exc, where, prefix, cls)) from None


@cache
def options_model(func: Callable[..., Any], skip: tuple[str, ...]) -> type[BaseModel]:
    """A strict model of the keyword options ``func`` takes (its parameters with defaults, minus ``skip``),
    typed by its type hints."""
    hints = typing.get_type_hints(func, include_extras=True)
    fields: dict[str, Any] = {}
    for p in inspect.signature(func).parameters.values():
        if p.name in skip or p.name == "self" or p.default is inspect.Parameter.empty:
            continue
        fields[p.name] = (hints.get(p.name, Any), p.default)
    return create_model(f"{getattr(func, '__qualname__', 'options')}", __config__=STRICT, **fields)


def checked_options(func: Callable[..., Any], options: Mapping[str, Any], where: str, error: type[Exception],
                    skip: tuple[str, ...] = ()) -> dict[str, Any]:
    """``options`` checked against ``func``'s signature (names and types); the values as validated.
    ``error`` names ``where`` and the option (``model 'mmoe': num_experts: must be >= 1, got -1``)."""
    model = options_model(func, skip)
    validated = validate(model, dict(options), where, error)
    return {name: getattr(validated, name) for name in options}
