"""What a local run (``farm sweep run``'s process pool, farm/jobs/local.py) asks of the database.

The local pool is an executor of the one scheduling policy, as the Celery workers are: it keeps no dependency map
of its own. It asks here which of its jobs may start (:func:`start`), what a job's end released or ended
(:func:`job_ended`), and what becomes of the jobs a dead pool held (:func:`recover`); each answer is the store's
decision (farm/store/scheduling.py applying farm.jobs.policy), written in one transaction and returned as plain
data. Jobs released for the local queue are recorded as held by the run's process (``worker``), so that a later
run can tell that a run killed before it started them left them behind (:func:`reclaim_abandoned`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from sqlalchemy import and_, select, update
from sqlalchemy.orm import Session

from farm.jobs.policy import (
    CANCELLED,
    FINISHED_STATES,
    LOCAL_QUEUE,
    LOCAL_ROUTE,
    POOL_DEATH_HINT,
    QUEUED,
    RUNNING,
    Decision,
    worker_lost,
)
from farm.store import bulk, lifecycle, plans, scheduling
from farm.store.db import Database
from farm.store.models import Job, JobDependency


@dataclass(frozen=True)
class LocalDecision:
    """A scheduling decision for a local run.

    Attributes:
        decision: as the store took it; its local messages are the jobs the run submits to its pool.
        cancelled: the jobs among ``decision.ended`` that ended cancelled (with a cancelled dependency); the
            others failed.
        runtimes: the deploy runtime of each job released to the local queue ("torch", or None in rows from before
            the column): the run gives a job to a process that has that runtime loaded where it can
            (farm/jobs/lanes.py).
    """

    decision: Decision = field(default_factory=Decision)
    cancelled: frozenset[int] = frozenset()
    runtimes: Mapping[int, str | None] = field(default_factory=dict)


@dataclass(frozen=True)
class JobEnd:
    """A job's end as the database has it, and what it decided."""

    state: str | None
    decided: LocalDecision


@dataclass(frozen=True)
class FinishedJob:
    """A job of a dead pool that had ended (before the pool died, or now, after too many deaths)."""

    id: int
    state: str
    error: str | None
    role: str


@dataclass(frozen=True)
class Recovery:
    """After a pool process died: how the jobs it held ended, and the decision (the others released again)."""

    finished: list[FinishedJob]
    decided: LocalDecision


def start(db: Database, job_ids: Sequence[int], owner: str) -> LocalDecision:
    """Route the pending jobs among ``job_ids`` to the local queue (not a farm's: see
    :func:`farm.store.plans.set_routes`) and decide them: release those whose dependencies all succeeded (jobs
    others wait for first), end those whose dependency failed or was cancelled.

    Args:
        owner: the run's process (:func:`farm.jobs.local.local_name`), recorded on the jobs it releases.
    """
    with db.session() as s:
        plans.set_routes(s, dict.fromkeys(job_ids, LOCAL_ROUTE))
        decided = _for_local_run(s, scheduling.schedule_pending(s, job_ids), owner)
        waited_for = _waited_for(s, [m.job_id for m in decided.decision.messages])
    messages = sorted(decided.decision.messages, key=lambda m: m.job_id not in waited_for)
    decision = decided.decision
    return LocalDecision(
        Decision(messages, decision.ended, decision.settled, decision.added), decided.cancelled, decided.runtimes
    )


def job_ended(db: Database, job_id: int, owner: str) -> JobEnd:
    """A job of the run ended (or was found held by someone else): its state now, and the store's decision on the
    jobs waiting for it (:func:`farm.store.scheduling.job_ended`)."""
    with db.session() as s:
        state = lifecycle.job_state(s, job_id)
        return JobEnd(state, _for_local_run(s, scheduling.job_ended(s, job_id), owner))


