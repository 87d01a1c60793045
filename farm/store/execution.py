"""What a worker's execution of one job reads and writes: the claim, the lease, the fp32 reference or qat
checkpoint it needs, and how the job ends (recorded, handed back, failed, cancelled, handed off to its finish
stage).

Database-level functions: each takes the :class:`farm.store.db.Database`, opens its own transaction (or, for the
claim, a single autocommitted statement) and returns plain values, so that farm/jobs never holds a session or an
ORM row. Each is ONE transaction, as the job's hot path was before it was sealed: a no-op job costs a claim, a
record, and nothing else (bench/farm_overhead.py).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, delete, select
from sqlalchemy.orm import Session

from farm.jobs.policy import Message
from farm.store import artifact_refs, lifecycle
from farm.store.lifecycle import Claim, utcnow
from farm.store.models import Artifact, Job


@dataclass(frozen=True)
class StoredFile:
    """An artifact a job needs, as recorded: where it is and the sha256 it must match."""

    uri: str
    sha256: str


@dataclass(frozen=True)
class ReferenceInfo:
    """The fp32 reference job a trial compares with, as the trial finds it when it starts.

    Attributes:
        state: the reference job's state (None when there is no such job).
        error: why it failed or was cancelled.
        file: its recorded ``reference.pt``, once it succeeded.
    """

    job_id: int
    state: str | None
    error: str | None
    file: StoredFile | None


@dataclass(frozen=True)
class Recorded:
    """How recording a result went.

    Attributes:
        state: the job's state after the attempt ("succeeded" also when another attempt recorded it).
        recorded: whether THIS call wrote the result (then the artifact rows are this attempt's, no need to ask).
    """

    state: str
    recorded: bool


def claim(db: Any, job_id: int, worker: str, lease_s: float, *, max_losses: int | None = None) -> Claim | None:
    """Take a queued job (or one whose lease expired) for ``worker``: one conditional UPDATE, autocommitted.

    Returns:
        The claim, or None when someone else has the job, it is finished, or it is not queued yet
        (see :func:`farm.store.lifecycle.claim_job`).
    """
    with db.autocommit() as conn:  # atomic on its own: no transaction around it, one round trip
        return lifecycle.claim_job(conn, job_id, worker, lease_s, max_losses=max_losses)


def checkpoint_of(db: Any, job_id: int) -> StoredFile | None:
    """The fine-tuning checkpoint a qat job's train stage recorded (what its finish stage converts)."""
    with db.session(write=False) as s:
        row = artifact_of(s, job_id, "checkpoint")
        return StoredFile(row.uri, row.sha256) if row is not None else None


def reference_of(db: Any, reference_id: int) -> ReferenceInfo:
    """The fp32 reference job ``reference_id``: its state, error and recorded ``reference.pt``, in one query."""
    stmt = (
        select(Job.state, Job.error, Artifact.uri, Artifact.sha256)
        .outerjoin(Artifact, and_(Artifact.job_id == Job.id, Artifact.kind == "reference"))
        .where(Job.id == reference_id)
        .limit(1)
    )
    with db.session(write=False) as s:
        row = s.execute(stmt).one_or_none()
    if row is None:
        return ReferenceInfo(reference_id, None, None, None)
    file = StoredFile(row.uri, row.sha256) if row.uri is not None and row.sha256 is not None else None
    return ReferenceInfo(reference_id, row.state, row.error, file)


def extend_lease(db: Any, job_id: int, worker: str, lease_s: float) -> str | None:
    """Renew ``worker``'s lease on a running job.

    Returns:
        The job's state ("running" means: carry on), "lost" when another worker holds it now, None when the job
        is gone.
    """
    with db.session() as s:
        return lifecycle.extend_lease(s, job_id, worker, lease_s)


def record_result(
    db: Any, job_id: int, worker: str, result: dict[str, Any], stored: Iterable[tuple[str, Any]]
) -> Recorded:
    """Record a success if ``worker`` still holds the job, settling the sweeps it was the last of.

    The conditional UPDATE records nothing twice: had an earlier COMMIT landed unseen, a retry finds the job
    succeeded already (``recorded`` False). The winner that recorded in this very COMMIT asks nothing more.

    Args:
        result: ``JobResult.to_dict()``.
        stored: (kind, StoredObject) pairs, already uploaded and verified.
    """
    with db.session() as s:
        recorded = lifecycle.finish_job(s, job_id, worker, result, stored)  # settles when last
        if recorded:
            return Recorded("succeeded", True)
        state = lifecycle.job_state(s, job_id) or "cancelled"
        lifecycle.settle_sweeps(s, job_id)
    return Recorded(state, False)


def hand_off(db: Any, job_id: int, worker: str, checkpoint: Any) -> Message | None:
    """After a qat job's train stage: record the checkpoint and queue the finish stage.

    Returns:
        The finish stage's message (the same one again for a retry whose first COMMIT landed unseen), or None when
        the job is no longer this worker's.
    """
    with db.session() as s:
        return queue_finish_stage(s, job_id, worker, checkpoint)


def release(db: Any, job_id: int, worker: str, reason: str) -> bool:
    """Hand the job back to the queue (a transient failure the caller retries), if ``worker`` still holds it."""
    with db.session() as s:
        return lifecycle.release_job(s, job_id, worker, f"retrying: {reason}")


def end_job(db: Any, job_id: int, worker: str | None, state: str, error: str) -> str:
    """End the job as ``state`` ("failed" or "cancelled") with ``error`` if ``worker`` still holds it (any worker
    when None), and settle its sweeps.

    Returns:
        The job's state afterwards (another ending may have come first).
    """
    with db.session() as s:
        lifecycle.fail_job(s, job_id, error, worker=worker, state=state)
        final = lifecycle.job_state(s, job_id) or state
        lifecycle.settle_sweeps(s, job_id)
    return final


def recorded_here(db: Any, job_id: int, uris: Sequence[str]) -> bool:
    """Whether the job's recorded artifact rows point at one of ``uris`` (the rows of one record are written
    together: one match says the record was the attempt that uploaded them)."""
    with db.session(write=False) as s:
        return artifact_refs.points_at(s, job_id, uris)


def artifact_of(session: Session, job_id: int, kind: str) -> Artifact | None:
    """The job's artifact row of ``kind`` (its checkpoint, its reference), if recorded."""
    return session.scalar(select(Artifact).where(Artifact.job_id == job_id, Artifact.kind == kind))


def queue_finish_stage(session: Session, job_id: int, worker: str, checkpoint: Any) -> Message | None:
    """:func:`hand_off` in the caller's session: record the checkpoint and queue the "finish" stage on the job's
    ``finish_queue``."""
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
