"""The job graph in the database (``job_dependencies``) and the policy applied to it.

:func:`decide` loads the waiting jobs among some ids with their dependencies' states, asks
:func:`farm.jobs.policy.verdict`, and writes the answer: released jobs pending -> queued (returned as messages),
jobs that can never run ended with their dependency's reason, and — an ended job may itself be waited for (a
stage waits for trials that wait for their reference) — the jobs waiting for those decided in turn.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from sqlalchemy import and_, exists, select, update
from sqlalchemy.orm import Session, aliased

from farm.jobs.policy import WAITING_STATES, Decision, Dependency, Ending, Message, Verdict, Waiter, verdict
from farm.store import bulk
from farm.store.lifecycle import utcnow
from farm.store.models import Job, JobDependency

_UNFINISHED = ("pending", "queued", "running")


def dependents(session: Session, job_id: int, states: Sequence[str] = ("pending",)) -> list[int]:
    """Jobs that wait for ``job_id`` and are in ``states``."""
    return list(
        session.scalars(
            select(JobDependency.job_id)
            .join(Job, Job.id == JobDependency.job_id)
            .where(JobDependency.depends_on_id == job_id, Job.state.in_(states))
            .order_by(JobDependency.job_id)
        )
    )


def dependents_of(session: Session, job_ids: Sequence[int], states: Sequence[str] = WAITING_STATES) -> list[int]:
    """Jobs that wait for any of ``job_ids`` and are in ``states``."""
    out: set[int] = set()
    for condition in bulk.in_values(session, JobDependency.depends_on_id, list(job_ids)):
        out.update(
            session.scalars(
                select(JobDependency.job_id)
                .join(Job, Job.id == JobDependency.job_id)
                .where(condition, Job.state.in_(states))
            )
        )
    return sorted(out)


def decide(session: Session, job_ids: Sequence[int], *, end: bool = True) -> Decision:
    """Apply the policy to the waiting jobs among ``job_ids`` (and, when ``end``, to those waiting for a job it
    ended, and so on): release, end, or leave waiting. The caller commits, then sends ``messages``.

    Args:
        end: False releases only (a submit's first decision: nothing can have ended yet).
    """
    out = Decision()
    todo = list(dict.fromkeys(job_ids))
    while todo:
        answer, routes = _verdict(session, todo)
        out += Decision(messages=_release(session, answer.release, routes))
        if not end:
            break
        ended = _end(session, answer.end)
        out += Decision(ended=ended)
        todo = dependents_of(session, ended) if ended else []
    return out


def _verdict(session: Session, job_ids: Sequence[int]) -> tuple[Verdict, dict[int, tuple[str, str, str]]]:
    """The policy's verdict on the waiting jobs among ``job_ids``, and each waiter's (state, queue, stage)."""
    dep_job = aliased(Job)
    waiters: dict[int, list[int]] = {}
    routes: dict[int, tuple[str, str, str]] = {}
    deps: dict[int, Dependency] = {}
    for condition in bulk.in_values(session, Job.id, list(job_ids)):
        rows = session.execute(
            select(
                Job.id,
                Job.state,
                Job.queue,
                Job.stage,
                dep_job.id.label("dep_id"),
                dep_job.state.label("dep_state"),
                dep_job.role.label("dep_role"),
                dep_job.error.label("dep_error"),
            )
            .outerjoin(JobDependency, JobDependency.job_id == Job.id)
            .outerjoin(dep_job, dep_job.id == JobDependency.depends_on_id)
            .where(condition, Job.state.in_(WAITING_STATES))
        ).all()
        for r in rows:
            waiters.setdefault(r.id, [])
            routes[r.id] = (r.state, r.queue or "cpu", r.stage)
            if r.dep_id is not None:
                waiters[r.id].append(r.dep_id)
                deps[r.dep_id] = Dependency(r.dep_id, r.dep_state, r.dep_role, r.dep_error)
    # A dependency row whose job is gone cannot be (its FK); a waiter's missing dependency counts as failed.
    answer = verdict((Waiter(i, tuple(sorted(d))) for i, d in sorted(waiters.items())), deps)
    return answer, routes


def _release(session: Session, ids: Iterable[int], routes: dict[int, tuple[str, str, str]]) -> list[Message]:
    """pending -> queued (a queued one was released before: its message is on its way)."""
    pending = [i for i in ids if routes[i][0] == "pending"]
    now = utcnow()
    for condition in bulk.in_values(session, Job.id, pending):
        session.execute(
            update(Job)
            .where(condition, Job.state == "pending")
            .values(state="queued", queued_at=now)
            .execution_options(synchronize_session=False)
        )
    return [Message(i, routes[i][1], routes[i][2]) for i in pending]


def _end(session: Session, endings: Sequence[Ending]) -> list[int]:
    """End the waiting jobs the policy says can never run, one UPDATE per (state, reason)."""
    by_reason: dict[tuple[str, str], list[int]] = {}
    for ending in endings:
        by_reason.setdefault((ending.state, ending.reason), []).append(ending.id)
    now = utcnow()
    ended: list[int] = []
    for (state, reason), ids in by_reason.items():
        for condition in bulk.in_values(session, Job.id, ids):
            moved = session.execute(
                update(Job)
                .where(condition, Job.state.in_(WAITING_STATES))
                .values(state=state, error=reason, finished_at=now, lease_expires_at=None)
                .returning(Job.id)
                .execution_options(synchronize_session=False)
            )
            ended += [row[0] for row in moved]
    return sorted(ended)


def stale_waiters(session: Session) -> list[int]:
    """Farm jobs still pending whose every dependency has finished: a decision missed them (a dependency was added
    to a job already running that was claimed without dependents). The reaper decides them each round."""
    dep, dep_job = aliased(JobDependency), aliased(Job)
    unfinished = exists().where(dep.job_id == Job.id, dep_job.id == dep.depends_on_id, dep_job.state.in_(_UNFINISHED))
    has_deps = exists().where(JobDependency.job_id == Job.id)
    return list(
        session.scalars(
            select(Job.id).where(
                and_(Job.state == "pending", Job.queue.is_not(None), Job.queue != "local"), has_deps, ~unfinished
            )
        )
    )
