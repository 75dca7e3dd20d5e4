"""A small validator for frozen dataclasses: typed settings from YAML, one sentence per error.

Written here instead of using pydantic: the whole check needs ~80 lines, and
pydantic's import cost (~0.2 s) was a fifth of `invoke health`'s wall time.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any, Literal, TypeVar, Union

T = TypeVar("T")


class SchemaError(ValueError):
    """``str(error)`` names the dotted key and what is allowed."""


def setting(
    default: Any = dataclasses.MISSING,
    *,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    min_length: int = 0,
) -> Any:
    """A dataclass field with bounds the validator checks."""
    bounds = {"ge": ge, "gt": gt, "le": le, "min_length": min_length}
    if default is dataclasses.MISSING:
        return dataclasses.field(metadata=bounds)
    return dataclasses.field(default=default, metadata=bounds)


def build(cls: type[T], data: Any, prefix: str = "") -> T:
    """An instance of dataclass ``cls`` from a mapping, or SchemaError for the first problem."""
    if not isinstance(data, dict):
        raise SchemaError(
            f"key '{prefix.rstrip('.') or '(top level)'}' must be a mapping of "
            f"settings, not {_kind(data)}"
        )
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    for key in data:
        if key not in fields:
            allowed = ", ".join(fields)
            raise SchemaError(
                f"unknown key '{prefix}{key}'; remove it or check its spelling "
                f"(allowed here: {allowed})"
            )
    hints = typing.get_type_hints(cls)
    values = {}
    for name, spec in fields.items():
        key = f"{prefix}{name}"
        if name not in data:
            if spec.default is dataclasses.MISSING and spec.default_factory is dataclasses.MISSING:
                raise SchemaError(f"missing key '{key}'")
            continue
        values[name] = _value(hints[name], data[name], key, spec.metadata)
    return cls(**values)


def _shown(value: Any, limit: int = 40) -> str:
    """A value as a message may show it: short, one line, never a whole structure."""
    if isinstance(value, list | dict):
        return _kind(value)
    text = repr(value).replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _kind(value: Any) -> str:
    return {
        bool: "a boolean",
        int: "a number",
        float: "a number",
        str: "a string",
        list: "a list",
        dict: "a mapping",
        type(None): "empty",
    }.get(type(value), type(value).__name__)


def _value(hint: Any, value: Any, key: str, bounds: Any) -> Any:
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        options = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None:
            return None
        return _value(options[0], value, key, bounds)
    if origin is Literal:
        choices = typing.get_args(hint)
        if value is False and "off" in choices:  # YAML 1.1 reads a bare `off` as false
            return "off"
        if value not in choices:
            allowed = ", ".join(repr(c) for c in choices)
            raise SchemaError(f"key '{key}' must be one of {allowed} (got {_shown(value)})")
        return value
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        return build(hint, value, f"{key}.")
    if origin is dict:
        key_type, value_type = typing.get_args(hint)
        if not isinstance(value, dict):
            raise SchemaError(f"key '{key}' must be a mapping (got {_kind(value)})")
        return {
            _value(key_type, k, f"{key} (a name)", {}): _value(value_type, v, f"{key}.{k}", {})
            for k, v in value.items()
        }
    if hint is bool:
        if not isinstance(value, bool):
            raise SchemaError(f"key '{key}' must be true or false (got {_shown(value)})")
        return value
    if hint in (int, float):
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or (hint is int and not isinstance(value, int))
        ):
            noun = "a whole number" if hint is int else "a number"
            raise SchemaError(f"key '{key}' must be {noun} (got {_shown(value)})")
        if not math.isfinite(value):
            raise SchemaError(f"key '{key}' must be a finite number (got {_shown(value)})")
        _check_bounds(hint(value), key, bounds)
        return hint(value)
    if hint is str:
        if not isinstance(value, str):
            raise SchemaError(f"key '{key}' must be a string (got {_shown(value)})")
        if len(value) < (bounds.get("min_length") or 0):
            raise SchemaError(f"key '{key}' must not be empty")
        return value
    raise SchemaError(f"key '{key}' has an unsupported type {hint!r}")  # a bug in the schema


def _check_bounds(number: float, key: str, bounds: Any) -> None:
    if bounds.get("gt") is not None and not number > bounds["gt"]:
        raise SchemaError(f"key '{key}' must be greater than {bounds['gt']:g} (got {number:g})")
    if bounds.get("ge") is not None and not number >= bounds["ge"]:
        raise SchemaError(f"key '{key}' must be at least {bounds['ge']:g} (got {number:g})")
    if bounds.get("le") is not None and not number <= bounds["le"]:
        raise SchemaError(f"key '{key}' must be at most {bounds['le']:g} (got {number:g})")
