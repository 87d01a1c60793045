"""The store side of a stage job (farm/jobs/stages.py): the results of the jobs it waits for, as plain data, and
the jobs it adds recorded with its own success in ONE transaction.

Adding is idempotent: jobs are unique by key (a stage run again after its worker died adds nothing twice), and
the jobs it adds wait for the stage itself, so that they are released by the stage's end like any other
dependents (farm.store.scheduling.job_ended), and never before its success is committed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, aliased

from farm.errors import NotFound
from farm.store import graph, lifecycle, plans
from farm.store.models import Artifact, Job, JobDependency, Metric, Sweep, SweepJob


@dataclass(frozen=True)
class InputJob:
    """A job a stage waits for, with its result (the figures of its first batch-size row); read for a whole sweep
    (:func:`sweep_jobs`) it also names its model artifact, its error and when it ran."""

    id: int
    key: str
    role: str
    state: str
    spec: dict[str, Any]
    device: str
    reference_key: str | None
    route: tuple[str | None, str, str | None]
    figures: dict[str, Any] = field(default_factory=dict)
    artifact_uri: str | None = None
    error: str | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    #: The expander of the stage job that added it (None: planned up front).
    added_by: str | None = None
    #: How long it ran, in seconds (None: it has not finished, or ended without running).
    duration_s: float | None = None


_FIGURES = (
    "batch_size",
    "accuracy",
    "accuracy_fp32",
    "accuracy_drop",
    "agreement",
    "sqnr_db",
    "cosine",
    "health",
    "size_bytes",
    "size_ratio",
    "latency_p50_ms",
    "latency_p50_ci_low_ms",
    "latency_p50_ci_high_ms",
    "speedup",
    "speedup_ci_low",
    "speedup_ci_high",
    "simulated",
)


@dataclass(frozen=True)
class SweepHead:
    """A sweep's name, state, spec text and times (what ``farm tune status`` and ``list`` read)."""

    id: int
    name: str
    state: str
    spec_text: str
    created_at: datetime
    finished_at: datetime | None


def sweep_head(db: Any, sweep_id: int) -> SweepHead:
    """The sweep ``sweep_id``.

    Raises:
        NotFound: no such sweep.
    """
    with db.session(write=False) as s:
        sw = s.get(Sweep, sweep_id)
        if sw is None:
            raise NotFound(f"no sweep (tune) with id {sweep_id}")
        return SweepHead(sw.id, sw.name, sw.state, sw.spec_text, sw.created_at, sw.finished_at)


def sweep_heads(db: Any, contains: str, limit: int) -> list[SweepHead]:
    """The newest ``limit`` sweeps whose spec text contains ``contains`` (a cheap pre-filter; callers parse)."""
    with db.session(write=False) as s:
        rows = s.scalars(
            select(Sweep).where(Sweep.spec_text.contains(contains)).order_by(Sweep.id.desc()).limit(limit)
        ).all()
        return [SweepHead(sw.id, sw.name, sw.state, sw.spec_text, sw.created_at, sw.finished_at) for sw in rows]


def sweep_jobs(db: Any, sweep_id: int, *, figures: bool = True) -> list[InputJob]:
    """Every job of sweep ``sweep_id`` (its own and those it reuses), in id order, with figures (left empty with
    ``figures=False``: a progress count needs none), model artifact, error and times."""
    reference = aliased(Job)
    with db.session(write=False) as s:
        rows = s.execute(
            select(Job, reference.key.label("reference_key"), Artifact.uri)
            .join(SweepJob, SweepJob.job_id == Job.id)
            .outerjoin(reference, reference.id == Job.reference_job_id)
            .outerjoin(Artifact, (Artifact.job_id == Job.id) & (Artifact.kind == "model"))
            .where(SweepJob.sweep_id == sweep_id)
            .order_by(Job.id)
        ).all()
        read = _figures(s, [row[0].id for row in rows]) if figures else {}
        stage = aliased(Job)
        # The sweep's own stage jobs only: a job another sweep's stage also added (equal keys, one job) keeps, here,
        # the stage of this sweep that added it, or none.
        stage_of_sweep = aliased(SweepJob)
        added = s.execute(
            select(JobDependency.job_id, stage.spec)
            .join(stage, stage.id == JobDependency.depends_on_id)
            .join(SweepJob, SweepJob.job_id == JobDependency.job_id)
            .join(stage_of_sweep, (stage_of_sweep.job_id == stage.id) & (stage_of_sweep.sweep_id == sweep_id))
            .where(SweepJob.sweep_id == sweep_id, stage.role == "stage")
        ).all()
        added_by = {job_id: str(spec.get("stage")) for job_id, spec in added}
        return [
            _input_job(job, ref_key, read, uri, job.error, job.started_at, job.finished_at, added_by.get(job.id))
            for job, ref_key, uri in rows
        ]


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
        return [_input_job(job, ref_key, figures) for job, ref_key in rows]


