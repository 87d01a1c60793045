"""Reading the results view ``results_flat`` (the analysts' interface).

:class:`ResultsQuery` holds a validated query (sweeps, filter, order, columns, limit) and is built before any
database is opened, so bad input fails first; :func:`query_results` runs it. Rows come back with the same
Python types from SQLite and PostgreSQL: ``bool`` for ``simulated``, a UTC ``datetime`` for ``finished_at``.
:func:`query`, :func:`sweep_rows` and :func:`method_configs` are what the commands call: each opens a read-only
transaction of its own and returns plain rows.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from numbers import Integral
from typing import Any

from sqlalchemy import Select, select, text
from sqlalchemy.orm import Session

from farm.errors import ConfigError, NotFound
from farm.store import bulk
from farm.store.columns import RESULT_COLUMNS, RESULTS_FLAT, parse_columns
from farm.store.db import Database
from farm.store.filter_ast import Predicate
from farm.store.filter_sql import order_clauses, sort_expression, where_clause
from farm.store.filters import OrderKey, parse_order_by, parse_where
from farm.store.models import Job, Sweep

#: Rows come in this order after any requested keys (which it also breaks ties for): stable output.
DEFAULT_ORDER = (OrderKey("sweep_id"), OrderKey("job_id"), OrderKey("batch_size"))
#: Most sweep ids one query takes.
MAX_SWEEPS = 500

# What each argument is called in messages: the CLI's options, or farm.client.results' parameters.
_CLI_NAMES = {
    "sweep": "--sweep",
    "where": "--where",
    "order_by": "--order-by",
    "columns": "--columns",
    "limit": "--limit",
}
_PYTHON_NAMES = {name: name for name in _CLI_NAMES}


@dataclass(frozen=True)
class ResultsQuery:
    """A validated query over results_flat.

    Attributes:
        sweep_ids: only these sweeps (empty: all).
        where: the checked filter, or None.
        order_by: sort keys; the default order (sweep, job, batch size) follows them.
        columns: the columns to return, in order.
        limit: at most this many rows (None: all).
    """

    sweep_ids: tuple[int, ...] = ()
    where: Predicate | None = None
    order_by: tuple[OrderKey, ...] = ()
    columns: tuple[str, ...] = RESULT_COLUMNS
    limit: int | None = None

    @classmethod
    def parse(
        cls,
        *,
        sweep: int | Iterable[int] | None = None,
        where: str | None = None,
        order_by: str | Sequence[str] | None = None,
        columns: str | Sequence[str] | None = None,
        limit: int | None = None,
        cli: bool = False,
    ) -> ResultsQuery:
        """Validate a query given as the user wrote it.

        Args:
            sweep: a sweep id or several (None: every sweep).
            where: a filter expression (docs/query.md).
            order_by: ``"column [asc|desc]"`` keys.
            columns: ``"a,b"`` or a list of names (None: every column).
            limit: at most this many rows, 0 or more.
            cli: name the arguments as the CLI's options (``--where``) in messages, else as parameters.

        Returns:
            The query.

        Raises:
            ConfigError: any argument is invalid (one line naming it).
        """
        names = _CLI_NAMES if cli else _PYTHON_NAMES
        return cls(
            sweep_ids=_sweep_ids(sweep, names["sweep"]),
            where=parse_where(where, source=names["where"]),
            order_by=parse_order_by(order_by, source=names["order_by"]),
            columns=parse_columns(columns, source=names["columns"]),
            limit=_limit(limit, names["limit"]),
        )


def query_results(session: Session, query: ResultsQuery) -> list[dict[str, Any]]:
    """Run ``query`` against results_flat.

    Args:
        session: a session on the results database (a read session is enough).
        query: the validated query.

    Returns:
        One dict per row, keyed by ``query.columns`` in that order.

    Raises:
        NotFound: one of ``query.sweep_ids`` names no sweep.
    """
    _check_sweeps(session, query.sweep_ids)
    return _run(session, query)


def fetch_results(
    session: Session, *, sweep_ids: list[int] | None = None, limit: int | None = None
) -> list[dict[str, Any]]:
    """Every column of results_flat, ordered by sweep, job and batch size.

    Args:
        session: a session on the results database.
        sweep_ids: only these sweeps (None or empty: all).
        limit: at most this many rows.

    Returns:
        One dict per row.
    """
    return _run(session, ResultsQuery(sweep_ids=tuple(sweep_ids or ()), limit=limit))


def query(db: Database, q: ResultsQuery) -> list[dict[str, Any]]:
    """The rows of results_flat ``q`` asks for (``farm results query``, ``pareto``, ``best``, ``compare``).

    Raises:
        NotFound: one of ``q.sweep_ids`` names no sweep.
    """
    with db.session(write=False) as s:
        return query_results(s, q)


def sweep_rows(db: Database, sweep_id: int) -> list[dict[str, Any]]:
    """Every results_flat row of a sweep (one per job and batch size), as the end of a run shows them."""
    with db.session(write=False) as s:
        return fetch_results(s, sweep_ids=[sweep_id])


def method_configs(db: Database, job_ids: Sequence[int]) -> dict[int, str]:
    """Each job's full method config as canonical JSON (what identifies a recipe across sweeps)."""
    out: dict[int, str] = {}
    with db.session(write=False) as s:
        for condition in bulk.in_values(s, Job.id, list(dict.fromkeys(job_ids))):
            for job_id, spec in s.execute(select(Job.id, Job.spec).where(condition)):
                out[job_id] = json.dumps(spec.get("method", {}), sort_keys=True, separators=(",", ":"))
    return out


