"""The store side of the sweep operations (farm/jobs/sweeps.py) and the reads the ``farm sweep`` commands show.

Each function takes the :class:`~farm.store.db.Database`, runs in one transaction of its own and returns plain
data (MLflow's SQL store style): no session or ORM row leaves farm/store. The scheduling inside them is the
store's one copy (farm/store/scheduling.py, deciding with farm.jobs.policy); these functions only compose it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from farm.jobs.policy import FINISHED_STATES, Decision, Message, retry_states
from farm.store import bulk, plans, scheduling
from farm.store.db import Database
from farm.store.lifecycle import get_sweep, refresh_sweep_state, sweep_counts, utcnow
from farm.store.models import Job, Sweep, SweepJob
from farm.store.plans import SweepRecord

#: A route function: a planned job -> (queue, stage, finish_queue).
Route = Callable[[Any], tuple[str, str, str | None]]


@dataclass(frozen=True)
class Submission:
    """A sweep persisted for a farm, and the messages of its jobs that may start now (already queued)."""

    record: SweepRecord
    messages: list[Message]


@dataclass(frozen=True)
class Retried:
    """The jobs made pending again by a retry, and what scheduling them decided."""

    job_ids: list[int]
    decision: Decision


@dataclass(frozen=True)
class SweepRow:
    """One sweep as ``farm sweep list`` shows it."""

    id: int
    name: str
    state: str
    submitter: str | None
    created_at: datetime
    counts: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class FailedJob:
    id: int
    method: str
    model: str
    error: str | None


@dataclass(frozen=True)
class SweepStatus:
    """A sweep's state, its job counts by state, and its failed jobs (by id)."""

    name: str
    state: str
    counts: dict[str, int]
    failed: list[FailedJob]


@dataclass(frozen=True)
class SweepProgress:
    state: str
    counts: dict[str, int]


def create(db: Database, plan: Any, submitter: str | None, route: Route | None = None) -> SweepRecord:
    """Persist a plan (see :func:`farm.store.plans.create_sweep`): the sweep and its jobs, routed by ``route``."""
    with db.session() as s:
        return plans.create_sweep(s, plan, submitter, route=route)


def create_and_queue(db: Database, plan: Any, submitter: str | None, route: Route) -> Submission:
    """Persist a plan for a farm and queue, in the same transaction, the jobs that may start now (references
    first: a trial waits for its dependencies)."""
    with db.session() as s:
        record = plans.create_sweep(s, plan, submitter, route=route)
        return Submission(record, scheduling.queue_ready(s, record.to_run))


def delete_new(db: Database, sweep_id: int) -> None:
    """Undo a sweep created moments ago, with its own jobs and links (see :func:`farm.store.plans.delete_new_sweep`)."""
    with db.session() as s:
        plans.delete_new_sweep(s, sweep_id)


def cancel_jobs(db: Database, sweep_id: int, job_ids: Sequence[int], reason: str) -> int:
    """Cancel ``job_ids`` of a sweep: their dependents end too (in any sweep), and the sweep settles.

    Returns:
        How many jobs were cancelled (those not finished already).
    """
    with db.session() as s:
        return _cancel(s, sweep_id, list(job_ids), reason)


def cancel(db: Database, sweep_id: int, reason: str) -> int:
    """Cancel every unfinished job of a sweep (see :func:`cancel_jobs`).

    Raises:
        NotFound: no such sweep.
    """
    with db.session() as s:
        get_sweep(s, sweep_id)
        return _cancel(s, sweep_id, sweep_job_ids(s, sweep_id), reason)


def _cancel(s: Session, sweep_id: int, job_ids: list[int], reason: str) -> int:
    n = cancel_unfinished(s, job_ids, reason)
    scheduling.jobs_ended(s, job_ids)  # a reference shared with another sweep: that sweep's dependents end too
    refresh_sweep_state(s, sweep_id)
    return n


def retry(db: Database, sweep_id: int, *, failed_only: bool) -> Retried:
    """Make a sweep's failed (and cancelled) jobs pending with a fresh attempt budget, and schedule them:
    released if their dependencies succeeded, ended again at once if one of those stays failed.

    Raises:
        NotFound: no such sweep.
    """
    with db.session() as s:
        get_sweep(s, sweep_id)
        ids = reset_for_retry(s, sweep_id, failed_only=failed_only)
        decision = scheduling.schedule_pending(s, ids)
        refresh_sweep_state(s, sweep_id)
    return Retried(ids, decision)


