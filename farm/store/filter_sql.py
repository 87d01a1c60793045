"""A checked ``--where`` tree as a SQLAlchemy Core condition over :data:`~farm.store.columns.RESULTS_FLAT`.

Values become bind parameters typed after the value (never the column: a float compared with an integer
column must stay a float), identifiers come from the fixed column map, and the SQL means the same on SQLite
and PostgreSQL:

- Text ordering (``<``, ``>=``, ORDER BY) is by code point: SQLite's default BINARY collation, and
  ``COLLATE "C"`` on PostgreSQL, whose default collation follows the server's locale.
- ``LIKE`` is case-sensitive with ``\\`` as its escape character. SQLite's LIKE ignores ASCII case (and has
  no default escape), so there it becomes GLOB, SQLite's case-sensitive matcher, with the pattern
  translated. ``ILIKE`` folds ASCII letters only, on both: character classes ``[aA]`` in the GLOB pattern on
  SQLite, ``translate(column, 'A..Z', 'a..z')`` against a folded pattern elsewhere (PostgreSQL's own ILIKE
  folds by locale).
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, Boolean, DateTime, Float, String, and_, case, cast, func, literal, not_, or_
from sqlalchemy.sql.elements import ColumnElement

from farm.store.columns import COLUMN_KINDS, PARAMS_PREFIX, RESULTS_FLAT, is_param_path
from farm.store.filter_ast import (
    And,
    ColumnRef,
    Compare,
    InList,
    IsNull,
    IsTrue,
    Like,
    Not,
    Or,
    Predicate,
    Value,
    fold_ascii,
    like_parts,
)

_OPERATORS: dict[str, Callable[[Any, Any], ColumnElement[bool]]] = {
    "=": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}
_ORDERING = ("<", "<=", ">", ">=")
_UPPER = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
_LOWER = "abcdefghijklmnopqrstuvwxyz"
# The escape character of the LIKE patterns sent to PostgreSQL (not the user's backslash: rendering '\' as a
# SQL literal depends on standard_conforming_strings).
_LIKE_ESCAPE = "/"


def where_clause(predicate: Predicate, *, dialect: str) -> ColumnElement[bool]:
    """The SQL condition for a checked filter tree.

    Args:
        predicate: from :func:`farm.store.filters.parse_where`.
        dialect: the database's SQLAlchemy dialect name (``sqlite``, ``postgresql``).

    Returns:
        A boolean Core expression over RESULTS_FLAT; every value in it is a bind parameter.
    """
    if isinstance(predicate, Compare):
        return _compare(predicate, dialect)
    if isinstance(predicate, Like):
        return _like(predicate, dialect)
    if isinstance(predicate, InList):
        if is_param_path(predicate.column):
            return or_(*(_param_field(predicate.column, v, dialect) == _bind(v) for v in predicate.values))
        return RESULTS_FLAT.c[predicate.column].in_([_bind(v) for v in predicate.values])
    if isinstance(predicate, IsNull):
        if is_param_path(predicate.column):
            json_type = _json_type(predicate.column, dialect)
            return or_(json_type.is_(None), json_type == literal("null", String()))
        return RESULTS_FLAT.c[predicate.column].is_(None)
    if isinstance(predicate, IsTrue):
        return RESULTS_FLAT.c[predicate.column] == _bind(True)
    if isinstance(predicate, Not):
        return not_(where_clause(predicate.operand, dialect=dialect))
    if isinstance(predicate, And):
        return and_(*(where_clause(p, dialect=dialect) for p in predicate.operands))
    if isinstance(predicate, Or):
        return or_(*(where_clause(p, dialect=dialect) for p in predicate.operands))
    raise TypeError(f"not a filter node: {predicate!r}")


def sort_expression(column: str, *, dialect: str) -> ColumnElement[Any]:
    """The column as ORDER BY should use it: text in code-point order on every backend.

    Args:
        column: a column of results_flat.
        dialect: the database's SQLAlchemy dialect name.

    Returns:
        The column, with ``COLLATE "C"`` for text on PostgreSQL.
    """
    col = RESULTS_FLAT.c[column]
    return _bytewise(col, dialect) if COLUMN_KINDS[column] == "text" else col


def order_clauses(keys: Sequence[tuple[str, bool]], *, dialect: str) -> list[ColumnElement[Any]]:
    """ORDER BY terms for ``(column, descending)`` keys, NULLs last whatever the direction (as pandas sorts).

    Args:
        keys: the sort keys, most significant first.
        dialect: the database's SQLAlchemy dialect name.

    Returns:
        One term per key with an explicit NULLS LAST (PostgreSQL, SQLite >= 3.30): PostgreSQL then sorts by
        walking an index declared in that order (migration 0003) instead of sorting every row.
    """
    terms: list[ColumnElement[Any]] = []
    for column, descending in keys:
        expr = sort_expression(column, dialect=dialect)
        terms.append((expr.desc() if descending else expr.asc()).nulls_last())
    return terms


def _bind(value: Value) -> ColumnElement[Any]:
    if isinstance(value, bool):
        return literal(value, Boolean())
    if isinstance(value, int):
        return literal(value, BigInteger())
    if isinstance(value, float):
        return literal(value, Float())
    if isinstance(value, datetime):
        return literal(value, DateTime(timezone=True))
    return literal(value, String())


def _bytewise(expr: ColumnElement[Any], dialect: str) -> ColumnElement[Any]:
    return expr.collate("C") if dialect == "postgresql" else expr


def _compare(node: Compare, dialect: str) -> ColumnElement[bool]:
    if is_param_path(node.column) and not isinstance(node.value, ColumnRef):
        field = _param_field(node.column, node.value, dialect)
        if node.op in _ORDERING and isinstance(node.value, str):
            field = _bytewise(field, dialect)
        return _OPERATORS[node.op](field, _bind(node.value))
    left: ColumnElement[Any] = RESULTS_FLAT.c[node.column]
    right = RESULTS_FLAT.c[node.value.name] if isinstance(node.value, ColumnRef) else _bind(node.value)
    if node.op in _ORDERING and COLUMN_KINDS[node.column] == "text":
        left = _bytewise(left, dialect)
    return _OPERATORS[node.op](left, right)


# JSON types per dialect that a value of each Python type matches: a params field equals 3 only when it holds the
# number 3 (never the string "3"), so the comparison means the same on SQLite and PostgreSQL.
_JSON_TYPES: dict[str, dict[str, tuple[str, ...]]] = {
    "sqlite": {"number": ("integer", "real"), "text": ("text",), "bool": ("true", "false")},
    "postgresql": {"number": ("number",), "text": ("string",), "bool": ("boolean",)},
}


def _json_type(column: str, dialect: str) -> ColumnElement[Any]:
    """The JSON type name of a params field (NULL when the field is absent)."""
    params = RESULTS_FLAT.c.params
    name = column[len(PARAMS_PREFIX) :]
    if dialect == "sqlite":
        return func.json_type(params, literal(f"$.{name}", String()))
    return func.json_typeof(params.op("->")(literal(name, String())))


def _param_field(column: str, value: Value, dialect: str) -> ColumnElement[Any]:
    """A params field as a value of ``value``'s type, NULL when the field holds another JSON type."""
    kind = "bool" if isinstance(value, bool) else "number" if isinstance(value, int | float) else "text"
    params = RESULTS_FLAT.c.params
    name = column[len(PARAMS_PREFIX) :]
    raw: ColumnElement[Any]
    if dialect == "sqlite":
        raw = func.json_extract(params, literal(f"$.{name}", String()))
    else:
        text = params.op("->>", return_type=String())(literal(name, String()))
        raw = cast(text, Boolean()) if kind == "bool" else cast(text, Float()) if kind == "number" else text
    types = [literal(t, String()) for t in _JSON_TYPES.get(dialect, _JSON_TYPES["postgresql"])[kind]]
    return case((_json_type(column, dialect).in_(types), raw), else_=None)


