"""Method parameters: a field with help, choices and bounds, and the check of one value against it.

Standard library only, as :mod:`farm.quant.config` (the producer validates specs without torch).
"""

from __future__ import annotations

import math
import typing
from collections.abc import Mapping
from dataclasses import field
from typing import Any


def param(
    default: Any,
    help: str,
    *,
    choices: tuple[str, ...] | None = None,
    min: float | None = None,
    max: float | None = None,
    min_exclusive: bool = False,
) -> Any:
    """A config field with its help text and the bounds :func:`check_value` enforces."""
    meta = {"help": help, "choices": choices, "min": min, "max": max, "min_exclusive": min_exclusive}
    return field(default=default, metadata=meta)


_HINTS: dict[type, dict[str, Any]] = {}


def type_hints(cls: type) -> dict[str, Any]:
    """The resolved annotations of a config class, computed once per class."""
    # get_type_hints re-evaluates every annotation string on each call; a sweep validates thousands of configs.
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]


def problem_path(path: str, name: str) -> str:
    """``path.name``, or ``name`` at the top level."""
    return f"{path}.{name}" if path else name


def type_name(tp: Any) -> str:
    """A type as a user reads it: ``int``, ``float | None``."""
    args = typing.get_args(tp)
    if args:
        inner = [a for a in args if a is not type(None)]
        name = " | ".join(type_name(a) for a in inner)
        return f"{name} | None" if type(None) in args else name
    return getattr(tp, "__name__", str(tp))


def check_value(value: Any, tp: Any, meta: Mapping[str, Any]) -> tuple[Any, str | None]:
    """Coerce ``value`` to ``tp`` where that is lossless; return (value, problem)."""
    args = typing.get_args(tp)
    optional = type(None) in args
    base = next((a for a in args if a is not type(None)), tp) if args else tp
    if value is None:
        return (None, None) if optional else (None, f"must be a {type_name(base)}, not null")
    if base is bool:
        if isinstance(value, bool):
            return value, None
        return None, f"must be true or false, got {value!r}"
    if base is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            else:
                return None, f"must be an integer, got {value!r}"
    elif base is float:
        if isinstance(value, str):
            # YAML 1.1 reads 1e-4 as a string; accept numbers written that way.
            try:
                value = float(value)
            except ValueError:
                return None, f"must be a number, got {value!r}"
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return None, f"must be a number, got {value!r}"
        value = float(value)
        if not math.isfinite(value):
            return None, f"must be finite, got {value!r}"
    elif base is str:
        if not isinstance(value, str):
            return None, f"must be a string, got {value!r}"
        choices = meta.get("choices")
        if choices and value not in choices:
            return None, f"{value!r} is not one of {', '.join(choices)}"
    lo, hi = meta.get("min"), meta.get("max")
    if lo is not None and (value < lo or (meta.get("min_exclusive") and value == lo)):
        word = "greater than" if meta.get("min_exclusive") else "at least"
        if lo == hi:
            return None, f"must be {_fmt(lo)}, got {value!r}"
        return None, f"must be {word} {_fmt(lo)}, got {value!r}"
    if hi is not None and value > hi:
        if lo == hi:
            return None, f"must be {_fmt(hi)}, got {value!r}"
        return None, f"must be at most {_fmt(hi)}, got {value!r}"
    return value, None


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)