RECOMPUTE_STORED_FIGURES = (
    "UPDATE metrics SET accuracy_drop = accuracy_fp32 - accuracy",
    """UPDATE metrics SET speedup = (
        SELECT CASE
            WHEN metrics.simulated OR metrics.latency_p50_ms IS NULL OR metrics.latency_p50_ms = 0
                OR r.latency_p50_ms IS NULL
            THEN NULL
            ELSE r.latency_p50_ms / metrics.latency_p50_ms
        END
        FROM jobs j
        JOIN metrics r
            ON r.job_id = COALESCE(j.reference_job_id, j.id)
            AND r.batch_size = metrics.batch_size
            AND r.hardware_id = metrics.hardware_id
        WHERE j.id = metrics.job_id
    )""",
)


def recompute_stored_figures(session: Session) -> None:
    """Recompute metrics.accuracy_drop and metrics.speedup from the other figures, for every row.

    Workers store both with each result; this is for rows written by other means (imports, fixtures).
    Speedup compares with the fp32 reference at the same batch size on the same hardware, NULL when simulated.
    """
    for statement in RECOMPUTE_STORED_FIGURES:
        session.execute(text(statement))


def _run(session: Session, query: ResultsQuery) -> list[dict[str, Any]]:
    dialect = session.get_bind().dialect.name

    def rows(stmt: Select[Any]) -> list[dict[str, Any]]:
        return [_clean(dict(row)) for row in session.execute(stmt).mappings()]

    if query.limit is None or not query.order_by:
        return rows(statement(query, dialect))
    # Sorted and limited: the rows whose first sort key is set come first (NULLS LAST), so ask for those alone
    # (a strict predicate: PostgreSQL then joins the metrics as an inner join and walks the sort index instead
    # of joining and sorting every row), and for the NULL-key rows only when there weren't enough.
    head = rows(statement(query, dialect, first_key_null=False))
    if len(head) >= query.limit:
        return head
    rest = dataclasses.replace(query, limit=query.limit - len(head))
    return head + rows(statement(rest, dialect, first_key_null=True))


