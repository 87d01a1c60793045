"""A job's life in the results database: claimed, its lease renewed, finished or failed, and the fan-in that
settles a sweep when its last job ends. The runners do this for every job, so the statements are built once.

State changes are conditional updates (``UPDATE ... WHERE state = ...``): a job is claimed only if it is
queued (or running with an expired lease), and results are recorded only by the worker holding the
claim. A duplicate delivery or a worker that lost its lease therefore never writes a second result.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import Table, and_, bindparam, case, delete, exists, func, insert, literal_column, or_, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from farm.errors import NotFound
from farm.jobs.policy import FINISHED_STATES, UNFINISHED_STATES
from farm.store import bulk
from farm.store.metric_rows import metric_rows
from farm.store.models import Artifact, Job, JobDependency, Metric, Sweep, SweepJob

_JOBS: Table = Job.__table__  # type: ignore[assignment]
_SWEEP_JOBS: Table = SweepJob.__table__  # type: ignore[assignment]
_METRICS: Table = Metric.__table__  # type: ignore[assignment]
_ARTIFACTS: Table = Artifact.__table__  # type: ignore[assignment]
_DEPENDENCIES: Table = JobDependency.__table__  # type: ignore[assignment]
_OUTER_LINKS, _INNER_LINKS = _SWEEP_JOBS.alias("outer_links"), _SWEEP_JOBS.alias("inner_links")

# finish_job's RETURNING on PostgreSQL: is there a sweep of this job with no other unfinished job? It asks for
# the sweep's newest unfinished job, newest first: jobs mostly end in the order they were queued, so the first
# one probed is usually unfinished. A NOT EXISTS is planned as an anti-join that walks the sweep from its
# oldest jobs, finished by then, at a cost growing with the sweep for every job that ends; a scalar subquery
# with ORDER BY ... LIMIT 1 runs as written.
_MAY_SETTLE: Any = literal_column(
    "EXISTS (SELECT 1 FROM sweep_jobs AS o WHERE o.job_id = jobs.id AND ("
    "SELECT i.job_id FROM sweep_jobs AS i JOIN jobs AS other ON other.id = i.job_id WHERE i.sweep_id = o.sweep_id "
    "AND other.id <> jobs.id AND other.state IN ('pending', 'queued', 'running') "
    "ORDER BY i.job_id DESC LIMIT 1) IS NULL)"
)
# --- the statements of a job's life, built once ----------------------------------------------------------
# Every job runs these; building an UPDATE with its WHERE clause costs more than a round trip to the database,
# so they are built at import with bound parameters (``p_*``), and each call only binds values.
_NO_LIMIT = 2**31 - 1


def _claim_statement() -> Any:
    jobs = _JOBS.c
    expired = and_(
        jobs.state == "running",
        jobs.lease_expires_at < bindparam("p_now"),
        jobs.worker_losses + 1 < bindparam("p_max_losses"),
    )
    return (
        update(_JOBS)
        .where(jobs.id == bindparam("p_job"), or_(jobs.state == "queued", expired))
        .values(
            state="running",
            worker=bindparam("p_worker"),
            started_at=bindparam("p_now"),
            finished_at=None,
            lease_expires_at=bindparam("p_lease_until"),
            attempts=jobs.attempts + 1,
            worker_losses=case((jobs.state == "running", jobs.worker_losses + 1), else_=jobs.worker_losses),
        )
        .returning(
            jobs.key,
            jobs.spec,
            jobs.reference_job_id,
            jobs.stage,
            jobs.role,
            jobs.attempts,
            # Whether some job waits for this one, read in the claim itself: ending a job nobody waits for (most
            # trials) then asks for no decision, and costs no round trip more.
            exists().where(_DEPENDENCIES.c.depends_on_id == jobs.id).label("has_dependents"),
        )
    )


def _finish_statement() -> Any:
    jobs = _JOBS.c
    return (
        update(_JOBS)
        .where(jobs.id == bindparam("p_job"), jobs.state == "running", jobs.worker == bindparam("p_worker"))
        .values(
            state="succeeded",
            finished_at=bindparam("p_now"),
            lease_expires_at=None,
            error=None,
            duration_s=bindparam("p_duration"),
            hardware=bindparam("p_hardware"),
        )
    )


def _newest_unfinished(sweep_id: Any) -> Any:
    """The newest unfinished job of the sweep ``sweep_id`` (a column of the enclosing query), NULL when none:
    as _MAY_SETTLE, newest first, so that the first job probed usually answers."""
    links = _INNER_LINKS
    return (
        select(links.c.job_id)
        .join(_JOBS, _JOBS.c.id == links.c.job_id)
        .where(links.c.sweep_id == sweep_id, _JOBS.c.state.in_(UNFINISHED_STATES))
        .order_by(links.c.job_id.desc())
        .limit(1)
        .scalar_subquery()
    )


_CLAIM = _claim_statement()
_EXTEND_LEASE = (
    update(_JOBS)
    .where(_JOBS.c.id == bindparam("p_job"), _JOBS.c.state == "running", _JOBS.c.worker == bindparam("p_worker"))
    .values(lease_expires_at=bindparam("p_lease_until"))
    .returning(_JOBS.c.id)
)
_FINISH = _finish_statement().returning(_JOBS.c.attempts)
_FINISH_PG = _finish_statement().returning(_JOBS.c.attempts, _MAY_SETTLE)
_SETTLED = select(_OUTER_LINKS.c.sweep_id).where(
    _OUTER_LINKS.c.job_id == bindparam("p_job"), _newest_unfinished(_OUTER_LINKS.c.sweep_id).is_(None)
)
_INSERT_METRICS = insert(_METRICS)
_INSERT_ARTIFACTS = insert(_ARTIFACTS)


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def as_utc(moment: datetime) -> datetime:
    """``moment`` as an aware UTC datetime: SQLite hands back naive UTC datetimes, PostgreSQL aware ones."""
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


@dataclass(frozen=True)
class Claim:
    """A job this worker now holds (what running it needs, read in the claiming statement itself)."""

    id: int
    key: str
    spec: dict[str, Any]
    reference_job_id: int | None
    stage: str
    role: str
    attempts: int
    worker: str
    state: str = "running"
    #: Some job waits for this one (a reference's trials, a stage's inputs): its end must be decided.
    has_dependents: bool = False


def claim_job(
    session: Session | Connection, job_id: int, worker: str, lease_s: float, *, max_losses: int | None = None
) -> Claim | None:
    """Take a queued job (or a running one whose lease expired) for ``worker``: one conditional UPDATE.

    Only queued jobs are claimable, never pending ones: a stray message must not start a job whose reference
    has not succeeded. Taking over an expired lease counts a worker loss, and is refused once that would be
    the ``max_losses``-th (the reaper then fails the job with the reason).

    Returns:
        The claim, or None when someone else has the job, it is finished, or it is not queued yet.
    """
    now = utcnow()
    params = {
        "p_job": job_id,
        "p_now": now,
        "p_worker": worker,
        "p_lease_until": now + timedelta(seconds=lease_s),
        "p_max_losses": _NO_LIMIT if max_losses is None else max_losses,
    }
    row = session.execute(_CLAIM, params).one_or_none()
    if row is None:
        return None
    return Claim(
        job_id,
        row.key,
        row.spec,
        row.reference_job_id,
        row.stage,
        row.role,
        row.attempts,
        worker,
        has_dependents=bool(row.has_dependents),
    )


def extend_lease(session: Session, job_id: int, worker: str, lease_s: float) -> str | None:
    """Renew ``worker``'s lease on a running job.

    Returns:
        The job's state ("running" means: carry on), or "lost" when another worker holds it now.
    """
    params = {"p_job": job_id, "p_worker": worker, "p_lease_until": utcnow() + timedelta(seconds=lease_s)}
    if session.execute(_EXTEND_LEASE, params).first() is not None:
        return "running"
    row = session.execute(select(_JOBS.c.state, _JOBS.c.worker).where(_JOBS.c.id == job_id)).one_or_none()
    if row is None:
        return None
    state, owner = row
    return state if owner == worker or state != "running" else "lost"


def finish_job(
    session: Session,
    job_id: int,
    worker: str,
    result: dict[str, Any],
    artifacts: Iterable[tuple[str, Any]] = (),
) -> bool:
    """Record a successful result, if ``worker`` still holds the job, and settle the sweeps it was the last of.

    Args:
        result: ``JobResult.to_dict()``.
        artifacts: (kind, StoredObject) pairs, already uploaded and verified.

    Returns:
        False when the job was cancelled or taken over meanwhile (nothing is written).
    """
    now = utcnow()
    params = {
        "p_job": job_id,
        "p_worker": worker,
        "p_now": now,
        "p_duration": result.get("duration_s"),
        "p_hardware": result.get("hardware"),
    }
    if bulk.is_postgresql(session):
        # Whether some sweep of this job has no other unfinished job, asked in the same statement (a round trip
        # less per job); the subquery sees the other rows as they were when the statement began.
        row = session.execute(_FINISH_PG, params).one_or_none()
        attempts, may_settle = (None, False) if row is None else (row[0], bool(row[1]))
    else:
        attempts, may_settle = session.execute(_FINISH, params).scalar_one_or_none(), True
    if attempts is None:
        return False
    stored_artifacts = list(artifacts)
    kinds = [kind for kind, _ in stored_artifacts]
    # Only a successful run writes metrics and artifact rows, and a succeeded job is never claimed again; the
    # rows of another attempt can only be there after a takeover, so a first attempt skips the two DELETEs.
    if attempts > 1:
        session.execute(delete(Metric).where(Metric.job_id == job_id))
        if kinds:
            session.execute(delete(Artifact).where(Artifact.job_id == job_id, Artifact.kind.in_(kinds)))
    rows = metric_rows(job_id, result)
    if rows:
        session.execute(_INSERT_METRICS, rows)
    stored = [
        {
            "job_id": job_id,
            "kind": kind,
            "uri": obj.uri,
            "sha256": obj.sha256,
            "size_bytes": obj.size_bytes,
            "created_at": now,
        }
        for kind, obj in stored_artifacts
    ]
    if stored:
        session.execute(_INSERT_ARTIFACTS, stored)
    if may_settle:
        settle_sweeps(session, job_id)
    return True


def fail_job(session: Session, job_id: int, error: str, *, worker: str | None = None, state: str = "failed") -> bool:
    """End a job as failed (or cancelled) with a reason; with ``worker``, only if it still holds the job."""
    conditions = [Job.id == job_id, Job.state.not_in(FINISHED_STATES)]
    if worker is not None:
        conditions.append(Job.worker == worker)
    moved = session.execute(
        update(Job)
        .where(*conditions)
        .values(state=state, error=error[:4000], finished_at=utcnow(), lease_expires_at=None)
        .execution_options(synchronize_session=False)
    )
    return moved.rowcount == 1  # type: ignore[attr-defined]


def release_job(session: Session, job_id: int, worker: str, error: str) -> bool:
    """Hand a running job back to the queue (a transient failure that will be retried).

    Its retry message goes out now (held by the worker until its countdown ends, where the broker's queue length
    does not show it): ``queued_at`` says so, and the reaper leaves it alone for ``FARM_REQUEUE_AFTER_S``.
    """
    moved = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.state == "running", Job.worker == worker)
        .values(state="queued", error=error[:4000], lease_expires_at=None, queued_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    return moved.rowcount == 1  # type: ignore[attr-defined]


def put_back(session: Session, job_id: int, losses: int, *, held: Any, queued_at: datetime | None = None) -> bool:
    """A job whose worker died under it goes back to wait for another, if it is still ``held`` as it was read.

    The one statement for "its worker is gone, run it again": the worker and its lease cleared and the loss
    counted; the job is pending (its dependencies decide again when it is released), or queued when
    ``queued_at`` says its message is sent again now.

    Args:
        losses: the job's worker losses, this one included.
        held: the condition the job must still meet (its state and worker, or its lease expired), so that a
            job taken over or ended meanwhile is left alone.
        queued_at: put it back queued, sent at this time, instead of pending.

    Returns:
        Whether the job moved.
    """
    state = "pending" if queued_at is None else "queued"
    values: dict[str, Any] = {"state": state, "worker": None, "lease_expires_at": None, "worker_losses": losses}
    if queued_at is not None:
        values["queued_at"] = queued_at
    moved = session.execute(update(_JOBS).where(_JOBS.c.id == job_id, held).values(**values))
    return moved.rowcount == 1  # type: ignore[attr-defined]


def job_state(session: Session, job_id: int) -> str | None:
    return session.scalar(select(Job.state).where(Job.id == job_id))


def sweep_counts(session: Session, sweep_id: int) -> dict[str, int]:
    """Number of the sweep's jobs in each state."""
    rows = session.execute(
        select(Job.state, func.count())
        .join(SweepJob, SweepJob.job_id == Job.id)
        .where(SweepJob.sweep_id == sweep_id)
        .group_by(Job.state)
    ).all()
    return {state: int(n) for state, n in rows}


