"""What the runners and the CLI ask of the results database. Every function takes an open Session.

A job's own state changes (claim, lease, finish, fail) and the fan-in that settles a sweep are in
:mod:`farm.store.lifecycle`, re-exported here; this module persists plans, queues and re-queues jobs, and
answers the CLI.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import Table, delete, or_, select, text, update
from sqlalchemy.orm import Session, aliased

from farm.jobs.policy import Message
from farm.store import bulk

# A job's life (claim, lease, finish, fan-in) lives in farm.store.lifecycle; callers ask this module for both.
from farm.store.lifecycle import Claim as Claim
from farm.store.lifecycle import claim_job as claim_job
from farm.store.lifecycle import extend_lease as extend_lease
from farm.store.lifecycle import fail_job as fail_job
from farm.store.lifecycle import finish_job as finish_job
from farm.store.lifecycle import get_sweep as get_sweep
from farm.store.lifecycle import job_state as job_state
from farm.store.lifecycle import metric_rows as metric_rows
from farm.store.lifecycle import refresh_sweep_state as refresh_sweep_state
from farm.store.lifecycle import release_job as release_job
from farm.store.lifecycle import settle_stale_sweeps as settle_stale_sweeps
from farm.store.lifecycle import settle_sweeps as settle_sweeps
from farm.store.lifecycle import sweep_counts as sweep_counts
from farm.store.lifecycle import utcnow as utcnow
from farm.store.models import FINISHED_STATES, Artifact, Job, Metric, Sweep, SweepJob, Worker

_JOBS: Table = Job.__table__  # type: ignore[assignment]
_SWEEP_JOBS: Table = SweepJob.__table__  # type: ignore[assignment]
_METRICS: Table = Metric.__table__  # type: ignore[assignment]
_ARTIFACTS: Table = Artifact.__table__  # type: ignore[assignment]
_OUTER_LINKS, _INNER_LINKS = _SWEEP_JOBS.alias("outer_links"), _SWEEP_JOBS.alias("inner_links")


def _aware(moment: datetime) -> datetime:
    """SQLite hands back naive UTC datetimes; PostgreSQL aware ones."""
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


@dataclass(frozen=True)
class SweepRecord:
    """The outcome of :func:`create_sweep`."""

    sweep_id: int
    created: bool
    total: int
    cached: int
    to_run: list[int]
    ids: dict[str, int]


#: Key of the PostgreSQL advisory lock that serialises sweep creation ("QFSW").
CREATE_SWEEP_LOCK = 0x51465357


def create_sweep(
    session: Session,
    plan: Any,
    submitter: str | None,
    route: Callable[[Any], tuple[str, str, str | None]] | None = None,
) -> SweepRecord:
    """Persist a plan: the sweep (reused when the same name and spec were run before) and its jobs.

    Jobs are unique by key across the database: a job that already succeeded (in any sweep) is linked,
    not re-created, and counts as cached; failed or cancelled ones are reset to pending to run again.

    Args:
        session: an open session (the caller commits).
        plan: a :class:`farm.spec.Plan`.
        submitter: who asked.
        route: for the farm, (queue, stage, finish_queue) of a planned job: written with the new jobs as they
            are inserted, and set on the ones that will run again (as :func:`set_routes` does).

    Returns:
        The sweep id, whether it is new, and which jobs must run.
    """
    now = utcnow()
    if session.get_bind().dialect.name == "postgresql":
        # One creator at a time: two submits of one spec (or of specs sharing jobs) would each find no sweep and
        # no job, insert their own, and the second would fail on the first's job keys. Waiting here, the second
        # sees the first's sweep and jobs once it commits. (SQLite's BEGIN IMMEDIATE serialises writers already.)
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": CREATE_SWEEP_LOCK})
    sweep = session.scalar(select(Sweep).where(Sweep.name == plan.spec.name, Sweep.spec_hash == plan.spec_hash))
    created = sweep is None
    if sweep is None:
        sweep = Sweep(
            name=plan.spec.name,
            spec_text=plan.text,
            spec_hash=plan.spec_hash,
            submitter=submitter,
            created_at=now,
            state="pending",
        )
        session.add(sweep)
        session.flush()
    sweep_id = sweep.id

    ids = _ids_by_key(session, [j.key for j in plan.jobs])
    existing = set(ids.values())
    for role in ("reference", "trial"):
        new = [j for j in plan.jobs if j.role == role and j.key not in ids]
        rows = [
            {
                "key": j.key,
                "sweep_id": sweep_id,
                "role": j.role,
                "reference_job_id": ids.get(j.reference_key) if j.reference_key else None,
                "spec": j.spec.to_dict(),
                "state": "pending",
                "attempts": 0,
                "created_at": now,
                **j.columns(),
                **(dict(zip(("queue", "stage", "finish_queue"), route(j), strict=True)) if route else {}),
            }
            for j in new
        ]
        # Bulk INSERT ... RETURNING (farm.store.bulk), not ORM saves or a second SELECT by key: 10,000 jobs
        # must persist in well under 3 s on SQLite and PostgreSQL.
        for job_key, job_id in bulk.insert_rows(session, _JOBS, rows, returning=("key", "id")):
            ids[job_key] = job_id

    job_ids = [ids[j.key] for j in plan.jobs]
    # Re-running a sweep runs again what failed or was cancelled, with a fresh attempt budget.
    jobs = _JOBS.c
    for condition in bulk.in_values(session, jobs.id, job_ids):
        session.execute(
            update(_JOBS)
            .where(condition, jobs.state.in_(("failed", "cancelled")))
            .values(state="pending", attempts=0, worker_losses=0, error=None, worker=None, lease_expires_at=None)
        )
    links_c = _SWEEP_JOBS.c
    linked = set(session.scalars(select(links_c.job_id).where(links_c.sweep_id == sweep_id)))
    stale = sorted(linked - set(job_ids))  # the same spec text now means other jobs (e.g. new weights)
    for condition in bulk.in_values(session, links_c.job_id, stale):
        session.execute(delete(_SWEEP_JOBS).where(links_c.sweep_id == sweep_id, condition))
    links = [{"sweep_id": sweep_id, "job_id": i} for i in dict.fromkeys(job_ids) if i not in linked]
    bulk.insert_rows(session, _SWEEP_JOBS, links)

    states = _states(session, job_ids)
    cached = sum(1 for i in job_ids if states.get(i) == "succeeded")
    to_run = [i for i in job_ids if states.get(i) == "pending"]
    if route is not None:  # the new jobs have theirs already; those that run again get the current pools'
        again = set(to_run) & existing
        set_routes(session, {ids[j.key]: route(j) for j in plan.jobs if ids[j.key] in again})
    sweep.state = "running" if to_run or any(states.get(i) in ("queued", "running") for i in job_ids) else "succeeded"
    sweep.finished_at = None if sweep.state == "running" else now
    return SweepRecord(sweep_id, created, len(job_ids), cached, to_run, ids)


def mark_queued(session: Session, job_ids: Sequence[int], queue: str | None = None, owner: str | None = None) -> int:
    """pending -> queued for the given jobs; returns how many moved.

    Args:
        owner: the process that will hand the jobs to a worker (a local run), recorded in ``worker`` until one
            claims them, so that a later run can tell that jobs left queued by a dead one are abandoned.
    """
    moved = 0
    now = utcnow()
    for condition in bulk.in_values(session, Job.id, list(job_ids)):
        result = session.execute(
            update(Job)
            .where(condition, Job.state == "pending")
            .values(state="queued", queued_at=now, queue=queue, worker=owner)
            .execution_options(synchronize_session=False)
        )
        moved += result.rowcount  # type: ignore[attr-defined]
    return moved


def reset_abandoned(
    session: Session, job_ids: Sequence[int], is_gone: Callable[[str | None], bool], max_losses: int
) -> list[int]:
    """Local jobs among ``job_ids`` left queued or running by a process that is gone: back to pending.

    A running one counts a worker loss (its worker died under it), and fails once that is its
    ``max_losses``-th. Returns the ids reset to pending.
    """
    reset: list[int] = []
    for condition in bulk.in_values(session, Job.id, list(job_ids)):
        rows = session.execute(
            select(Job.id, Job.state, Job.worker, Job.worker_losses, Job.lease_expires_at).where(
                condition, Job.queue == "local", Job.state.in_(("queued", "running"))
            )
        ).all()
        now = utcnow()
        for row in rows:
            lease = row.lease_expires_at
            expired = row.state == "running" and lease is not None and _aware(lease) < now
            if not (expired or is_gone(row.worker)):
                continue
            losses = (row.worker_losses or 0) + (1 if row.state == "running" else 0)
            if losses >= max_losses:
                fail_job(
                    session,
                    row.id,
                    f"its worker process died {losses} times while running it (last: {row.worker}); not retried again",
                    worker=row.worker,
                )
                continue
            moved = session.execute(
                update(Job)
                .where(Job.id == row.id, Job.state == row.state, Job.worker == row.worker)
                .values(state="pending", worker=None, lease_expires_at=None, worker_losses=losses)
                .execution_options(synchronize_session=False)
            )
            if moved.rowcount == 1:  # type: ignore[attr-defined]
                reset.append(row.id)
    return reset


def requeue_lost(session: Session, job_id: int, state: str, worker: str | None, losses: int) -> bool:
    """A job whose local worker process died: back to pending, if it is still as it was read (``state``, held by
    ``worker``). Returns whether it moved."""
    moved = session.execute(
        update(_JOBS)
        .where(_JOBS.c.id == job_id, _JOBS.c.state == state, _JOBS.c.worker.is_not_distinct_from(worker))
        .values(state="pending", worker=None, lease_expires_at=None, worker_losses=losses)
    )
    return moved.rowcount == 1  # type: ignore[attr-defined]


def cancel_jobs(session: Session, job_ids: Sequence[int], reason: str = "cancelled") -> int:
    """Cancel every unfinished job among ``job_ids``; running ones stop at their next check."""
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


def sweep_job_ids(session: Session, sweep_id: int, states: Sequence[str] | None = None) -> list[int]:
    stmt = select(SweepJob.job_id).join(Job, Job.id == SweepJob.job_id).where(SweepJob.sweep_id == sweep_id)
    if states is not None:
        stmt = stmt.where(Job.state.in_(states))
    return list(session.scalars(stmt.order_by(SweepJob.job_id)))


def list_sweeps(session: Session, limit: int = 50) -> list[tuple[Sweep, dict[str, int]]]:
    sweeps = list(session.scalars(select(Sweep).order_by(Sweep.id.desc()).limit(limit)))
    return [(s, sweep_counts(session, s.id)) for s in sweeps]


def artifact_of(session: Session, job_id: int, kind: str) -> Artifact | None:
    return session.scalar(select(Artifact).where(Artifact.job_id == job_id, Artifact.kind == kind))


def _ids_by_key(session: Session, keys: Sequence[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for condition in bulk.in_values(session, _JOBS.c.key, list(keys)):
        out.update({row[0]: row[1] for row in session.execute(select(_JOBS.c.key, _JOBS.c.id).where(condition))})
    return out


def _states(session: Session, job_ids: Sequence[int]) -> dict[int, str]:
    out: dict[int, str] = {}
    for condition in bulk.in_values(session, _JOBS.c.id, list(job_ids)):
        out.update({row[0]: row[1] for row in session.execute(select(_JOBS.c.id, _JOBS.c.state).where(condition))})
    return out


# --- the farm ---------------------------------------------------------------------------------------------


def set_routes(session: Session, routes: dict[int, tuple[str, str, str | None]]) -> None:
    """Set (queue, stage, finish_queue) of pending jobs before they are queued."""
    by_route: dict[tuple[str, str, str | None], list[int]] = {}
    for job_id, route in routes.items():
        by_route.setdefault(route, []).append(job_id)
    for (queue, stage, finish_queue), ids in by_route.items():  # one UPDATE per route, not per job
        for condition in bulk.in_values(session, Job.id, ids):
            session.execute(
                update(Job)
                .where(condition, Job.state == "pending")
                .values(queue=queue, stage=stage, finish_queue=finish_queue)
                .execution_options(synchronize_session=False)
            )


def queue_ready(session: Session, job_ids: Sequence[int]) -> list[Message]:
    """pending -> queued for the jobs among ``job_ids`` that can start now (their fp32 reference succeeded,
    or they are references); returns the messages to send."""
    reference = aliased(Job)
    ready: list[Message] = []
    now = utcnow()
    for condition in bulk.in_values(session, Job.id, list(job_ids)):
        rows = session.execute(
            select(Job.id, Job.queue, Job.stage)
            .outerjoin(reference, reference.id == Job.reference_job_id)
            .where(
                condition,
                Job.state == "pending",
                or_(Job.reference_job_id.is_(None), reference.state == "succeeded"),
            )
        ).all()
        ids = [r.id for r in rows]
        for moving in bulk.in_values(session, Job.id, ids):
            session.execute(
                update(Job)
                .where(moving, Job.state == "pending")
                .values(state="queued", queued_at=now)
                .execution_options(synchronize_session=False)
            )
        ready += [Message(r.id, r.queue or "cpu", r.stage) for r in rows]
    return ready


def dependents(session: Session, reference_id: int, states: Sequence[str] = ("pending",)) -> list[int]:
    """Jobs that compare with ``reference_id`` and are in ``states``."""
    return list(session.scalars(select(Job.id).where(Job.reference_job_id == reference_id, Job.state.in_(states))))


def hand_off(session: Session, job_id: int, worker: str, checkpoint: Any) -> Message | None:
    """After the "train" stage: record the checkpoint and queue the "finish" stage on ``finish_queue``."""
    job = session.get(Job, job_id)
    if job is not None and job.state == "queued" and job.stage == "finish":
        # Done already, by this very hand-off whose COMMIT landed unseen (a retry after a lost answer): the same
        # message again, or the finish stage would never be sent.
        recorded = session.scalar(
            select(Artifact.uri).where(Artifact.job_id == job_id, Artifact.kind == "checkpoint").limit(1)
        )
        if recorded == checkpoint.uri:
            return Message(job_id, job.queue or job.finish_queue or "cpu", "finish")
    if job is None or job.state != "running" or job.worker != worker:
        return None
    now = utcnow()
    session.execute(delete(Artifact).where(Artifact.job_id == job_id, Artifact.kind == "checkpoint"))
    session.add(
        Artifact(
            job_id=job_id,
            kind="checkpoint",
            uri=checkpoint.uri,
            sha256=checkpoint.sha256,
            size_bytes=checkpoint.size_bytes,
            created_at=now,
        )
    )
    queue = job.finish_queue or "cpu"
    job.state, job.stage, job.queue, job.worker = "queued", "finish", queue, None
    job.lease_expires_at, job.queued_at, job.attempts, job.worker_losses = None, now, 0, 0
    return Message(job_id, queue, "finish")


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
    losses = (job.worker_losses or 0) + 1
    if losses >= max_attempts:
        fail_job(
            session,
            job.id,
            f"its worker died {losses} times while running it (last: {job.worker}); not retried again "
            f"(FARM_MAX_ATTEMPTS={max_attempts})",
            worker=job.worker,  # not if a late message took it over meanwhile
        )
        return None
    moved = session.execute(
        update(Job)
        .where(Job.id == job.id, Job.state == "running", Job.lease_expires_at < now)
        .values(state="queued", worker=None, lease_expires_at=None, queued_at=now, worker_losses=losses)
        .execution_options(synchronize_session=False)
    )
    if moved.rowcount != 1:  # type: ignore[attr-defined]
        return None  # another reaper got there first
    return Message(job.id, job.queue or "cpu", job.stage)


def reset_for_retry(session: Session, sweep_id: int, *, failed_only: bool) -> list[int]:
    """failed (and cancelled, unless ``failed_only``) -> pending with a fresh attempt budget."""
    states = ("failed",) if failed_only else ("failed", "cancelled")
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


def delete_new_sweep(session: Session, sweep_id: int) -> None:
    """Undo a sweep created moments ago (its messages could not be sent): its own jobs and links go too."""
    shared = select(SweepJob.job_id).where(SweepJob.sweep_id != sweep_id)
    own = list(session.scalars(select(Job.id).where(Job.sweep_id == sweep_id, Job.id.not_in(shared))))
    session.execute(delete(SweepJob).where(SweepJob.sweep_id == sweep_id))
    for condition in bulk.in_values(session, Job.id, own):
        session.execute(delete(Job).where(condition, Job.reference_job_id.is_not(None)))
    for condition in bulk.in_values(session, Job.id, own):
        session.execute(delete(Job).where(condition))
    session.execute(delete(Sweep).where(Sweep.id == sweep_id))


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


def list_workers(session: Session) -> list[Worker]:
    return list(session.scalars(select(Worker).order_by(Worker.hostname, Worker.name)))


def method_configs(session: Session, job_ids: Sequence[int]) -> dict[int, str]:
    """Each job's full method config as canonical JSON (what identifies a recipe across sweeps)."""
    out: dict[int, str] = {}
    for condition in bulk.in_values(session, Job.id, list(dict.fromkeys(job_ids))):
        for job_id, spec in session.execute(select(Job.id, Job.spec).where(condition)):
            out[job_id] = json.dumps(spec.get("method", {}), sort_keys=True, separators=(",", ":"))
    return out


RECOMPUTE_STORED_FIGURES = (
    "UPDATE metrics SET accuracy_drop = accuracy_fp32 - accuracy",
    """UPDATE metrics SET speedup = (
        SELECT CASE
            WHEN metrics.simulated OR metrics.latency_p50_ms IS NULL OR metrics.latency_p50_ms = 0
                OR r.latency_p50_ms IS NULL
            THEN NULL
            ELSE r.latency_p50_ms / metrics.latency_p50_ms
        END
        FROM jobs j
        JOIN metrics r
            ON r.job_id = COALESCE(j.reference_job_id, j.id)
            AND r.batch_size = metrics.batch_size
            AND r.hardware_id = metrics.hardware_id
        WHERE j.id = metrics.job_id
    )""",
)


def recompute_stored_figures(session: Session) -> None:
    """Recompute metrics.accuracy_drop and metrics.speedup from the other figures, for every row.

    Workers store both with each result; this is for rows written by other means (imports, fixtures).
    Speedup compares with the fp32 reference at the same batch size on the same hardware, NULL when simulated.
    """
    for statement in RECOMPUTE_STORED_FIGURES:
        session.execute(text(statement))
