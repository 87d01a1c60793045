"""The columns of the view ``results_flat``: their names, their kinds, and the Core table that queries use.

The one place that says what each column holds. The filter grammar checks names and types against
:data:`COLUMN_KINDS`; queries select from :data:`RESULTS_FLAT`, whose typed columns make SQLAlchemy return
the same Python types from SQLite and PostgreSQL (``bool`` for ``simulated``, ``datetime`` for
``finished_at``). Identifiers in generated SQL come only from here, never from user input.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from typing import Any, Literal

from sqlalchemy import BigInteger, Boolean, DateTime, Float, String, column, table
from sqlalchemy.types import TypeEngine

from farm.errors import ConfigError

Kind = Literal["int", "float", "bool", "text", "datetime"]

#: Every column of results_flat, in the view's order, with its kind.
COLUMN_KINDS: dict[str, Kind] = {
    "sweep_id": "int",
    "sweep_name": "text",
    "job_id": "int",
    "job_key": "text",
    "model": "text",
    "dataset": "text",
    "method": "text",
    "bits": "int",
    "calibration_size": "int",
    "backend": "text",
    "observer": "text",
    "granularity": "text",
    "device": "text",
    "batch_size": "int",
    "state": "text",
    "accuracy": "float",
    "accuracy_fp32": "float",
    "accuracy_drop": "float",
    "agreement": "float",
    "sqnr_db": "float",
    "size_bytes": "int",
    "size_ratio": "float",
    "latency_p50_ms": "float",
    "latency_p90_ms": "float",
    "latency_p99_ms": "float",
    "throughput": "float",
    "speedup": "float",
    "coverage": "float",
    "simulated": "bool",
    "artifact_uri": "text",
    "worker": "text",
    "hardware": "text",
    "duration_s": "float",
    "finished_at": "datetime",
    "error": "text",
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
}

_SQL_TYPES: dict[Kind, TypeEngine[Any]] = {
    "int": BigInteger(),
    "float": Float(),
    "bool": Boolean(),
    "text": String(),
    "datetime": DateTime(timezone=True),
}

#: results_flat as a Core table with typed columns (a view: SQLAlchemy never creates or alters it).
RESULTS_FLAT = table("results_flat", *(column(name, _SQL_TYPES[kind]) for name, kind in COLUMN_KINDS.items()))


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