def require_sweep(db: Database, sweep_id: int) -> None:
    """Raises: NotFound: no sweep has this id."""
    with db.session(write=False) as s:
        get_sweep(s, sweep_id)


def resume_messages(db: Database, sweep_id: int) -> tuple[list[Message], list[Message]]:
    """For ``farm sweep resume``: every queued job of the sweep (the operator says their messages are lost),
    marked as sent now, and the pending jobs whose dependencies let them start, now queued.

    Returns:
        (queued, released).
    """
    with db.session() as s:
        queued = scheduling.resend_queued(s, sweep_id)
        ready = scheduling.schedule_pending(s, sweep_job_ids(s, sweep_id, ("pending",))).messages
        refresh_sweep_state(s, sweep_id)
    return queued, ready


def list_sweeps(db: Database, limit: int) -> list[SweepRow]:
    """The newest ``limit`` sweeps with their job counts by state."""
    with db.session(write=False) as s:
        newest = s.scalars(select(Sweep).order_by(Sweep.id.desc()).limit(limit)).all()
        return [
            SweepRow(sw.id, sw.name, sw.state, sw.submitter, sw.created_at, sweep_counts(s, sw.id)) for sw in newest
        ]


def status(db: Database, sweep_id: int) -> SweepStatus:
    """A sweep's state as last settled, its counts and its failed jobs; changes nothing.

    Raises:
        NotFound: no such sweep.
    """
    with db.session(write=False) as s:
        sweep = get_sweep(s, sweep_id)
        failed = s.execute(
            select(Job.id, Job.method, Job.model, Job.error)
            .join(SweepJob, SweepJob.job_id == Job.id)
            .where(SweepJob.sweep_id == sweep_id, Job.state == "failed")
            .order_by(Job.id)
        ).all()
        return SweepStatus(sweep.name, sweep.state, sweep_counts(s, sweep_id), [FailedJob(*row) for row in failed])


def progress(db: Database, sweep_id: int) -> SweepProgress:
    """A sweep's state, settled from its jobs' (a watcher settles a sweep whose last jobs raced), and counts.

    Raises:
        NotFound: no such sweep.
    """
    with db.session() as s:
        return SweepProgress(refresh_sweep_state(s, sweep_id), sweep_counts(s, sweep_id))


# --- session-level: what the operations above compose ----------------------------------------------------------


def sweep_job_ids(session: Session, sweep_id: int, states: Sequence[str] | None = None) -> list[int]:
    """The ids of the sweep's jobs (in ``states`` only, when given), ascending."""
    stmt = select(SweepJob.job_id).join(Job, Job.id == SweepJob.job_id).where(SweepJob.sweep_id == sweep_id)
    if states is not None:
        stmt = stmt.where(Job.state.in_(states))
    return list(session.scalars(stmt.order_by(SweepJob.job_id)))


def cancel_unfinished(session: Session, job_ids: Sequence[int], reason: str = "cancelled") -> int:
    """Cancel every unfinished job among ``job_ids`` (running ones stop at their next check); returns how many.

    Decides nothing: the caller hands the ended jobs to the scheduling (:func:`cancel_jobs` does)."""
    count = 0
    for condition in bulk.in_values(session, Job.id, list(job_ids)):
        result = session.execute(
            update(Job)
            .where(condition, Job.state.not_in(FINISHED_STATES))
            .values(state="cancelled", error=reason, finished_at=utcnow(), lease_expires_at=None)
            .execution_options(synchronize_session=False)
        )
        count += result.rowcount  # type: ignore[attr-defined]
    return count


def reset_for_retry(session: Session, sweep_id: int, *, failed_only: bool) -> list[int]:
    """failed (and cancelled, unless ``failed_only``) -> pending with a fresh attempt budget; returns their ids."""
    states = retry_states(failed_only)
    ids = sweep_job_ids(session, sweep_id, states)
    for condition in bulk.in_values(session, Job.id, ids):
        session.execute(
            update(Job)
            .where(condition, Job.state.in_(states))
            .values(
                state="pending",
                attempts=0,
                worker_losses=0,
                error=None,
                worker=None,
                lease_expires_at=None,
                finished_at=None,
            )
            .execution_options(synchronize_session=False)
        )
    if ids:
        get_sweep(session, sweep_id).state = "running"
    return ids
