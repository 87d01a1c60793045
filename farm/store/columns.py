"""The columns of the view ``results_flat``: their names, their kinds, and the Core table that queries use.

The one place that says what each column holds. The filter grammar checks names and types against
:data:`COLUMN_KINDS`; queries select from :data:`RESULTS_FLAT`, whose typed columns make SQLAlchemy return
the same Python types from SQLite and PostgreSQL (``bool`` for ``simulated``, ``datetime`` for
``finished_at``). Identifiers in generated SQL come only from here, never from user input.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Sequence
from typing import Any, Literal

from sqlalchemy import JSON, BigInteger, Boolean, DateTime, Float, String, column, table
from sqlalchemy.types import TypeEngine

from farm.errors import ConfigError
from farm.quant.config import METHODS

Kind = Literal["int", "float", "bool", "text", "datetime", "json"]

#: Every column of results_flat, in the view's order, with its kind.
COLUMN_KINDS: dict[str, Kind] = {
    "sweep_id": "int",
    "sweep_name": "text",
    "job_id": "int",
    "job_key": "text",
    "model": "text",
    "dataset": "text",
    "method": "text",
    "recipe": "text",
    "bits": "int",
    "calibration_size": "int",
    "backend": "text",
    "observer": "text",
    "granularity": "text",
    "device": "text",
    "runtime": "text",
    "split": "text",
    "batch_size": "int",
    "state": "text",
    "health": "text",
    "accuracy": "float",
    "accuracy_fp32": "float",
    "accuracy_drop": "float",
    "agreement": "float",
    "sqnr_db": "float",
    "cosine": "float",
    "metric_name": "text",
    "metric_value": "float",
    "size_bytes": "int",
    "size_ratio": "float",
    "latency_p50_ms": "float",
    "latency_p50_ci_low_ms": "float",
    "latency_p50_ci_high_ms": "float",
    "latency_p90_ms": "float",
    "latency_p99_ms": "float",
    "throughput": "float",
    "speedup": "float",
    "speedup_ci_low": "float",
    "speedup_ci_high": "float",
    "speedup_vs_best_fp32": "float",
    "coverage": "float",
    "simulated": "bool",
    "isolation": "text",
    "runtime_version": "text",
    "execution_provider": "text",
    "artifact_uri": "text",
    "worker": "text",
    "hardware": "text",
    "duration_s": "float",
    "finished_at": "datetime",
    "error": "text",
    "params": "json",
}

#: The view's columns in order.
RESULT_COLUMNS: tuple[str, ...] = tuple(COLUMN_KINDS)

#: How error messages name each kind.
KIND_NAMES: dict[Kind, str] = {
    "int": "an integer",
    "float": "a number",
    "bool": "true/false",
    "text": "text",
    "datetime": "a date-time",
    "json": "a JSON object (filter on its fields: params.epochs)",
}

_SQL_TYPES: dict[Kind, TypeEngine[Any]] = {
    "int": BigInteger(),
    "float": Float(),
    "bool": Boolean(),
    "text": String(),
    "datetime": DateTime(timezone=True),
    "json": JSON(),
}

#: results_flat as a Core table with typed columns (a view: SQLAlchemy never creates or alters it).
RESULTS_FLAT = table("results_flat", *(column(name, _SQL_TYPES[kind]) for name, kind in COLUMN_KINDS.items()))


#: ``params.<name>`` in a filter reads one field of the ``params`` column (the job's method config).
PARAMS_PREFIX = "params."
#: The fields the ``params`` JSON may hold: every method's parameters, plus the config's own keys.
PARAM_NAMES: tuple[str, ...] = tuple(
    sorted({"method", "version"} | {f.name for cls in METHODS.values() for f in dataclasses.fields(cls)})
)


def is_param_path(column: str) -> bool:
    """Whether ``column`` (as a filter resolved it) names a field of ``params`` rather than a column."""
    return column.startswith(PARAMS_PREFIX)


def resolve_param_path(name: str, *, source: str, where: str = "") -> str:
    """``params.<field>`` as the filter grammar spells it, checked against the methods' parameters.

    Args:
        name: what the user wrote, e.g. ``params.epochs`` (case-insensitive).
        source: the option it came from, for the message.
        where: text appended after the name in the message.

    Returns:
        ``params.`` and the field's name, lower-cased.

    Raises:
        ConfigError: no method has such a parameter (with the closest name and the list).
    """
    field = name[len(PARAMS_PREFIX) :].lower()
    if field in PARAM_NAMES:
        return PARAMS_PREFIX + field
    close = difflib.get_close_matches(field, PARAM_NAMES, n=1, cutoff=0.6)
    hint = f"; did you mean 'params.{close[0]}'?" if close else ""
    message = f"unknown method parameter {name!r}{where}{hint} (parameters: {', '.join(PARAM_NAMES)})"
    raise ConfigError(message, source=source)


def is_numeric(kind: Kind) -> bool:
    """Whether columns of ``kind`` hold numbers (integers and floats compare with each other).

    Args:
        kind: a column kind.

    Returns:
        True for ``int`` and ``float``.
    """
    return kind in ("int", "float")


def resolve_column(name: str, *, source: str, where: str = "") -> str:
    """The view's column called ``name`` (case-insensitive).

    Args:
        name: what the user wrote.
        source: the option or argument it came from, for the message (``--where``, ``order_by``, ...).
        where: text appended after the name in the message, e.g. `` at position 7``.

    Returns:
        The column's name as the view spells it.

    Raises:
        ConfigError: no such column; the message suggests the closest name and lists them all.
    """
    lowered = name.lower()
    if lowered in COLUMN_KINDS:
        return lowered
    close = difflib.get_close_matches(lowered, RESULT_COLUMNS, n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    message = f"unknown column {name!r}{where}{hint} (columns: {', '.join(RESULT_COLUMNS)})"
    raise ConfigError(message, source=source)


def parse_columns(value: str | Sequence[str] | None, *, source: str = "--columns") -> tuple[str, ...]:
    """Validate a column selection: ``"a,b"`` or ``["a", "b"]``; None means every column, in the view's order.

    Names are case-insensitive and stripped; empty pieces (a trailing comma) are ignored.

    Args:
        value: the selection.
        source: the option or argument it came from, for messages.

    Returns:
        The columns, as the view spells them, in the order given.

    Raises:
        ConfigError: an unknown column, a column listed twice, an empty selection, or a value that is not text.
    """
    if value is None:
        return RESULT_COLUMNS
    if isinstance(value, str):
        pieces = value.split(",")
    elif isinstance(value, Sequence) and all(isinstance(p, str) for p in value):
        pieces = list(value)
    else:
        raise ConfigError(f"expected column names (a list of str or 'a,b'), got {value!r}", source=source)
    names = [p.strip() for p in pieces if p.strip()]
    if not names:
        raise ConfigError("no columns given", source=source)
    resolved: list[str] = []
    for name in names:
        col = resolve_column(name, source=source)
        if col in resolved:
            raise ConfigError(f"column {col!r} is listed twice", source=source)
        resolved.append(col)
    return tuple(resolved)
