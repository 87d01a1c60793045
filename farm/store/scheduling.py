"""The scheduling decisions the database makes when a job ends, and when a queued job's message looks lost.

A job ends in many places: its worker records it, a deterministic error or a cancel stops it, the worker's main
process fails it at the hard time limit, the task gives up after transient errors, the reaper fails it when its
worker died under it ``FARM_MAX_ATTEMPTS`` times, ``farm sweep cancel`` cancels it. Each must leave the same
database behind, so each asks :func:`job_ended`, the one copy of the decision: a reference that succeeded
releases the jobs that compare with it (pending -> queued, returned as messages to send); one that failed or
was cancelled ends them with its reason; every sweep of the job, or of a job it ended, that has nothing left
to run is settled. Nobody has to run ``farm sweep resume`` for a sweep to finish.

It reads the job's state with a statement of its own: never through an ORM object, which an earlier bulk UPDATE
in the same session leaves stale (the reaper once read "running" after failing a job, and left its dependents
pending and its sweep running forever).

The broker only carries hints, and a Redis restarted without persistence loses them: :func:`stale_queues` and
:func:`take_lost` pick the queued jobs whose message is gone, for the reaper to send again.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime

from sqlalchemy import ColumnElement, func, or_, select, update
from sqlalchemy.orm import Session, aliased

from farm.jobs.policy import LOCAL_QUEUE, Decision, Message
from farm.store import bulk
from farm.store.lifecycle import refresh_sweep_state, settle_sweeps, utcnow
from farm.store.models import FINISHED_STATES, Job, SweepJob
from farm.store.queries import dependents, queue_ready


def job_ended(session: Session, job_id: int) -> Decision:
    """A job has ended, however it ended: release or end its dependents, and settle the sweeps left with nothing
    to run (the job's own, and those of the dependents it ended).

    Harmless to call twice, or for a job that has not ended (a reaper that lost the race, a claim that was
    refused): the job's state is read here, and only a finished job decides anything.

    Args:
        session: an open session (the caller commits, then sends ``messages``).
        job_id: the job.

    Returns:
        The decision.
    """
    row = session.execute(select(Job.state, Job.role, Job.error).where(Job.id == job_id)).one_or_none()
    if row is None or row.state not in FINISHED_STATES:
        return Decision()
    messages: list[Message] = []
    ended: list[int] = []
    if row.role == "reference":  # only references have dependents (jobs.reference_job_id points at them)
        if row.state == "succeeded":
            messages = queue_ready(session, dependents(session, job_id))
        else:
            ended = end_dependents(session, job_id, row.state, row.error)
    settled = settle_sweeps(session, job_id)
    for sweep_id in sorted(_sweeps_of(session, ended) - set(settled)):
        if refresh_sweep_state(session, sweep_id) != "running":
            settled.append(sweep_id)
    return Decision(messages, ended, settled)


def jobs_ended(session: Session, job_ids: Sequence[int]) -> Decision:
    """:func:`job_ended` for every reference among ``job_ids`` that has ended (after ending many jobs at once, as
    a cancel does: a reference shared with another sweep ends that sweep's jobs that compare with it too). The
    caller settles the sweeps of the trials it ended itself."""
    decision = Decision()
    for condition in bulk.in_values(session, Job.id, list(job_ids)):
        ended = select(Job.id).where(condition, Job.role == "reference", Job.state.in_(FINISHED_STATES))
        for ref_id in session.scalars(ended).all():
            decision += job_ended(session, ref_id)
    return decision


def end_dependents(session: Session, reference_id: int, state: str, error: str | None) -> list[int]:
    """End the unfinished jobs of a reference that ``state`` ("failed" or "cancelled") with ``error``: they can
    never compare with it. Returns their ids."""
    ids = dependents(session, reference_id, ("pending", "queued"))
    reason = f"the fp32 reference (job {reference_id}) {state}: {error or ''}".strip()[:4000]
    ending = "cancelled" if state == "cancelled" else "failed"
    now = utcnow()
    for condition in bulk.in_values(session, Job.id, ids):
        session.execute(
            update(Job)
            .where(condition, Job.state.in_(("pending", "queued")))
            .values(state=ending, error=reason, finished_at=now, lease_expires_at=None)
            .execution_options(synchronize_session=False)
        )
    return ids


def schedule_pending(session: Session, job_ids: Sequence[int]) -> Decision:
    """Decide the pending jobs among ``job_ids`` by their reference: released (queued, as messages) if it
    succeeded, ended with its reason if it failed or was cancelled, left pending while it is still to run.

    For jobs made pending again (``farm sweep retry``, ``resume``): a dependent retried while its reference
    stays failed ends at once instead of waiting for a reference that will never run.
    """
    decision = Decision(messages=queue_ready(session, job_ids))
    reference = aliased(Job)
    for condition in bulk.in_values(session, Job.id, list(job_ids)):
        refs = session.scalars(
            select(reference.id)
            .distinct()
            .join(Job, Job.reference_job_id == reference.id)
            .where(condition, Job.state == "pending", reference.state.in_(("failed", "cancelled")))
        ).all()
        for ref_id in refs:
            decision += job_ended(session, ref_id)
    return decision


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
        missing = int(queued) - int(length)
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
