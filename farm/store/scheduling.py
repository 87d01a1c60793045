"""The scheduling decisions the database makes when a job ends, and when a queued job's message looks lost.

A job ends in many places: its worker records it, a deterministic error or a cancel stops it, the worker's main
process fails it at the hard time limit, the task gives up after transient errors, the reaper fails it when its
worker died under it ``FARM_MAX_ATTEMPTS`` times, ``farm sweep cancel`` cancels it. Each must leave the same
database behind, so each asks :func:`job_ended`, the one copy of the decision, taken by the policy
(farm.jobs.policy.verdict, applied by farm.store.graph): a job that succeeded releases the jobs waiting for it
once all their dependencies succeeded (pending -> queued, returned as messages to send); one that failed or was
cancelled ends them with its reason; every sweep of the job, or of a job it ended, that has nothing left to run
is settled. Nobody has to run ``farm sweep resume`` for a sweep to finish.

It reads the job's state with a statement of its own: never through an ORM object, which an earlier bulk UPDATE
in the same session leaves stale (the reaper once read "running" after failing a job, and left its dependents
pending and its sweep running forever).

The broker only carries hints, and a Redis restarted without persistence loses them: :func:`stale_queues` and
:func:`take_lost` pick the queued jobs whose message is gone, for the reaper to send again.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, func, or_, select, update
from sqlalchemy.orm import Session

from farm.jobs.policy import (
    FINISHED_STATES,
    LOCAL_QUEUE,
    SUCCEEDED,
    WAITING_STATES,
    Decision,
    Message,
    missing_messages,
    worker_lost,
)
from farm.store import bulk
from farm.store.graph import decide, dependents, dependents_of, stale_waiters
from farm.store.lifecycle import (
    as_utc,
    fail_job,
    job_state,
    refresh_sweep_state,
    settle_stale_sweeps,
    settle_sweeps,
    utcnow,
)
from farm.store.models import Job, SweepJob


def job_ended(session: Session, job_id: int) -> Decision:
    """A job has ended, however it ended: decide the jobs waiting for it (:func:`farm.store.graph.decide`:
    released, or ended with its reason), and settle the sweeps left with nothing to run (the job's own, and
    those of the jobs it ended).

    Harmless to call twice, or for a job that has not ended (a reaper that lost the race, a claim that was
    refused): the job's state is read here, and only a finished job decides anything.

    Args:
        session: an open session (the caller commits, then sends ``messages``).
        job_id: the job.

    Returns:
        The decision.
    """
    row = session.execute(select(Job.state, Job.role).where(Job.id == job_id)).one_or_none()
    if row is None or row.state not in FINISHED_STATES:
        return Decision()
    # The jobs a stage added wait for it (farm.store.expansion.record_stage): they are its "added", whether this
    # is the decision right after its record or a later one (its worker died in between).
    added = dependents(session, job_id, None) if row.role == "stage" and row.state == SUCCEEDED else []
    waiting = dependents(session, job_id, WAITING_STATES)
    decision = decide(session, waiting) if waiting else Decision()
    settled = settle_sweeps(session, job_id)
    for sweep_id in sorted(_sweeps_of(session, decision.ended) - set(settled)):
        if refresh_sweep_state(session, sweep_id) != "running":
            settled.append(sweep_id)
    return Decision(decision.messages, decision.ended, settled, added)


def jobs_ended(session: Session, job_ids: Sequence[int]) -> Decision:
    """:func:`job_ended` for many jobs ended at once (a cancel): one decision over every job waiting for any of
    them (a reference shared with another sweep ends that sweep's jobs that compare with it too), then one
    settling of the sweeps of the jobs it ended and of ``job_ids``' own."""
    decision = decide(session, dependents_of(session, job_ids))
    settled = [s for s in sorted(_sweeps_of(session, [*job_ids, *decision.ended])) if not _running(session, s)]
    return Decision(decision.messages, decision.ended, settled)


def _running(session: Session, sweep_id: int) -> bool:
    return refresh_sweep_state(session, sweep_id) == "running"


def schedule_pending(session: Session, job_ids: Sequence[int]) -> Decision:
    """Decide the pending jobs among ``job_ids`` by their dependencies: released (queued, as messages) once all
    succeeded, ended with the reason of one that failed or was cancelled, left pending while one is still to run.

    For jobs made pending again (``farm sweep retry``, ``resume``): a dependent retried while its reference
    stays failed ends at once instead of waiting for a reference that will never run.
    """
    decision = decide(session, job_ids)
    settled = sorted(_sweeps_of(session, decision.ended))
    settled = [s for s in settled if refresh_sweep_state(session, s) != "running"]
    return decision + Decision(settled=settled)


def queue_ready(session: Session, job_ids: Sequence[int]) -> list[Message]:
    """pending -> queued for the jobs among ``job_ids`` whose dependencies all succeeded (or that have none);
    returns the messages to send. Ends nothing (a submit's first decision)."""
    return decide(session, job_ids, end=False).messages


def _sweeps_of(session: Session, job_ids: Sequence[int]) -> set[int]:
    out: set[int] = set()
    for condition in bulk.in_values(session, SweepJob.job_id, list(job_ids)):
        out.update(session.scalars(select(SweepJob.sweep_id).distinct().where(condition)))
    return out


# --- queued jobs whose message is gone ------------------------------------------------------------------------


def _stale(cutoff: datetime) -> ColumnElement[bool]:
    return or_(Job.queued_at.is_(None), Job.queued_at < cutoff)


def stale_queues(session: Session, cutoff: datetime) -> list[str]:
    """Broker queues holding a job queued (its message last sent) before ``cutoff`` and still not claimed."""
    return sorted(
        session.scalars(
            select(Job.queue)
            .distinct()
            .where(Job.state == "queued", Job.queue.is_not(None), Job.queue != LOCAL_QUEUE, _stale(cutoff))
        )
    )


def take_lost(session: Session, lengths: Mapping[str, int], cutoff: datetime) -> list[Message]:
    """The queued jobs whose message the broker lost, marked as sent now; the caller sends them.

    A queue whose broker length (``lengths``, read BEFORE this is called) is at least its number of queued
    jobs still holds every message: a long backlog legitimately keeps jobs queued for hours, and none of them
    is sent again. Otherwise the difference is made up from the jobs sent longest ago (before ``cutoff``:
    a job sent moments ago may simply not be in the broker yet). Their ``queued_at`` moves to now in the same
    conditional UPDATE, so that two reapers do not both send them, and the next round waits another bound.
    A message sent twice is harmless: the claim drops the second.

    Args:
        lengths: queue name -> messages waiting in the broker.
        cutoff: jobs sent after this are never taken.

    Returns:
        The messages to send.
    """
    now = utcnow()
    messages: list[Message] = []
    for queue, length in sorted(lengths.items()):
        queued = session.scalar(select(func.count()).where(Job.state == "queued", Job.queue == queue)) or 0
        missing = missing_messages(int(queued), int(length))
        if missing <= 0:
            continue
        oldest = (
            select(Job.id)
            .where(Job.state == "queued", Job.queue == queue, _stale(cutoff))
            .order_by(Job.queued_at.asc().nulls_first(), Job.id)
            .limit(missing)
        )
        taken = session.execute(
            update(Job)
            .where(Job.id.in_(oldest.scalar_subquery()), Job.state == "queued", _stale(cutoff))
            .values(queued_at=now)
            .returning(Job.id, Job.queue, Job.stage)
            .execution_options(synchronize_session=False)
        ).all()
        messages += [Message(r.id, r.queue or "cpu", r.stage) for r in sorted(taken)]
    return messages


def resend_queued(session: Session, sweep_id: int) -> list[Message]:
    """Every queued job of the sweep, marked as sent now (``farm sweep resume``: the operator says they are
    lost)."""
    ids = select(SweepJob.job_id).where(SweepJob.sweep_id == sweep_id)
    rows = session.execute(
        update(Job)
        .where(Job.id.in_(ids), Job.state == "queued", or_(Job.queue.is_(None), Job.queue != LOCAL_QUEUE))
        .values(queued_at=utcnow())
        .returning(Job.id, Job.queue, Job.stage)
        .execution_options(synchronize_session=False)
    ).all()
    return [Message(r.id, r.queue or "cpu", r.stage) for r in sorted(rows)]


# --- the reaper's store side -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExpiredJob:
    """A running job whose lease ran out, as it was read (a plain copy: an ORM row would go stale the moment a
    bulk UPDATE changes the job, and a decision taken on it would be wrong)."""

    id: int
    role: str
    queue: str | None
    stage: str
    worker: str | None
    worker_losses: int
    key: str = ""


def expired_jobs(session: Session, sweep_id: int | None = None) -> list[ExpiredJob]:
    """Running jobs whose lease ran out: their worker stopped heart-beating (died, or lost the database)."""
    stmt = select(Job.id, Job.role, Job.queue, Job.stage, Job.worker, Job.worker_losses, Job.key).where(
        Job.state == "running", Job.lease_expires_at < utcnow()
    )
    if sweep_id is not None:
        stmt = stmt.join(SweepJob, SweepJob.job_id == Job.id).where(SweepJob.sweep_id == sweep_id)
    return [
        ExpiredJob(r.id, r.role, r.queue, r.stage, r.worker, r.worker_losses or 0, r.key) for r in session.execute(stmt)
    ]


def requeue_expired(session: Session, job: ExpiredJob, max_attempts: int) -> Message | None:
    """Put an expired job back in the queue, or fail it once its worker died under it ``max_attempts`` times.

    Only worker losses count here: the claims a transient error (S3 or the database away) used up do not. A job
    failed here has ended: the caller hands it to :func:`farm.store.scheduling.job_ended` (its dependents, its
    sweeps).
    """
    now = utcnow()
    loss = worker_lost((job.worker_losses or 0) + 1, max_attempts, job.worker)
    if not loss.again:
        reason = f"{loss.reason} (FARM_MAX_ATTEMPTS={max_attempts})"
        fail_job(session, job.id, reason, worker=job.worker)  # not if a late message took it over meanwhile
        return None
    losses = loss.losses
    moved = session.execute(
        update(Job)
        .where(Job.id == job.id, Job.state == "running", Job.lease_expires_at < now)
        .values(state="queued", worker=None, lease_expires_at=None, queued_at=now, worker_losses=losses)
        .execution_options(synchronize_session=False)
    )
    if moved.rowcount != 1:  # type: ignore[attr-defined]
        return None  # another reaper got there first
    return Message(job.id, job.queue or "cpu", job.stage)


# --- what the Celery executor asks: db-level, one transaction each, plain data back ------------------------------


@dataclass(frozen=True)
class Reaped:
    """A reaper round: the messages to send (re-queued jobs, released dependents), the counts, and the keys of
    the jobs it failed (their dead attempts' objects are collected)."""

    messages: list[Message] = field(default_factory=list)
    requeued: int = 0
    failed: int = 0
    failed_keys: list[str] = field(default_factory=list)


def decide_ended(db: Any, job_id: int) -> Decision:
    """:func:`job_ended` in a transaction of its own: the caller sends ``messages`` after."""
    with db.session() as s:
        return job_ended(s, job_id)


def decide_pending(db: Any, job_ids: Sequence[int]) -> Decision:
    """:func:`schedule_pending` in a transaction of its own."""
    with db.session() as s:
        return schedule_pending(s, job_ids)


def fail_past_time_limit(db: Any, job_id: int, reason: str, host: str, limit_s: float) -> tuple[Decision, str] | None:
    """Fail a job that a pool process of ``host`` has run for (about) ``limit_s`` and that was killed there.

    Returns:
        (the decision, the job's key), or None when the job is not that (finished meanwhile, or another worker
        took it over after a lost lease): then it is not ours to fail.
    """
    with db.session() as s:
        row = s.execute(select(Job.state, Job.worker, Job.started_at, Job.key).where(Job.id == job_id)).one_or_none()
        if row is None or row.state != "running" or row.started_at is None:
            return None
        started = as_utc(row.started_at)
        ran_here = (row.worker or "").rpartition(":")[0] == host
        if not ran_here or (utcnow() - started).total_seconds() < 0.9 * limit_s:
            return None
        fail_job(s, job_id, reason, worker=row.worker)
        return job_ended(s, job_id), row.key


def reap(db: Any, max_attempts: int, sweep_id: int | None = None) -> Reaped:
    """Re-queue running jobs whose lease expired (their worker died); fail those whose worker died under them
    ``max_attempts`` times (farm.jobs.policy.worker_lost), deciding their ends as any other; decide the pending
    jobs a decision missed (:func:`farm.store.graph.stale_waiters`); settle the sweeps left with nothing to run."""
    out = Reaped()
    with db.session() as s:
        for job in expired_jobs(s, sweep_id):
            message = requeue_expired(s, job, max_attempts)
            if message is not None:
                out.messages.append(message)
                out = dataclasses.replace(out, requeued=out.requeued + 1)
                continue
            if job_state(s, job.id) == "failed":
                out = dataclasses.replace(out, failed=out.failed + 1, failed_keys=[*out.failed_keys, job.key])
            out.messages.extend(job_ended(s, job.id).messages)
        if sweep_id is None:
            out.messages.extend(schedule_pending(s, stale_waiters(s)).messages)
        # Two jobs of a sweep ending at the same moment on PostgreSQL each see the other still running (their
        # statements' snapshots), so neither settles the sweep: this round does.
        settle_stale_sweeps(s)
    return out


def find_stale_queues(db: Any, cutoff: datetime) -> list[str]:
    """:func:`stale_queues`, read-only."""
    with db.session(write=False) as s:
        return stale_queues(s, cutoff)


def take_lost_messages(db: Any, lengths: Mapping[str, int], cutoff: datetime) -> list[Message]:
    """:func:`take_lost` in a transaction of its own."""
    with db.session() as s:
        return take_lost(s, lengths, cutoff)
