"""The job graph in the database (``job_dependencies``) and the policy applied to it.

:func:`decide` loads the waiting jobs among some ids with their dependencies' states, asks
:func:`farm.jobs.policy.verdict`, and writes the answer: released jobs pending -> queued (returned as messages),
jobs that can never run ended with their dependency's reason, and — an ended job may itself be waited for (a
stage waits for trials that wait for their reference) — the jobs waiting for those decided in turn.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import and_, exists, select, update
from sqlalchemy.orm import Session, aliased

from farm.jobs.policy import (
    CANCELLED,
    FAILED,
    FINISHED_STATES,
    LOCAL_QUEUE,
    WAITING_STATES,
    Decision,
    Dependency,
    Ending,
    Message,
    Verdict,
    Waiter,
    verdict,
)
from farm.store import bulk
from farm.store.lifecycle import utcnow
from farm.store.models import Job, JobDependency


def dependents(session: Session, job_id: int, states: Sequence[str] | None = ("pending",)) -> list[int]:
    """Jobs that wait for ``job_id`` and are in ``states`` (None: in any state)."""
    stmt = select(JobDependency.job_id).where(JobDependency.depends_on_id == job_id)
    if states is not None:
        stmt = stmt.join(Job, Job.id == JobDependency.job_id).where(Job.state.in_(states))
    return list(session.scalars(stmt.order_by(JobDependency.job_id)))


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
    """The policy's verdict on the waiting jobs among ``job_ids``, and each waiter's (state, queue, stage).

    Only the dependencies that can decide a waiter are read: the first (in id order) that ended without
    succeeding, and one still unfinished; those that succeeded decide nothing. Each is one indexed lookup that
    stops at its first row, so a stage after N trials costs no more to decide at each trial's end than a trial
    (reading all N rows at each of N ends was O(N²)).
    """
    dep_job = aliased(Job)

    def first_dep(*where: Any) -> Any:
        return (
            select(JobDependency.depends_on_id)
            .join(dep_job, dep_job.id == JobDependency.depends_on_id)
            .where(JobDependency.job_id == Job.id, *where)
            .order_by(JobDependency.depends_on_id)
            .limit(1)
            .correlate(Job)
            .scalar_subquery()
        )

    blocker = first_dep(dep_job.state.in_((FAILED, CANCELLED))).label("blocker")
    unfinished = first_dep(dep_job.state.not_in(FINISHED_STATES)).label("unfinished")
    waiters: list[Waiter] = []
    routes: dict[int, tuple[str, str, str]] = {}
    for condition in bulk.in_values(session, Job.id, list(job_ids)):
        rows = session.execute(
            select(Job.id, Job.state, Job.queue, Job.stage, Job.role, blocker, unfinished).where(
                condition, Job.state.in_(WAITING_STATES)
            )
        ).all()
        for r in rows:
            routes[r.id] = (r.state, r.queue or "cpu", r.stage)
            deciding = sorted({d for d in (r.blocker, r.unfinished) if d is not None})
            waiters.append(Waiter(r.id, tuple(deciding), r.role))
    deps = _dependencies(session, sorted({d for w in waiters for d in w.deps}))
    # A dependency row whose job is gone cannot be (its FK); a waiter's missing dependency counts as failed.
    return verdict(sorted(waiters, key=lambda w: w.id), deps), routes


def _dependencies(session: Session, ids: Sequence[int]) -> dict[int, Dependency]:
    out: dict[int, Dependency] = {}
    for condition in bulk.in_values(session, Job.id, list(ids)):
        for r in session.execute(select(Job.id, Job.state, Job.role, Job.error).where(condition)):
            out[r.id] = Dependency(r.id, r.state, r.role, r.error)
    return out


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
    to a job already running that was claimed without dependents, or a stage's worker died between recording the
    jobs it added and deciding them). The reaper decides them each round."""
    dep, dep_job = aliased(JobDependency), aliased(Job)
    unfinished = exists().where(
        dep.job_id == Job.id, dep_job.id == dep.depends_on_id, dep_job.state.not_in(FINISHED_STATES)
    )
    has_deps = exists().where(JobDependency.job_id == Job.id)
    return list(
        session.scalars(
            select(Job.id).where(
                and_(Job.state == "pending", Job.queue.is_not(None), Job.queue != LOCAL_QUEUE), has_deps, ~unfinished
            )
        )
    )


def added_by(session: Session, stage_ids: Sequence[int]) -> list[int]:
    """The jobs the stage jobs ``stage_ids`` added (the jobs that wait for them), and those the stages among those
    added, and so on; in id order, without ``stage_ids`` themselves.

    A plan names its stage jobs but not what they added: re-submitting or re-running it keeps these in its sweep.
    """
    seen = set(stage_ids)
    out: list[int] = []
    frontier = list(stage_ids)
    while frontier:
        found: list[tuple[int, str]] = []
        for condition in bulk.in_values(session, JobDependency.depends_on_id, frontier):
            found += session.execute(
                select(JobDependency.job_id, Job.role).join(Job, Job.id == JobDependency.job_id).where(condition)
            ).all()
        frontier = []
        for job_id, role in sorted(set(found)):
            if job_id not in seen:
                seen.add(job_id)
                out.append(job_id)
                if role == "stage":
                    frontier.append(job_id)
    return sorted(out)


def ancestors(session: Session, job_ids: Sequence[int]) -> set[int]:
    """Every job the jobs ``job_ids`` wait for, directly or not (a stage must not add a job it waits for to wait
    for it: that would be a cycle)."""
    seen: set[int] = set()
    frontier = list(job_ids)
    while frontier:
        found: set[int] = set()
        for condition in bulk.in_values(session, JobDependency.job_id, frontier):
            found.update(session.scalars(select(JobDependency.depends_on_id).where(condition)))
        frontier = sorted(found - seen)
        seen |= found
    return seen
