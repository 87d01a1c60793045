"""QuantFarm from Python: results as a pandas DataFrame.

::

    from farm import client

    df = client.results(sweep=3, where="method = 'static' AND accuracy_drop < 0.01",
                        order_by=["latency_p50_ms asc"], columns=["model", "bits", "accuracy", "speedup"])

The same grammar, checks and errors as ``farm results query`` (docs/query.md). No click or rich here, and
pandas is imported only when a query runs.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd


def results(
    sweep: int | Iterable[int] | None = None,
    where: str | None = None,
    order_by: str | Sequence[str] | None = None,
    columns: str | Sequence[str] | None = None,
    limit: int | None = None,
    database_url: str | None = None,
) -> pd.DataFrame:
    """Rows of the view results_flat as a DataFrame.

    Args:
        sweep: a sweep id or a list of them (None: every sweep).
        where: a filter, e.g. ``"bits IN (8, 4) AND model LIKE 'torchvision:%'"`` (docs/query.md).
        order_by: ``"column [asc|desc]"`` or a list of them; NULLs sort last. Then sweep_id, job_id, batch_size.
        columns: the columns to return, ``["model", "accuracy"]`` or ``"model,accuracy"`` (None: all).
        limit: at most this many rows.
        database_url: the results database (default: FARM_DATABASE_URL, else the SQLite file under FARM_HOME).

    Returns:
        One row per sweep, job and batch size; dtypes ``Int64`` for integers, ``float64``, ``boolean``,
        ``string`` and ``datetime64[us, UTC]`` (see :func:`farm.frames.results_frame`).

    Raises:
        ConfigError: an invalid argument (unknown column, type mismatch, syntax error...), or pandas is not
            installed.
        NotFound: a sweep id that names no sweep.
        StoreUnavailable: the database cannot be reached.
        SchemaOutOfDate: the database has no QuantFarm schema, or it is behind this QuantFarm.
    """
    from farm.frames import require, results_frame
    from farm.store import results as stored_results
    from farm.store.db import Database
    from farm.store.migrate import require_schema
    from farm.store.results import ResultsQuery

    query = ResultsQuery.parse(sweep=sweep, where=where, order_by=order_by, columns=columns, limit=limit)
    require("pandas", what="farm.client.results")
    db = Database(database_url, read_only=True)  # reading never changes the database, nor creates its schema
    try:
        require_schema(db)
        rows = stored_results.query(db, query)
    finally:
        db.dispose()
    return results_frame(rows, query.columns)
