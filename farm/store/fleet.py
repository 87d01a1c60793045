"""The workers the database has seen: each worker's heartbeat row (``farm worker`` writes it every few seconds),
and the rows as plain data for ``farm workers``, with the clock they are judged by."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from farm.store.db import Database
from farm.store.lifecycle import as_utc, utcnow
from farm.store.models import Worker


@dataclass(frozen=True)
class WorkerRow:
    """A worker as its last heartbeat left it; ``last_heartbeat`` is timezone-aware (UTC)."""

    name: str
    hostname: str
    queues: list[str]
    state: str
    current_job_id: int | None
    last_heartbeat: datetime


def heartbeat(
    session: Session,
    name: str,
    *,
    hostname: str,
    pid: int,
    queues: list[str],
    capabilities: dict[str, Any],
    current_job_id: int | None,
    state: str,
) -> None:
    """Insert or refresh a worker's row."""
    now = utcnow()
    worker = session.scalar(select(Worker).where(Worker.name == name))
    if worker is None:
        session.add(
            Worker(
                name=name,
                hostname=hostname,
                pid=pid,
                queues=queues,
                capabilities=capabilities,
                started_at=now,
                last_heartbeat=now,
                current_job_id=current_job_id,
                state=state,
            )
        )
        return
    worker.last_heartbeat, worker.current_job_id, worker.state = now, current_job_id, state
    worker.pid, worker.queues, worker.capabilities = pid, queues, capabilities


def record_heartbeat(db: Database, name: str, **row: Any) -> None:
    """:func:`heartbeat` in a transaction of its own (a worker's pool process, every few seconds)."""
    with db.session() as s:
        heartbeat(s, name, **row)


def list_workers(db: Database) -> tuple[datetime, list[WorkerRow]]:
    """Every worker row, by host and name, and the time they were read at (UTC).

    Returns:
        (now, workers).
    """
    now = utcnow()
    with db.session(write=False) as s:
        rows = [
            WorkerRow(w.name, w.hostname, list(w.queues), w.state, w.current_job_id, as_utc(w.last_heartbeat))
            for w in s.scalars(select(Worker).order_by(Worker.hostname, Worker.name))
        ]
    return now, rows
