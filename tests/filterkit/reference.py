"""The reference for the filter tests: SQL's three-valued logic, LIKE, and the results' order, in plain Python.

:func:`evaluate` evaluates a generated tree (the ``E*`` classes, built by :mod:`tests.filterkit.strategies`)
on a row: True, False or None for unknown; a row is selected when the expression is True.
:func:`evaluate_parsed` does the same for the tree farm's parser built, for expressions with no generator
tree.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from farm.store import filter_ast as fa
from farm.store.db import Database
from farm.store.results import ResultsQuery, query_results

# -- evaluation in Python: SQL's three-valued logic ---------------------------------------------------------

OPERATORS: dict[str, Callable[[Any, Any], bool]] = {
    "=": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}


def sql_not(x: bool | None) -> bool | None:
    return None if x is None else not x


def sql_and(xs: Sequence[bool | None]) -> bool | None:
    if any(x is False for x in xs):
        return False
    return None if any(x is None for x in xs) else True


def sql_or(xs: Sequence[bool | None]) -> bool | None:
    if any(x is True for x in xs):
        return True
    return None if any(x is None for x in xs) else False


def sql_compare(op: str, a: Any, b: Any) -> bool | None:
    return None if a is None or b is None else OPERATORS[op](a, b)


def ascii_fold(s: str) -> str:
    return "".join(chr(ord(c) + 32) if "A" <= c <= "Z" else c for c in s)


def like_match(value: str | None, pattern: str, ignore_case: bool) -> bool | None:
    """SQL LIKE as the grammar defines it: % any run, _ one character, backslash escapes; case-sensitive."""
    if value is None:
        return None
    regex, i = [], 0
    while i < len(pattern):
        c = pattern[i]
        if c == "\\":
            regex.append(re.escape(pattern[i + 1]))
            i += 2
            continue
        regex.append(".*" if c == "%" else "." if c == "_" else re.escape(c))
        i += 1
    if ignore_case:
        return re.fullmatch(ascii_fold("".join(regex)), ascii_fold(value), re.DOTALL) is not None
    return re.fullmatch("".join(regex), value, re.DOTALL) is not None


@dataclass(frozen=True)
class ECmp:
    column: str
    op: str
    value: Any  # a literal, or EColumn


@dataclass(frozen=True)
class EColumn:
    name: str


@dataclass(frozen=True)
class ELike:
    column: str
    pattern: str
    ignore_case: bool
    negated: bool


@dataclass(frozen=True)
class EIn:
    column: str
    values: tuple[Any, ...]
    negated: bool


@dataclass(frozen=True)
class ENull:
    column: str
    negated: bool


@dataclass(frozen=True)
class ETruth:
    column: str


@dataclass(frozen=True)
class ENot:
    operand: Any


@dataclass(frozen=True)
class EAnd:
    operands: tuple[Any, ...]


@dataclass(frozen=True)
class EOr:
    operands: tuple[Any, ...]


@dataclass(frozen=True)
class EInvalid:
    """A leaf the grammar must reject (whatever surrounds it)."""

    text: str


def evaluate(node: Any, row: dict[str, Any]) -> bool | None:
    """A generated tree's value on ``row``: True, False or None (unknown)."""
    if isinstance(node, ECmp):
        right = row[node.value.name] if isinstance(node.value, EColumn) else node.value
        return sql_compare(node.op, row[node.column], right)
    if isinstance(node, ELike):
        result = like_match(row[node.column], node.pattern, node.ignore_case)
        return sql_not(result) if node.negated else result
    if isinstance(node, EIn):
        value = row[node.column]
        result = None if value is None else any(value == v for v in node.values)
        return sql_not(result) if node.negated else result
    if isinstance(node, ENull):
        return (row[node.column] is not None) if node.negated else (row[node.column] is None)
    if isinstance(node, ETruth):
        return row[node.column]
    if isinstance(node, ENot):
        return sql_not(evaluate(node.operand, row))
    if isinstance(node, EAnd):
        return sql_and([evaluate(o, row) for o in node.operands])
    if isinstance(node, EOr):
        return sql_or([evaluate(o, row) for o in node.operands])
    raise TypeError(node)


def is_valid(node: Any) -> bool:
    if isinstance(node, EInvalid):
        return False
    if isinstance(node, ENot):
        return is_valid(node.operand)
    if isinstance(node, EAnd | EOr):
        return all(is_valid(o) for o in node.operands)
    return True


def evaluate_parsed(node: fa.Predicate, row: dict[str, Any]) -> bool | None:
    """The value of farm's own checked tree on ``row`` (three-valued), for expressions with no generator tree."""
    if isinstance(node, fa.Compare):
        right = row[node.value.name] if isinstance(node.value, fa.ColumnRef) else node.value
        return sql_compare(node.op, row[node.column], right)
    if isinstance(node, fa.Like):
        return like_match(row[node.column], node.pattern, node.ignore_case)
    if isinstance(node, fa.InList):
        value = row[node.column]
        return None if value is None else any(value == v for v in node.values)
    if isinstance(node, fa.IsNull):
        return row[node.column] is None
    if isinstance(node, fa.IsTrue):
        return row[node.column]
    if isinstance(node, fa.Not):
        return sql_not(evaluate_parsed(node.operand, row))
    if isinstance(node, fa.And):
        return sql_and([evaluate_parsed(o, row) for o in node.operands])
    if isinstance(node, fa.Or):
        return sql_or([evaluate_parsed(o, row) for o in node.operands])
    raise TypeError(node)


def sort_rows(rows: list[dict[str, Any]], keys: Sequence[tuple[str, bool]]) -> list[dict[str, Any]]:
    """Sorted as results are: by ``(column, descending)`` keys, then sweep_id, job_id, batch_size; NULLs last."""
    named = {c for c, _ in keys}
    order = [*keys, *((c, False) for c in ("sweep_id", "job_id", "batch_size") if c not in named)]
    out = list(rows)
    for column, descending in reversed(order):  # stable sorts, least significant key first
        present = sorted((r for r in out if r[column] is not None), key=lambda r: r[column], reverse=descending)
        out = present + [r for r in out if r[column] is None]
    return out


def row_key(row: dict[str, Any]) -> tuple[Any, ...]:
    return (row["sweep_id"], row["job_id"], row["batch_size"])


def select_keys(db: Database, where: str, order_by: list[str] | None = None, limit: int | None = None) -> list[tuple]:
    """(sweep_id, job_id, batch_size) of the rows farm's query selects, in its order (messages name ``where``)."""
    query = ResultsQuery.parse(where=where, order_by=order_by, columns=["sweep_id", "job_id", "batch_size"],
                               limit=limit)  # fmt: skip
    with db.session() as s:
        return [row_key(r) for r in query_results(s, query)]


def reference_keys(
    rows: list[dict[str, Any]], keep: Callable[[dict[str, Any]], bool | None], order: Sequence[tuple[str, bool]],
    limit: int | None,
) -> list[tuple]:  # fmt: skip
    """The same for the reference: the rows where ``keep`` is True, sorted, cut at ``limit``."""
    return [row_key(r) for r in sort_rows([r for r in rows if keep(r) is True], order)][:limit]
