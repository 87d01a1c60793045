"""Persisting a plan: the sweep (reused when the same name and spec were run before), its jobs (unique by key
across the database), the links between them, and the job graph (``job_dependencies``).

A sweep of 10,000 jobs persists in well under 3 s on SQLite and PostgreSQL: every write is a bulk statement
(:mod:`farm.store.bulk`), never one ORM save per job.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Table, delete, or_, select, text, true, update
from sqlalchemy.orm import Session

from farm.jobs.contract import JobSpec
from farm.jobs.policy import LOCAL_QUEUE, LOCAL_RUN_TAKES
from farm.quant.recipe import recipe_label
from farm.store import bulk
from farm.store.graph import added_by
from farm.store.lifecycle import utcnow
from farm.store.models import Job, JobDependency, Sweep, SweepJob

_JOBS: Table = Job.__table__  # type: ignore[assignment]
_SWEEP_JOBS: Table = SweepJob.__table__  # type: ignore[assignment]
_DEPENDENCIES: Table = JobDependency.__table__  # type: ignore[assignment]

#: (queue, stage, finish_queue) of a planned job on the farm.
Route = Callable[[Any], tuple[str, str, "str | None"]]

#: Key of the PostgreSQL advisory lock that serialises sweep creation ("QFSW").
CREATE_SWEEP_LOCK = 0x51465357


@dataclass(frozen=True)
class SweepRecord:
    """The outcome of :func:`create_sweep`."""

    sweep_id: int
    created: bool
    total: int
    cached: int
    to_run: list[int]
    ids: dict[str, int]


def create_sweep(session: Session, plan: Any, submitter: str | None, route: Route | None = None) -> SweepRecord:
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
    lock_job_creation(session)
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
    ids = ids_by_key(session, [j.key for j in plan.jobs])
    existing = set(ids.values())
    insert_jobs(session, sweep.id, plan.jobs, ids, route, now)
    planned = [ids[j.key] for j in plan.jobs]
    # What the plan's stage jobs added (a re-submit or re-run of a staged spec) is the plan's too: it stays
    # linked, and runs again with the rest when it failed or was cancelled.
    added = _added(session, [ids[j.key] for j in plan.jobs if j.role == "stage"], set(planned))
    ids.update(added)
    job_ids = planned + list(added.values())
    reset = reset_ended(session, job_ids)  # re-running a sweep runs again what failed or was cancelled
    link_jobs(session, sweep.id, job_ids, replace=True)
    states = _states(session, job_ids)
    to_run = [i for i in job_ids if states.get(i) == "pending"]
    if route is not None:  # the new jobs have theirs already; those that run again get the current pools'
        again = set(to_run) & existing
        routes = {ids[j.key]: route(j) for j in plan.jobs if ids[j.key] in again}
        routes.update({i: route(job) for i, job in _as_planned(session, sorted(again & set(added.values())))})
        set_routes(session, routes, taken=reset)
    sweep.state = "running" if to_run or any(states.get(i) in ("queued", "running") for i in job_ids) else "succeeded"
    sweep.finished_at = None if sweep.state == "running" else now
    cached = sum(1 for i in job_ids if states.get(i) == "succeeded")
    return SweepRecord(sweep.id, created, len(job_ids), cached, to_run, ids)


def lock_job_creation(session: Session) -> None:
    """One creator of jobs at a time (a submit, a local run, a stage adding jobs), until the transaction ends.

    Two creators of one key (two submits of one spec, or a submit and a stage adding the same job) would each
    find no job, insert their own, and the second would fail on the first's key. Waiting here, the second sees
    the first's jobs once it commits. (SQLite's BEGIN IMMEDIATE serialises writers already.)
    """
    if bulk.is_postgresql(session):
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": CREATE_SWEEP_LOCK})


def _added(session: Session, stage_ids: Sequence[int], planned: set[int]) -> dict[str, int]:
    """Ids by key of the jobs the stage jobs ``stage_ids`` added (farm.store.graph.added_by) that the plan does
    not name itself."""
    extra = [i for i in added_by(session, stage_ids) if i not in planned]
    out: dict[str, int] = {}
    for condition in bulk.in_values(session, _JOBS.c.id, extra):
        out.update({r[0]: r[1] for r in session.execute(select(_JOBS.c.key, _JOBS.c.id).where(condition))})
    return dict(sorted(out.items(), key=lambda kv: kv[1]))


@dataclass(frozen=True)
class _Stored:
    """What a route needs of a job (its method config and device), read back from a job a stage added."""

    method: Any
    device: str


def _as_planned(session: Session, job_ids: Sequence[int]) -> list[tuple[int, _Stored]]:
    """Jobs a stage added, as a route reads them: they run again, routed by the current pools like the plan's.
    (A stage a stage added keeps its route: its spec names an expander, not a method.)"""
    out: list[tuple[int, _Stored]] = []
    for condition in bulk.in_values(session, _JOBS.c.id, list(job_ids)):
        rows = session.execute(
            select(_JOBS.c.id, _JOBS.c.spec, _JOBS.c.device).where(condition, _JOBS.c.role != "stage")
        )
        out += [(r.id, _Stored(JobSpec.from_dict(dict(r.spec)).method, r.device)) for r in rows]
    return sorted(out, key=lambda pair: pair[0])


def insert_jobs(
    session: Session,
    sweep_id: int,
    jobs: Sequence[Any],
    ids: dict[str, int],
    route: Route | None,
    now: datetime,
    columns: Callable[[Any], dict[str, Any]] | None = None,
) -> list[int]:
    """Insert the planned ``jobs`` whose key is not in ``ids`` (references first: the others point at them), and
    their dependencies (the reference and ``depends_on``); ``ids`` gains the new keys. Returns the new ids.

    Args:
        columns: extra or overriding columns of a job (a stage routes the jobs it adds like their siblings).
    """
    new_ids: list[int] = []
    passes = ([j for j in jobs if j.role == "reference"], [j for j in jobs if j.role != "reference"])
    for batch in passes:
        rows = [
            {
                "key": j.key,
                "sweep_id": sweep_id,
                "role": j.role,
                "reference_job_id": ids.get(j.reference_key) if j.reference_key else None,
                "spec": j.payload(),
                "state": "pending",
                "attempts": 0,
                "created_at": now,
                **j.columns(),
                "recipe": _recipe(j),
                **(dict(zip(("queue", "stage", "finish_queue"), route(j), strict=True)) if route else {}),
                **(columns(j) if columns else {}),
            }
            for j in dict((j.key, j) for j in batch if j.key not in ids).values()
        ]
        # Bulk INSERT ... RETURNING (farm.store.bulk), not ORM saves or a second SELECT by key: 10,000 jobs
        # must persist in well under 3 s on SQLite and PostgreSQL.
        for job_key, job_id in bulk.insert_rows(session, _JOBS, rows, returning=("key", "id")):
            ids[job_key] = job_id
            new_ids.append(job_id)
    fresh = set(new_ids)
    edges = {
        (ids[j.key], ids[dep])
        for j in jobs
        if ids.get(j.key) in fresh
        for dep in ((j.reference_key,) if j.reference_key else ()) + tuple(j.depends_on)
        if dep in ids
    }
    add_dependencies(session, sorted(edges))
    return new_ids


def add_dependencies(session: Session, edges: Iterable[tuple[int, int]]) -> None:
    """Write ``(job_id, depends_on_id)`` rows of the job graph (new jobs only: no row is there yet)."""
    bulk.insert_rows(session, _DEPENDENCIES, [{"job_id": a, "depends_on_id": b} for a, b in edges])


def link_jobs(session: Session, sweep_id: int, job_ids: Sequence[int], *, replace: bool = False) -> None:
    """Link ``job_ids`` to the sweep; with ``replace``, unlink the sweep's other jobs (the same spec text now
    means other jobs, e.g. new weights)."""
    links_c = _SWEEP_JOBS.c
    linked = set(session.scalars(select(links_c.job_id).where(links_c.sweep_id == sweep_id)))
    if replace:
        stale = sorted(linked - set(job_ids))
        for condition in bulk.in_values(session, links_c.job_id, stale):
            session.execute(delete(_SWEEP_JOBS).where(links_c.sweep_id == sweep_id, condition))
    links = [{"sweep_id": sweep_id, "job_id": i} for i in dict.fromkeys(job_ids) if i not in linked]
    bulk.insert_rows(session, _SWEEP_JOBS, links)


def reset_ended(session: Session, job_ids: Sequence[int]) -> list[int]:
    """failed or cancelled -> pending with a fresh attempt budget; returns the ids reset."""
    jobs = _JOBS.c
    reset: list[int] = []
    for condition in bulk.in_values(session, jobs.id, list(job_ids)):
        reset += session.scalars(
            update(_JOBS)
            .where(condition, jobs.state.in_(("failed", "cancelled")))
            .values(state="pending", attempts=0, worker_losses=0, error=None, worker=None, lease_expires_at=None)
            .returning(jobs.id)
        )
    return sorted(reset)


def set_routes(
    session: Session, routes: dict[int, tuple[str, str, str | None]], *, taken: Collection[int] = ()
) -> None:
    """Set (queue, stage, finish_queue) of pending jobs before they are queued.

    The local queue takes a job only from the routes a local run may take it from (farm.jobs.policy.LOCAL_RUN_TAKES:
    none yet, or the local queue), or when it is among ``taken`` (made pending again just now by the caller: nobody
    else runs it). A farm's job waiting for a farm's job stays the farm's, which sends it once it is released.
    """
    by_route: dict[tuple[str, str, str | None], list[int]] = {}
    for job_id, route in routes.items():
        by_route.setdefault(route, []).append(job_id)
    free = set(taken)
    takes = [q for q in LOCAL_RUN_TAKES if q is not None]
    unrouted_or_local = or_(Job.queue.is_(None), Job.queue.in_(takes))
    for (queue, stage, finish_queue), ids in by_route.items():  # one UPDATE per route (and guard), not per job
        guarded = [i for i in ids if i not in free] if queue == LOCAL_QUEUE else []
        batches = ((sorted(set(ids) - set(guarded)), true()), (guarded, unrouted_or_local))
        for batch, guard in batches:
            for condition in bulk.in_values(session, Job.id, batch):
                session.execute(
                    update(Job)
                    .where(condition, Job.state == "pending", guard)
                    .values(queue=queue, stage=stage, finish_queue=finish_queue)
                    .execution_options(synchronize_session=False)
                )


def delete_new_sweep(session: Session, sweep_id: int) -> None:
    """Undo a sweep created moments ago (its messages could not be sent): its own jobs and links go too."""
    shared = select(SweepJob.job_id).where(SweepJob.sweep_id != sweep_id)
    own = list(session.scalars(select(Job.id).where(Job.sweep_id == sweep_id, Job.id.not_in(shared))))
    session.execute(delete(SweepJob).where(SweepJob.sweep_id == sweep_id))
    # The graph's rows first: a job others wait for can go only once no row points at it.
    for condition in bulk.in_values(session, JobDependency.job_id, own):
        session.execute(delete(JobDependency).where(condition))
    for condition in bulk.in_values(session, Job.id, own):
        session.execute(delete(Job).where(condition, Job.reference_job_id.is_not(None)))
    for condition in bulk.in_values(session, Job.id, own):
        session.execute(delete(Job).where(condition))
    session.execute(delete(Sweep).where(Sweep.id == sweep_id))


def ids_by_key(session: Session, keys: Sequence[str]) -> dict[str, int]:
    """Job ids by key, for the keys that have a job."""
    out: dict[str, int] = {}
    for condition in bulk.in_values(session, _JOBS.c.key, list(keys)):
        out.update({row[0]: row[1] for row in session.execute(select(_JOBS.c.key, _JOBS.c.id).where(condition))})
    return out


def _states(session: Session, job_ids: Sequence[int]) -> dict[int, str]:
    out: dict[int, str] = {}
    for condition in bulk.in_values(session, _JOBS.c.id, list(job_ids)):
        out.update({row[0]: row[1] for row in session.execute(select(_JOBS.c.id, _JOBS.c.state).where(condition))})
    return out


def _recipe(job: Any) -> str | None:
    """A planned job's recipe label (results_flat.recipe); None for a stage job, which runs no method."""
    return None if job.role == "stage" else recipe_label(job.method)