def recover(db: Database, job_ids: Sequence[int], owner: str, max_losses: int) -> Recovery:
    """The jobs a dead pool held: a finished one is decided as any end; an unfinished one counts a worker loss if
    it was running, and runs again (pending, then released) until ``max_losses`` (farm.jobs.policy.worker_lost),
    when it fails with the reason instead."""
    finished: list[FinishedJob] = []
    decision = Decision()
    again: list[int] = []
    with db.session() as s:
        for job_id in job_ids:
            row = s.execute(
                select(Job.state, Job.error, Job.role, Job.worker, Job.worker_losses).where(Job.id == job_id)
            ).one_or_none()
            if row is None:
                continue
            state, error = row.state, row.error
            if state not in FINISHED_STATES:
                losses = (row.worker_losses or 0) + (1 if state == "running" else 0)
                loss = worker_lost(losses, max_losses, row.worker, what="worker process", hint=POOL_DEATH_HINT)
                if loss.again:
                    if requeue_lost(s, job_id, state, row.worker, losses):
                        again.append(job_id)
                    continue
                if not lifecycle.fail_job(s, job_id, loss.reason or "", worker=row.worker):
                    continue  # it changed hands meanwhile: not ours to end
                state, error = "failed", loss.reason
            finished.append(FinishedJob(job_id, state, error, row.role))
            decision += scheduling.job_ended(s, job_id)
        decision += scheduling.schedule_pending(s, again)
        return Recovery(finished, _for_local_run(s, decision, owner))


def reclaim_abandoned(
    db: Database, job_ids: Sequence[int], is_gone: Callable[[str | None], bool], max_losses: int
) -> list[int]:
    """Local jobs among ``job_ids`` a dead run left queued or running, made pending again (see
    :func:`reset_abandoned`); returns their ids."""
    with db.session() as s:
        return reset_abandoned(s, job_ids, is_gone, max_losses)


def reset_abandoned(
    session: Session, job_ids: Sequence[int], is_gone: Callable[[str | None], bool], max_losses: int
) -> list[int]:
    """Local jobs among ``job_ids`` left queued or running by a process that is gone: back to pending.

    A running one counts a worker loss (its worker died under it), and fails once that is its ``max_losses``-th
    (farm.jobs.policy.worker_lost). Returns the ids reset to pending.
    """
    reset: list[int] = []
    for condition in bulk.in_values(session, Job.id, list(job_ids)):
        rows = session.execute(
            select(Job.id, Job.state, Job.worker, Job.worker_losses, Job.lease_expires_at).where(
                condition, Job.queue == LOCAL_QUEUE, Job.state.in_((QUEUED, RUNNING))
            )
        ).all()
        now = lifecycle.utcnow()
        for row in rows:
            lease = row.lease_expires_at
            expired = row.state == RUNNING and lease is not None and lifecycle.as_utc(lease) < now
            if not (expired or is_gone(row.worker)):
                continue
            loss = worker_lost(
                (row.worker_losses or 0) + (1 if row.state == RUNNING else 0),
                max_losses,
                row.worker,
                what="worker process",
            )
            if not loss.again:
                lifecycle.fail_job(session, row.id, loss.reason or "", worker=row.worker)
                continue
            if requeue_lost(session, row.id, row.state, row.worker, loss.losses):
                reset.append(row.id)
    return reset


def requeue_lost(session: Session, job_id: int, state: str, worker: str | None, losses: int) -> bool:
    """A job whose local worker process died: back to pending, if it is still as it was read (``state``, held by
    ``worker``), its ``losses`` recorded. Returns whether it moved."""
    return lifecycle.put_back(
        session, job_id, losses, held=and_(Job.state == state, Job.worker.is_not_distinct_from(worker))
    )


def settle(db: Database, sweep_id: int) -> str:
    """Derive the run's sweep's state from its jobs' once the run is over; returns it."""
    with db.session() as s:
        return lifecycle.refresh_sweep_state(s, sweep_id)


def _for_local_run(s: Session, decision: Decision, owner: str) -> LocalDecision:
    """Record ``owner`` on the jobs released to the local queue, and tell the cancelled among the ended jobs."""
    held = [m.job_id for m in decision.messages if m.queue == LOCAL_QUEUE]
    runtimes: dict[int, str | None] = {}
    for condition in bulk.in_values(s, Job.id, held):
        s.execute(
            update(Job)
            .where(condition, Job.state == "queued")
            .values(worker=owner)
            .execution_options(synchronize_session=False)
        )
        runtimes.update((row.id, row.runtime) for row in s.execute(select(Job.id, Job.runtime).where(condition)))
    cancelled: set[int] = set()
    for condition in bulk.in_values(s, Job.id, decision.ended):
        cancelled.update(s.scalars(select(Job.id).where(condition, Job.state == CANCELLED)))
    return LocalDecision(decision, frozenset(cancelled), runtimes)


def _waited_for(s: Session, job_ids: Sequence[int]) -> set[int]:
    """The jobs among ``job_ids`` that some job waits for."""
    out: set[int] = set()
    for condition in bulk.in_values(s, JobDependency.depends_on_id, list(job_ids)):
        out.update(s.scalars(select(JobDependency.depends_on_id).distinct().where(condition)))
    return out
