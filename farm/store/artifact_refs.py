"""What the artifacts table points at: the queries behind deleting a lost attempt's objects and ``farm artifacts gc``.

Read-only; every function returns plain values, never ORM rows.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from farm.store import bulk
from farm.store.db import Database
from farm.store.models import Artifact, Job


def points_at(session: Session, job_id: int, uris: Sequence[str]) -> bool:
    """Whether an artifacts row of job ``job_id`` holds one of ``uris`` (the rows of one record are written
    together, so one match says that record was this attempt's)."""
    if not uris:
        return False
    stmt = select(Artifact.id).where(Artifact.job_id == job_id, Artifact.uri.in_(list(uris))).limit(1)
    return session.scalar(stmt) is not None


def referenced(session: Session, uris: Sequence[str]) -> set[str]:
    """Those of ``uris`` that an artifacts row points at."""
    found: set[str] = set()
    for condition in bulk.in_values(session, Artifact.uri, sorted(set(uris))):
        found.update(session.scalars(select(Artifact.uri).where(condition)))
    return found


@dataclass(frozen=True)
class JobHolder:
    """Who holds a job now: its state, claim counter and worker."""

    state: str
    attempts: int
    worker: str | None


def holders(session: Session, keys: Iterable[str]) -> dict[str, JobHolder]:
    """The jobs of ``keys`` (their deterministic keys) that exist, by key."""
    wanted = sorted(set(keys))
    found: dict[str, JobHolder] = {}
    for condition in bulk.in_values(session, Job.key, wanted):
        rows = session.execute(select(Job.key, Job.state, Job.attempts, Job.worker).where(condition))
        for key, state, attempts, worker in rows:
            found[key] = JobHolder(state, attempts or 0, worker)
    return found


def uris_of_jobs(session: Session, keys: Iterable[str]) -> dict[str, list[str]]:
    """Every artifact URI recorded for the jobs of ``keys`` (their deterministic keys), by key."""
    wanted = sorted(set(keys))
    found: dict[str, list[str]] = {}
    for condition in bulk.in_values(session, Job.key, wanted):
        rows = session.execute(select(Job.key, Artifact.uri).join(Artifact, Artifact.job_id == Job.id).where(condition))
        for key, uri in rows:
            found.setdefault(key, []).append(uri)
    return found


@dataclass(frozen=True)
class StoreView:
    """What the database says of some listed objects (``farm artifacts gc``), read in one transaction.

    Attributes:
        holders: the jobs of the listed keys that exist, by key (:func:`holders`).
        referenced: the listed URIs an artifacts row points at (:func:`referenced`).
        recorded: every artifact URI recorded for the jobs of the listed keys, by key (:func:`uris_of_jobs`).
    """

    holders: dict[str, JobHolder]
    referenced: set[str]
    recorded: dict[str, list[str]]


def store_view(db: Database, keys: Iterable[str], uris: Sequence[str]) -> StoreView:
    """:func:`holders`, :func:`referenced` and :func:`uris_of_jobs` in one read-only transaction (one snapshot:
    an attempt recorded between two reads must not look unreferenced)."""
    wanted = sorted(set(keys))
    with db.session(write=False) as s:
        return StoreView(holders(s, wanted), referenced(s, uris), uris_of_jobs(s, wanted))