def _like(node: Like, dialect: str) -> ColumnElement[bool]:
    parts = like_parts(node.pattern)
    if parts is None:  # the parser rejects such patterns
        raise ValueError(f"malformed LIKE pattern {node.pattern!r}")
    col = _param_field(node.column, "", dialect) if is_param_path(node.column) else RESULTS_FLAT.c[node.column]
    if dialect == "sqlite":
        glob = "".join(_glob_part(p, node.ignore_case) for p in parts)
        return col.op("GLOB", is_comparison=True)(literal(glob, String()))
    target = func.translate(col, _UPPER, _LOWER) if node.ignore_case else col
    pattern = "".join(_like_part(p, node.ignore_case) for p in parts)
    return target.like(literal(pattern, String()), escape=_LIKE_ESCAPE)


def _glob_part(part: str, ignore_case: bool) -> str:
    if part == "%":
        return "*"
    if part == "_":
        return "?"
    ch = part[-1]  # a literal character, escaped ("\x") or not
    if ch in "*?[":
        return f"[{ch}]"
    if ignore_case and ch.isascii() and ch.isalpha():
        return f"[{ch.lower()}{ch.upper()}]"
    return ch


def _like_part(part: str, ignore_case: bool) -> str:
    if part in ("%", "_"):
        return part
    ch = fold_ascii(part[-1]) if ignore_case else part[-1]
    return _LIKE_ESCAPE + ch if ch in ("%", "_", _LIKE_ESCAPE) else ch
