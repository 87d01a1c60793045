"""Putting jobs in the queue for tests that start from a job whose message is out (claims, leases, reaping).

Importable as ``tests.job_rows``. :func:`submit_ready` goes through the scheduling policy as a submit does;
:func:`queue_as_sent` writes the queued state directly, whatever the jobs' dependencies, for tests whose subject
is what happens after the release (the release itself is tested in tests/unit/store/test_store_scheduling.py).
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import update
from sqlalchemy.orm import Session

from farm.jobs.policy import Message
from farm.store import lifecycle, plans, scheduling
from farm.store.models import Job


def submit_ready(session: Session, job_ids: Sequence[int], queue: str = "cpu") -> list[Message]:
    """What a submit does (farm.store.sweeps.create_and_queue): route the jobs to ``queue`` and queue those whose
    dependencies let them start; returns their messages."""
    plans.set_routes(session, dict.fromkeys(job_ids, (queue, "all", None)))
    return scheduling.queue_ready(session, job_ids)


def queue_as_sent(session: Session, job_ids: Sequence[int], queue: str, owner: str | None = None) -> int:
    """pending -> queued on ``queue`` for ``job_ids`` as if their message were sent, dependencies or not; with
    ``owner``, held by that local run until a worker claims them. Returns how many moved."""
    moved = session.execute(
        update(Job)
        .where(Job.id.in_(list(job_ids)), Job.state == "pending")
        .values(state="queued", queued_at=lifecycle.utcnow(), queue=queue, worker=owner)
        .execution_options(synchronize_session=False)
    )
    return int(moved.rowcount)  # type: ignore[attr-defined]
