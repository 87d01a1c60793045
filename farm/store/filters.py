"""The analysts' query language over ``results_flat``: ``--where``, ``--order-by`` and ``--columns``.

Pure parsing and SQLAlchemy Core expression building, no I/O. The grammar, the types and the NULL rules are
in docs/query.md. The pieces:

- :mod:`farm.store.filter_lexer`: tokens;
- :mod:`farm.store.filter_parser`: the recursive-descent parser and its type checks;
- :mod:`farm.store.filter_ast`: the checked tree and literal conversions;
- :mod:`farm.store.filter_sql`: the tree as SQL that SQLite and PostgreSQL evaluate alike;
- :mod:`farm.store.columns`: the view's columns and their kinds.

Example::

    pred = parse_where("method = 'static' AND accuracy_drop < 0.01 AND bits IN (8, 4)")
    stmt = select(RESULTS_FLAT).where(where_clause(pred, dialect="sqlite"))
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from farm.errors import ConfigError
from farm.store.columns import COLUMN_KINDS, RESULT_COLUMNS, RESULTS_FLAT, parse_columns, resolve_column
from farm.store.filter_ast import Predicate
from farm.store.filter_parser import parse_expression
from farm.store.filter_sql import order_clauses, where_clause

__all__ = [
    "RESULTS_FLAT",
    "RESULT_COLUMNS",
    "OrderKey",
    "Predicate",
    "order_clauses",
    "parse_columns",
    "parse_order_by",
    "parse_where",
    "where_clause",
]


@dataclass(frozen=True)
class OrderKey:
    """One sort key: a column of the view, ascending unless ``descending``."""

    column: str
    descending: bool = False


def parse_where(text: str | None, *, source: str = "--where") -> Predicate | None:
    """Parse and type-check a filter expression.

    Args:
        text: e.g. ``"method = 'static' AND accuracy_drop < 0.01"``; None, empty or blank means no filter.
        source: the option or argument it came from, printed before each message (``--where``, ``where``).

    Returns:
        The checked tree, or None for no filter.

    Raises:
        ConfigError: one line naming the problem and its position: a syntax error, unbalanced parentheses,
            an unknown column (with the closest name and the list of columns), a type mismatch
            (``accuracy > 'abc'``), or an expression past the size limits.
    """
    if text is None:
        return None
    if not isinstance(text, str):
        raise ConfigError(f"expected a filter expression (str), got {type(text).__name__}", source=source)
    if not text.strip():
        return None
    return parse_expression(text, source=source)


def parse_order_by(items: str | Sequence[str] | None, *, source: str = "--order-by") -> tuple[OrderKey, ...]:
    """Parse sort keys: ``["latency_p50_ms asc", "accuracy desc"]``; each item may also hold several keys
    separated by commas (``"model, accuracy desc"``). Column names and directions are case-insensitive.

    Args:
        items: the keys, most significant first; None or empty for none.
        source: the option or argument they came from, for messages.

    Returns:
        The keys.

    Raises:
        ConfigError: an unknown column, a direction other than asc/desc, a column given twice, or a value that
            is not text.
    """
    if items is None:
        return ()
    if isinstance(items, str):
        items = [items]
    elif not (isinstance(items, Sequence) and all(isinstance(i, str) for i in items)):
        raise ConfigError(f"expected 'column [asc|desc]' strings, got {items!r}", source=source)
    keys: list[OrderKey] = []
    for item in items:
        for piece in item.split(","):
            words = piece.split()
            if not words:
                continue
            if len(words) > 2 or (len(words) == 2 and words[1].lower() not in ("asc", "desc")):
                raise ConfigError(f"{piece.strip()!r}: expected 'column', 'column asc' or 'column desc'", source=source)
            column = resolve_column(words[0], source=source)
            if COLUMN_KINDS[column] == "json":
                raise ConfigError(f"{column} is a JSON object and has no order: sort by another column", source=source)
            if any(k.column == column for k in keys):
                raise ConfigError(f"column {column!r} is listed twice", source=source)
            keys.append(OrderKey(column, descending=len(words) == 2 and words[1].lower() == "desc"))
    return tuple(keys)
