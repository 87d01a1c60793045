"""read_sweep_report: what the report reads, as plain data (no ORM rows cross the store's boundary)."""

from __future__ import annotations

import dataclasses

import pytest
import store_support
from sqlalchemy import update

from farm.errors import NotFound
from farm.store.db import Database
from farm.store.models import Base, Metric, Sweep
from farm.store.sweep_report import SweepHeader, read_sweep_report


def test_a_sweep_its_rows_and_each_jobs_first_extra_come_back_as_plain_data(migrated_db: Database) -> None:
    store_support.seed(migrated_db)
    with migrated_db.session() as s:
        demo = s.query(Sweep).filter_by(name="demo").one().id
        # The job-wide part of extra repeats on every batch-size row: the report takes the first row's.
        s.execute(update(Metric).where(Metric.batch_size == 1).values(extra={"fingerprint": {"cpu": "x"}}))
        s.execute(update(Metric).where(Metric.batch_size == 8).values(extra={"fingerprint": {"cpu": "later"}}))

    data = read_sweep_report(migrated_db, demo)

    assert data.sweep == SweepHeader(demo, "demo", "running", None, data.sweep.created_at, None)
    assert {(r["job_key"][0], r["batch_size"]) for r in data.rows} == {
        (k, b) for (sweep, k, b) in store_support.EXPECTED if sweep == "demo"
    }
    assert all(e == {"fingerprint": {"cpu": "x"}} for e in data.extras.values())
    assert len(data.extras) == 3  # reference, trial and sim have metrics; the failed job has none
    orm = tuple(m.class_ for m in Base.registry.mappers)
    for value in (data.sweep, *data.rows, *data.extras.values()):
        assert not isinstance(value, orm)
    assert dataclasses.is_dataclass(data.sweep)


def test_an_unknown_sweep_is_not_found(migrated_db: Database) -> None:
    with pytest.raises(NotFound, match="no sweep with id 99"):
        read_sweep_report(migrated_db, 99)