def statement(query: ResultsQuery, dialect: str, *, first_key_null: bool | None = None) -> Select[Any]:
    """The SELECT over results_flat that ``query`` runs on ``dialect`` (bench/ prints its plan).

    Args:
        first_key_null: restrict to rows whose first ``order_by`` column is NULL (True) or set (False).
    """
    stmt = select(*(RESULTS_FLAT.c[c] for c in query.columns)).select_from(RESULTS_FLAT)
    if first_key_null is not None and query.order_by:
        first = RESULTS_FLAT.c[query.order_by[0].column]
        stmt = stmt.where(first.is_(None) if first_key_null else first.is_not(None))
    if query.sweep_ids:
        stmt = stmt.where(RESULTS_FLAT.c.sweep_id.in_(query.sweep_ids))
    if query.where is not None:
        stmt = stmt.where(where_clause(query.where, dialect=dialect))
    requested = {k.column for k in query.order_by}
    keys = [*query.order_by, *(k for k in DEFAULT_ORDER if k.column not in requested)]
    terms = order_clauses([(k.column, k.descending) for k in keys], dialect=dialect)
    if first_key_null is False:
        # No NULLs in the first key here, so where they would sort doesn't matter: a plain ASC / DESC, which one
        # ascending index serves both ways (PostgreSQL scans it backwards for DESC).
        key_expr = sort_expression(keys[0].column, dialect=dialect)
        terms[0] = key_expr.desc() if keys[0].descending else key_expr.asc()
    stmt = stmt.order_by(*terms)
    if query.limit is not None:
        stmt = stmt.limit(query.limit)
    return stmt


def _check_sweeps(session: Session, sweep_ids: tuple[int, ...]) -> None:
    if not sweep_ids:
        return
    found = set(session.scalars(select(Sweep.id).where(Sweep.id.in_(sweep_ids))))
    missing = [i for i in dict.fromkeys(sweep_ids) if i not in found]
    if len(missing) == 1:
        raise NotFound(f"no sweep with id {missing[0]}")
    if missing:
        raise NotFound(f"no sweeps with ids {', '.join(map(str, missing))}")


def _sweep_ids(sweep: int | Iterable[int] | None, source: str) -> tuple[int, ...]:
    if sweep is None:
        return ()
    items: tuple[object, ...]
    if isinstance(sweep, str | bytes) or not isinstance(sweep, Iterable):
        items = (sweep,)
    else:
        items = tuple(sweep)
    ids = tuple(_integer(i, "a sweep id (int) or a list of them", source) for i in items)
    if len(ids) > MAX_SWEEPS:
        raise ConfigError(f"too many sweeps ({len(ids)}; at most {MAX_SWEEPS})", source=source)
    return ids


def _limit(limit: int | None, source: str) -> int | None:
    if limit is None:
        return None
    count = _integer(limit, "a row count (an int, 0 or more)", source)
    if count < 0:
        raise ConfigError(f"expected a row count (an int, 0 or more), got {limit!r}", source=source)
    return count


def _integer(value: object, what: str, source: str) -> int:
    # numpy's integers are Integral too: ids taken from a DataFrame work.
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise ConfigError(f"expected {what}, got {value!r}", source=source)
    if not -(2**63) <= int(value) < 2**63:  # what SQLite and PostgreSQL (bigint) store; past it the driver fails
        raise ConfigError(f"expected {what}, got {value!r}: out of range (at most 2**63 - 1)", source=source)
    return int(value)


def _clean(row: dict[str, Any]) -> dict[str, Any]:
    # SQLite gives back finished_at without its offset (it is stored as UTC text): make it the aware UTC
    # datetime PostgreSQL returns.
    when = row.get("finished_at")
    if isinstance(when, datetime):
        row["finished_at"] = when.replace(tzinfo=timezone.utc) if when.tzinfo is None else when.astimezone(timezone.utc)
    if row.get("simulated") is not None:
        row["simulated"] = bool(row["simulated"])
    if row.get("params") is not None:
        # SQLite hands back the JSON text, PostgreSQL a decoded value: the same canonical text from both.
        params = json.loads(row["params"]) if isinstance(row["params"], str) else row["params"]
        row["params"] = json.dumps(params, sort_keys=True, separators=(",", ":"))
    return row
