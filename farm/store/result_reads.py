"""Reads of the results view (results_flat) for the commands, each in a read-only transaction of its own.

The session-level queries are farm/store/results.py's; these open the transaction and return plain rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from farm.store import queries
from farm.store.db import Database
from farm.store.results import ResultsQuery, fetch_results, query_results


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
    with db.session(write=False) as s:
        return queries.method_configs(s, job_ids)
