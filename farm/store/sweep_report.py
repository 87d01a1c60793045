"""What a sweep's report is built from, read in one transaction and returned as plain data (no ORM rows)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import select

from farm.store.lifecycle import get_sweep
from farm.store.models import Metric, SweepJob
from farm.store.results import fetch_results


@dataclass(frozen=True)
class SweepHeader:
    """A row of the ``sweeps`` table, without its spec (what a report's heading shows)."""

    id: int
    name: str
    state: str
    submitter: str | None
    created_at: datetime
    finished_at: datetime | None


@dataclass
class SweepReportData:
    """A sweep, its rows of ``results_flat``, and the job-wide ``metrics.extra`` of each of its jobs.

    Attributes:
        sweep: the sweep.
        rows: every column of results_flat for the sweep, ordered by job and batch size.
        extras: job id -> the ``extra`` JSON of the job's first metrics row (its job-wide parts repeat on every
            batch-size row); jobs whose extra is not a JSON object are left out.
    """

    sweep: SweepHeader
    rows: list[dict[str, Any]]
    extras: dict[int, dict[str, Any]] = field(default_factory=dict)


def read_sweep_report(db: Any, sweep_id: int) -> SweepReportData:
    """Read everything a sweep's report shows, in one read-only transaction.

    Args:
        db: a :class:`farm.store.db.Database`.
        sweep_id: the sweep.

    Returns:
        The sweep's report data.

    Raises:
        NotFound: no sweep has that id.
        StoreUnavailable: the database cannot be reached.
    """
    with db.session(write=False) as s:
        row = get_sweep(s, sweep_id)
        sweep = SweepHeader(row.id, row.name, row.state, row.submitter, row.created_at, row.finished_at)
        rows = fetch_results(s, sweep_ids=[sweep_id])
        extras = s.execute(
            select(Metric.job_id, Metric.extra)
            .join(SweepJob, SweepJob.job_id == Metric.job_id)
            .where(SweepJob.sweep_id == sweep_id)
            .order_by(Metric.job_id, Metric.batch_size)
        ).all()
    data = SweepReportData(sweep, rows)
    for job_id, extra in extras:
        if isinstance(extra, dict):
            data.extras.setdefault(job_id, extra)
    return data
