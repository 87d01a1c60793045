"""The workers the database has seen (``farm workers``): their rows as plain data, and the clock they are
judged by."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone

from farm.store import queries
from farm.store.db import Database
from farm.store.lifecycle import utcnow


@dataclass(frozen=True)
class WorkerRow:
    """A worker as its last heartbeat left it; ``last_heartbeat`` is timezone-aware (UTC)."""

    name: str
    hostname: str
    queues: list[str]
    state: str
    current_job_id: int | None
    last_heartbeat: datetime


def list_workers(db: Database) -> tuple[datetime, list[WorkerRow]]:
    """Every worker row, by host and name, and the time they were read at (UTC).

    Returns:
        (now, workers).
    """
    now = utcnow()
    with db.session(write=False) as s:
        rows = [
            WorkerRow(
                w.name,
                w.hostname,
                list(w.queues),
                w.state,
                w.current_job_id,
                w.last_heartbeat if w.last_heartbeat.tzinfo else w.last_heartbeat.replace(tzinfo=timezone.utc),
            )
            for w in queries.list_workers(s)
        ]
    return now, rows
