"""The checked syntax tree of a ``--where`` expression, and how literals become typed values.

A tree built by :mod:`farm.store.filter_parser` is already type-checked: every column name is one of the
view's, every value has the Python type of its column's kind (``int``/``float`` for numbers, ``str``,
``bool``, a UTC ``datetime``), and the column is always on the left. ``NOT x LIKE p``, ``x NOT IN (...)``
and ``x IS NOT NULL`` are :class:`Not` around the positive form.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timezone

from farm.store.filter_lexer import NUMBER

Value = int | float | str | bool | datetime

#: Integers outside this range are compared as floats (databases store 64-bit integers).
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


@dataclass(frozen=True)
class ColumnRef:
    """A column on the right-hand side of a column-to-column comparison."""

    name: str


@dataclass(frozen=True)
class Compare:
    """``column op value``; ``op`` is one of ``= != < <= > >=``."""

    column: str
    op: str
    value: Value | ColumnRef


@dataclass(frozen=True)
class Like:
    """``column LIKE pattern`` (``ignore_case``: ILIKE, ASCII letters only). Backslash escapes ``%``/``_``."""

    column: str
    pattern: str
    ignore_case: bool = False


@dataclass(frozen=True)
class InList:
    """``column IN (values...)``: at least one value, all of the column's kind, none NULL."""

    column: str
    values: tuple[Value, ...]


@dataclass(frozen=True)
class IsNull:
    """``column IS NULL``."""

    column: str


@dataclass(frozen=True)
class IsTrue:
    """A bare boolean column used as a condition (``simulated``): true, false or NULL as the column is."""

    column: str


@dataclass(frozen=True)
class Not:
    """``NOT operand``."""

    operand: Predicate


@dataclass(frozen=True)
class And:
    """``a AND b AND ...`` (two or more operands)."""

    operands: tuple[Predicate, ...]


@dataclass(frozen=True)
class Or:
    """``a OR b OR ...`` (two or more operands)."""

    operands: tuple[Predicate, ...]


Predicate = Compare | Like | InList | IsNull | IsTrue | Not | And | Or


def number_value(text: str) -> int | float | None:
    """The number ``text`` spells in the grammar's number syntax.

    Integers (no ``.`` and no exponent) stay ``int`` unless they do not fit 64 bits, then become ``float``
    like any decimal. A float that overflows (``1e999``) is not a number here.

    Args:
        text: a number token, or the content of a quoted string compared with a numeric column.

    Returns:
        The number, or None when ``text`` is not one.
    """
    if not NUMBER.fullmatch(text):
        return None
    if not any(c in text for c in ".eE"):
        value = int(text)
        if INT64_MIN <= value <= INT64_MAX:
            return value
    number = float(text)
    return number if math.isfinite(number) else None


def datetime_value(text: str) -> datetime | None:
    """The UTC date-time an ISO 8601 string names.

    ``2026-01-31`` is midnight UTC; a time without an offset is UTC; ``Z`` and offsets are honoured and the
    result converted to UTC.

    Args:
        text: the content of a quoted string.

    Returns:
        An aware datetime in UTC, or None when ``text`` is no ISO date-time.
    """
    t = text.strip()
    if t[-1:] in ("Z", "z"):
        t = t[:-1] + "+00:00"
    try:
        value = datetime.fromisoformat(t)
    except ValueError:
        return None
    try:
        if value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc)
    except OverflowError:
        return None


def like_parts(pattern: str) -> list[str] | None:
    """Split a LIKE pattern into its pieces.

    Args:
        pattern: the pattern as written (a backslash escapes the character after it).

    Returns:
        ``"%"`` and ``"_"`` for the wildcards, ``"\\x"`` for an escaped character and ``"x"`` for a plain one;
        None when the pattern ends with a lone backslash.
    """
    parts: list[str] = []
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "\\":
            if i + 1 == len(pattern):
                return None
            parts.append("\\" + pattern[i + 1])
            i += 2
            continue
        parts.append(ch)
        i += 1
    return parts


def fold_ascii(text: str) -> str:
    """ILIKE's case folding: ``text`` with ASCII letters lower-cased and every other character kept.

    Args:
        text: any text.

    Returns:
        The folded text.
    """
    return text.translate(_ASCII_LOWER)


_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")
