"""Garbage collection of the artifact store: objects under ``jobs/`` that no artifacts row points at.

A worker deletes what its attempt uploaded when the attempt does not end recorded (farm.jobs.attempt.AttemptUpload),
but a worker killed mid-upload, a store that was away when it tried, or rows deleted since (a re-run, a QAT
hand-off done again) leave objects behind. ``farm artifacts gc`` finds them and removes them.

What is never deleted: an object a row points at; an object of an attempt that still holds its job (the job
runs under that claim: its row is simply not written yet); an object younger than the grace period, whatever
its key (an upload in progress under a layout this code does not know). The store is listed first and the
database read after, job holders before rows: an attempt that records meanwhile is then seen either as
holding its job or through its rows, never as an orphan.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from farm.artifacts.attempts import is_live, parse_key
from farm.artifacts.base import ListedObject

log = logging.getLogger("farm.artifacts")

JOBS_PREFIX = "jobs"
DEFAULT_GRACE_S = 3600.0


@dataclass
class GcPlan:
    """What a collection found under ``jobs/``: every object, and the orphans among them."""

    listed: int = 0
    listed_bytes: int = 0
    referenced: int = 0
    live: int = 0
    young: int = 0
    orphans: list[ListedObject] = field(default_factory=list)

    @property
    def orphan_bytes(self) -> int:
        return sum(o.size_bytes for o in self.orphans)


def plan_gc(
    db: Any, store: Any, *, grace_s: float = DEFAULT_GRACE_S, now: datetime | None = None, prefix: str = JOBS_PREFIX
) -> GcPlan:
    """Find the orphans under the store's ``jobs/`` prefix (deleting nothing).

    Args:
        db: a :class:`farm.store.db.Database` (read only).
        store: the artifact store.
        grace_s: keep any unreferenced object younger than this many seconds.
        now: the time ages are measured at (default: now).
        prefix: look below this prefix only (``jobs/<job key>``: one job's attempts).

    Returns:
        The plan: counts and bytes, and the orphans to delete.

    Raises:
        ArtifactError, StoreUnavailable, TransientError: the store or the database could not be read.
    """
    from farm.store import artifact_refs

    objects = list(store.list_objects(prefix))
    parsed = {o.key: parse_key(o.key) for o in objects}
    cutoff = (now or datetime.now(timezone.utc)) - timedelta(seconds=grace_s)
    job_keys = {p.job_key for p in parsed.values() if p is not None}
    view = artifact_refs.store_view(db, job_keys, [o.uri for o in objects])
    held, referenced, recorded = view.holders, view.referenced, view.recorded
    referenced_keys = _referenced_keys(store, recorded)
    plan = GcPlan(listed=len(objects), listed_bytes=sum(o.size_bytes for o in objects))
    for obj in objects:
        attempt = parsed[obj.key]
        holder = held.get(attempt.job_key) if attempt is not None else None
        if obj.uri in referenced or obj.key in referenced_keys:
            plan.referenced += 1
        elif (
            attempt is not None
            and holder is not None
            and is_live(attempt, holder.state, holder.attempts, holder.worker)
        ):
            plan.live += 1
        elif obj.modified_at > cutoff:
            plan.young += 1
        else:
            plan.orphans.append(obj)
    return plan


def _referenced_keys(store: Any, recorded: dict[str, list[str]]) -> set[str]:
    """The store keys the recorded rows of the listed jobs point at, compared by key rather than URI string (the
    same volume mounted at another path gives other file:// URIs).

    Raises:
        ArtifactError: a row of a listed job points outside this store: the store this command opened is not
            the one the workers wrote to (FARM_ARTIFACTS_URL or FARM_HOME differ), and deleting would be a guess.
    """
    from farm.errors import ArtifactError

    keys: set[str] = set()
    for uris in recorded.values():
        for uri in uris:
            try:
                keys.add(store.key_for(uri))
            except ArtifactError:
                raise ArtifactError(
                    f"a recorded artifact ({uri}) lies outside the store {store.url} whose objects it would judge: "
                    "set FARM_ARTIFACTS_URL (and FARM_HOME) as the workers have them; nothing was deleted"
                ) from None
    return keys


def collect(store: Any, plan: GcPlan, on_deleted: Callable[[ListedObject], None] | None = None) -> int:
    """Delete the orphans of ``plan``.

    Args:
        store: the artifact store the plan was made of.
        plan: from :func:`plan_gc`.
        on_deleted: called after each deletion (progress).

    Returns:
        How many objects were deleted.

    Raises:
        ArtifactError, TransientError: a deletion failed (those before it stay deleted).
    """
    deleted = 0
    for obj in plan.orphans:
        store.delete_prefix(obj.key)
        deleted += 1
        if on_deleted is not None:
            on_deleted(obj)
    return deleted


def collect_job(db: Any, store: Any, job_key: str) -> int:
    """Delete the leftovers of one job's ended attempts: objects below ``jobs/<job_key>`` that no row points at
    and whose attempt no longer holds the job (a worker killed mid-upload, a stalled worker that lost its claim).

    Called when a job ends (its winner recorded it, or the reaper failed it), so that no object outlives a
    settled sweep without a row. Best-effort: a store or database that can't be reached leaves them to
    ``farm artifacts gc``.

    Returns:
        How many objects were deleted.
    """
    from farm.errors import FarmError

    try:
        return collect(store, plan_gc(db, store, grace_s=0.0, prefix=f"{JOBS_PREFIX}/{job_key}"))
    except FarmError as e:
        log.warning("job %s: leftovers of its ended attempts stay for farm artifacts gc: %s", job_key, e)
        return 0
