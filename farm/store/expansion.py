"""The store side of a stage job (farm/jobs/stages.py): the results of the jobs it waits for, as plain data, and
the jobs it adds recorded with its own success in ONE transaction.

Adding is idempotent: jobs are unique by key (a stage run again after its worker died adds nothing twice), and
the jobs it adds wait for the stage itself, so that they are released by the stage's end like any other
dependents (farm.store.scheduling.job_ended), and never before its success is committed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, aliased

from farm.store import lifecycle, plans
from farm.store.models import Job, JobDependency, Metric, SweepJob


@dataclass(frozen=True)
class InputJob:
    """A job a stage waits for, with its result (the figures of its first batch-size row)."""

    id: int
    key: str
    role: str
    state: str
    spec: dict[str, Any]
    device: str
    reference_key: str | None
    route: tuple[str | None, str, str | None]
    figures: dict[str, Any] = field(default_factory=dict)


_FIGURES = ("accuracy", "accuracy_drop", "agreement", "sqnr_db", "size_bytes", "size_ratio", "latency_p50_ms")


def stage_inputs(db: Any, job_id: int) -> list[InputJob]:
    """The jobs ``job_id`` waits for, in id order, each with its figures (empty unless it succeeded)."""
    reference = aliased(Job)
    with db.session(write=False) as s:
        rows = s.execute(
            select(Job, reference.key.label("reference_key"))
            .join(JobDependency, JobDependency.depends_on_id == Job.id)
            .outerjoin(reference, reference.id == Job.reference_job_id)
            .where(JobDependency.job_id == job_id)
            .order_by(Job.id)
        ).all()
        figures = _figures(s, [row[0].id for row in rows])
        return [
            InputJob(
                job.id,
                job.key,
                job.role,
                job.state,
                dict(job.spec),
                job.device,
                ref_key,
                (job.queue, job.stage, job.finish_queue),
                figures.get(job.id, {}),
            )
            for job, ref_key in rows
        ]


def _figures(session: Session, job_ids: Sequence[int]) -> dict[int, dict[str, Any]]:
    out: dict[int, dict[str, Any]] = {}
    if not job_ids:
        return out
    columns = [getattr(Metric, name) for name in _FIGURES]
    rows = session.execute(
        select(Metric.job_id, *columns).where(Metric.job_id.in_(job_ids)).order_by(Metric.job_id, Metric.batch_size)
    ).all()
    for row in rows:
        out.setdefault(row[0], dict(zip(_FIGURES, row[1:], strict=True)))
    return out


def queue_of(db: Any, job_id: int) -> list[str]:
    """The queue of job ``job_id`` (a list of one; empty when it has none)."""
    with db.session(write=False) as s:
        queue = s.scalar(select(Job.queue).where(Job.id == job_id))
    return [queue] if queue else []


def record_stage(
    db: Any, job_id: int, worker: str, jobs: Sequence[Any], routes: dict[str, tuple[str, str, str | None]]
) -> tuple[str, list[int]]:
    """Add ``jobs`` (planned jobs: key, role, reference_key, depends_on, payload(), columns()) to every sweep of the
    stage ``job_id`` and record the stage's success, in one transaction, if ``worker`` still holds it.

    Args:
        routes: (queue, stage, finish_queue) of each new job by key.

    Returns:
        (the stage's state afterwards, ids of the jobs it created).
    """
    with db.session() as s:
        holder = s.execute(select(Job.state, Job.worker, Job.sweep_id).where(Job.id == job_id)).one_or_none()
        if holder is None or holder.state != "running" or holder.worker != worker:
            return (holder.state if holder is not None else "cancelled"), []
        keys = [j.key for j in jobs]
        wanted = keys + [k for j in jobs for k in ((j.reference_key,) if j.reference_key else ()) + tuple(j.depends_on)]
        ids = plans.ids_by_key(s, list(dict.fromkeys(wanted)))
        created = plans.insert_jobs(
            s, holder.sweep_id, jobs, ids, None, lifecycle.utcnow(), columns=lambda j: _route_columns(routes[j.key])
        )
        sweeps = list(s.scalars(select(SweepJob.sweep_id).where(SweepJob.job_id == job_id)))
        for sweep_id in sweeps:
            plans.link_jobs(s, sweep_id, [ids[k] for k in keys])
        lifecycle.finish_job(s, job_id, worker, {})
        return "succeeded", created


def _route_columns(route: tuple[str, str, str | None]) -> dict[str, Any]:
    return dict(zip(("queue", "stage", "finish_queue"), route, strict=True))
