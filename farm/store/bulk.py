"""Bulk statements that stay fast at 10,000 rows on PostgreSQL as on SQLite.

SQLAlchemy's portable forms (``IN (...)`` with one bound parameter per value, ``insertmanyvalues`` with one
per cell) cost little on SQLite, but on PostgreSQL psycopg parses every such statement on the client (it
caches only short ones): persisting a 10,000-job sweep spent more than 3 s of its time there. On
PostgreSQL the same statements take whole columns as arrays instead: ``col = ANY(:values)`` and
``INSERT ... SELECT * FROM unnest(:col1, :col2, ...)``, a handful of parameters whatever the row count.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from datetime import date, datetime
from typing import Any

from sqlalchemy import ARRAY, JSON, Column, ColumnElement, Table, any_, bindparam, text
from sqlalchemy.orm import Session

#: Rows per statement on the portable path (SQLite's limit on bound parameters is 32,766).
PORTABLE_CHUNK = 500


def is_postgresql(session: Session) -> bool:
    return session.get_bind().dialect.name == "postgresql"


def in_values(session: Session, column: Any, values: Sequence[Any]) -> Iterable[ColumnElement[bool]]:
    """``column IN values`` as conditions to run one statement each: one ``= ANY(array)`` on PostgreSQL,
    chunks of ``IN (...)`` elsewhere."""
    if not values:
        return
    if is_postgresql(session):
        yield column == any_(bindparam(None, list(values), type_=ARRAY(column.type)))
        return
    for i in range(0, len(values), PORTABLE_CHUNK):
        yield column.in_(values[i : i + PORTABLE_CHUNK])


def insert_rows(
    session: Session, table: Table, rows: Sequence[Mapping[str, Any]], returning: Sequence[str] = ()
) -> list[tuple[Any, ...]]:
    """INSERT ``rows`` (dicts with the same keys) into ``table``; the ``returning`` columns of each row inserted,
    in no guaranteed order (match them by a unique column).

    Columns the rows leave out get the table's defaults on the portable path only: give every column that
    has a Python-side default a value.
    """
    if not rows:
        return []
    names = list(rows[0])
    if not is_postgresql(session):
        from sqlalchemy import insert

        stmt = insert(table)
        if returning:
            stmt = stmt.returning(*(table.c[n] for n in returning))  # type: ignore[assignment]
        out: list[tuple[Any, ...]] = []
        for i in range(0, len(rows), PORTABLE_CHUNK * 4):
            result = session.connection().execute(stmt, list(rows[i : i + PORTABLE_CHUNK * 4]))
            if returning:
                out.extend(tuple(r) for r in result)
        return out
    dialect = session.get_bind().dialect
    columns: list[Column[Any]] = [table.c[n] for n in names]
    # The rows travel as ONE JSON document that the server unpacks (json_to_recordset): a single parameter, so
    # psycopg neither parses thousands of placeholders nor escapes thousands of array elements.
    quote = dialect.identifier_preparer.quote
    record = ", ".join(f"{quote(col.name)} {_pg_type(col, dialect)}" for col in columns)
    listed = ", ".join(quote(n) for n in names)
    sql = (
        f"INSERT INTO {quote(table.name)} ({listed}) SELECT {listed} "
        f"FROM json_to_recordset(CAST(:rows AS json)) AS r({record})"
    )
    if returning:
        sql += f" RETURNING {', '.join(quote(n) for n in returning)}"
    doc = json.dumps([{n: row[n] for n in names} for row in rows], default=_json_default, allow_nan=False)
    result = session.connection().execute(text(sql), {"rows": doc})
    return [tuple(r) for r in result] if returning else []


def _pg_type(column: Column[Any], dialect: Any) -> str:
    if isinstance(column.type, JSON):
        return "json"
    return str(column.type.compile(dialect=dialect))


def _json_default(value: Any) -> Any:
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")