def refresh_sweep_state(session: Session, sweep_id: int) -> str:
    """Derive the sweep's state from its jobs' (fan-in is tracked here, in the database)."""
    counts = sweep_counts(session, sweep_id)
    if any(counts.get(s) for s in UNFINISHED_STATES):
        state = "running"
    elif counts.get("failed"):
        state = "failed"
    elif counts.get("cancelled"):
        state = "cancelled"
    else:
        state = "succeeded"
    sweep = get_sweep(session, sweep_id)
    if sweep.state != state:
        sweep.state = state
        sweep.finished_at = None if state == "running" else utcnow()
    return state


def settle_sweeps(session: Session, job_id: int) -> list[int]:
    """After a job ended: re-derive the state of each sweep of the job that has no unfinished job left.

    One query in the usual case (other jobs still unfinished): fan-in costs nothing per job until the last.
    """
    done = list(session.scalars(_SETTLED, {"p_job": job_id}))
    for sweep_id in done:
        refresh_sweep_state(session, sweep_id)
    return done


def get_sweep(session: Session, sweep_id: int) -> Sweep:
    """Raises: NotFound."""
    sweep = session.get(Sweep, sweep_id)
    if sweep is None:
        raise NotFound(f"no sweep with id {sweep_id}")
    return sweep


def settle_stale_sweeps(session: Session) -> list[int]:
    """Re-derive the state of every sweep still marked running that has no unfinished job left.

    The safety net for :func:`settle_sweeps`: on PostgreSQL, the last two jobs of a sweep ending at the same
    moment each see the other still running, and neither settles the sweep. The reaper calls this each round.

    Returns:
        The ids of the sweeps settled.
    """
    done = _newest_unfinished(Sweep.id).is_(None)
    stale = list(session.scalars(select(Sweep.id).where(Sweep.state == "running", done)))
    for sweep_id in stale:
        refresh_sweep_state(session, sweep_id)
    return stale