def _input_job(job: Job, ref_key: str | None, figures: dict[int, dict[str, Any]], *extra: Any) -> InputJob:
    """A job row as plain data, with its figures; ``extra``: the fields after them (artifact, error, times)."""
    route = (job.queue, job.stage, job.finish_queue)
    read = InputJob(job.id, job.key, job.role, job.state, dict(job.spec), job.device, ref_key, route,
                    figures.get(job.id, {}), *extra)  # fmt: skip
    return replace(read, duration_s=job.duration_s)


def _figures(session: Session, job_ids: Sequence[int]) -> dict[int, dict[str, Any]]:
    out: dict[int, dict[str, Any]] = {}
    if not job_ids:
        return out
    columns = [getattr(Metric, name) for name in _FIGURES]
    # Other runtimes' fp32 timed side by side with the trial (benchmark.rivals; farm.quant.timed_calls): read out
    # of metrics.extra by the database, not the whole document (a tune reads every job's figures as each ends).
    rivals = Metric.extra["latency"]["rivals"]
    rows = session.execute(
        select(Metric.job_id, *columns, rivals)
        .where(Metric.job_id.in_(job_ids))
        .order_by(Metric.job_id, Metric.batch_size)
    ).all()
    for row in rows:
        if row[0] not in out:
            out[row[0]] = {**dict(zip(_FIGURES, row[1:-1], strict=True)), "rivals": row[-1]}
    return out


def queue_of(db: Any, job_id: int) -> list[str]:
    """The queue of job ``job_id`` (a list of one; empty when it has none)."""
    with db.session(write=False) as s:
        queue = s.scalar(select(Job.queue).where(Job.id == job_id))
    return [queue] if queue else []


def record_stage(
    db: Any, job_id: int, worker: str, jobs: Sequence[Any], routes: dict[str, tuple[str, str, str | None]]
) -> str:
    """Add ``jobs`` (planned jobs: key, role, reference_key, depends_on, payload(), columns()) to every sweep of the
    stage ``job_id`` and record the stage's success, in one transaction, if ``worker`` still holds it.

    Every job it adds waits for it, a new one as an existing one (jobs are unique by key: another sweep's, or a
    job it added before it failed); that row is how its sweeps' re-submits find them
    (:func:`farm.store.graph.added_by`) and how its end releases them (its decision's ``added``). An existing one
    that failed or was cancelled runs again, routed like the new ones. A job the stage itself waits for (an
    input the expander asked for again) is only linked: waiting for the stage would be a cycle.

    Args:
        routes: (queue, stage, finish_queue) of each new job by key.

    Returns:
        The stage's state afterwards ("succeeded", or the state it was found in when no longer ``worker``'s).
    """
    with db.session() as s:
        plans.lock_job_creation(s)  # a submit (or another stage) inserting the same keys waits, or we do
        holder = s.execute(select(Job.state, Job.worker, Job.sweep_id).where(Job.id == job_id)).one_or_none()
        if holder is None or holder.state != "running" or holder.worker != worker:
            return holder.state if holder is not None else "cancelled"
        keys = list(dict.fromkeys(j.key for j in jobs))
        wanted = keys + [k for j in jobs for k in ((j.reference_key,) if j.reference_key else ()) + tuple(j.depends_on)]
        ids = plans.ids_by_key(s, list(dict.fromkeys(wanted)))
        existing = sorted({ids[k] for k in keys if k in ids} - graph.ancestors(s, [job_id]) - {job_id})
        plans.insert_jobs(
            s, holder.sweep_id, jobs, ids, None, lifecycle.utcnow(), columns=lambda j: _route_columns(routes[j.key])
        )
        waiting = set(graph.dependents(s, job_id, None))
        plans.add_dependencies(s, [(i, job_id) for i in existing if i not in waiting])
        again = set(plans.reset_ended(s, existing))
        plans.set_routes(s, {ids[k]: routes[k] for k in keys if ids[k] in again})
        for sweep_id in s.scalars(select(SweepJob.sweep_id).where(SweepJob.job_id == job_id)).all():
            plans.link_jobs(s, sweep_id, [ids[k] for k in keys])
        lifecycle.finish_job(s, job_id, worker, {})
        return "succeeded"


def _route_columns(route: tuple[str, str, str | None]) -> dict[str, Any]:
    return dict(zip(("queue", "stage", "finish_queue"), route, strict=True))
