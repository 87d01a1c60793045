"""What the runners and the CLI ask of the results database. Every function takes an open Session.

A job's own state changes (claim, lease, finish, fail) and the fan-in that settles a sweep are in
:mod:`farm.store.lifecycle`, persisting a plan in :mod:`farm.store.plans`, the job graph in
:mod:`farm.store.graph`, all re-exported here; this module re-queues jobs and answers the CLI.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import Table, delete, select, text, update
from sqlalchemy.orm import Session

from farm.jobs.policy import Message
from farm.store import bulk
from farm.store.graph import dependents as dependents

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

# Persisting a plan (farm.store.plans) and the job graph's decisions (farm.store.scheduling), asked for here too.
from farm.store.plans import CREATE_SWEEP_LOCK as CREATE_SWEEP_LOCK
from farm.store.plans import SweepRecord as SweepRecord
from farm.store.plans import create_sweep as create_sweep
from farm.store.plans import delete_new_sweep as delete_new_sweep
from farm.store.plans import set_routes as set_routes
from farm.store.scheduling import ExpiredJob as ExpiredJob
from farm.store.scheduling import expired_jobs as expired_jobs
from farm.store.scheduling import queue_ready as queue_ready
from farm.store.scheduling import requeue_expired as requeue_expired

_JOBS: Table = Job.__table__  # type: ignore[assignment]
_SWEEP_JOBS: Table = SweepJob.__table__  # type: ignore[assignment]
_METRICS: Table = Metric.__table__  # type: ignore[assignment]
_ARTIFACTS: Table = Artifact.__table__  # type: ignore[assignment]
_OUTER_LINKS, _INNER_LINKS = _SWEEP_JOBS.alias("outer_links"), _SWEEP_JOBS.alias("inner_links")


def _aware(moment: datetime) -> datetime:
    """SQLite hands back naive UTC datetimes; PostgreSQL aware ones."""
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


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


# --- the farm ---------------------------------------------------------------------------------------------


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


def record_heartbeat(db: Any, name: str, **row: Any) -> None:
    """:func:`heartbeat` in a transaction of its own (a worker's pool process, every few seconds)."""
    with db.session() as s:
        heartbeat(s, name, **row)


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
