"""Checks shared by the SQLite tests here and, loaded by path, the PostgreSQL tests in tests/integration.

The schema as the database reports it (tables, views, indexes, autogenerate's differences), and a tiny results
data set with the rows the view ``results_flat`` must give for it.

Two sweeps: "demo" holds a reference job (batch sizes 1 and 8 on hw1), a trial (batch 1 on hw1, batch 8 on
another hardware id), a failed job with no metrics, and a "sim" job (batch 1 simulated, batch 8 with a zero
latency); "again" reuses the trial. A job linked to no sweep must not appear.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime, timezone
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import MetaData, inspect, text

from farm.store.db import Database
from farm.store.models import Artifact, Base, Job, Metric, Sweep, SweepJob
from farm.store.results import recompute_stored_figures

FARM_TABLES = set(Base.metadata.tables)
INDEXES = {index.name for table in Base.metadata.tables.values() for index in table.indexes}

COLUMNS = [
    "sweep_id", "sweep_name", "job_id", "job_key", "model", "dataset", "method", "recipe", "bits",
    "calibration_size", "backend", "observer", "granularity", "device", "runtime", "split", "batch_size", "state",
    "health",
    "accuracy", "accuracy_fp32", "accuracy_drop", "agreement", "sqnr_db", "cosine", "metric_name",
    "metric_value", "size_bytes", "size_ratio",
    "latency_p50_ms", "latency_p50_ci_low_ms", "latency_p50_ci_high_ms", "latency_p90_ms", "latency_p99_ms",
    "throughput", "speedup", "speedup_ci_low", "speedup_ci_high", "speedup_vs_best_fp32", "coverage", "simulated",
    "isolation", "runtime_version", "execution_provider", "artifact_uri", "worker", "hardware", "duration_s",
    "finished_at", "error", "params",
]  # fmt: skip


def schema_objects(db: Database) -> tuple[set[str], set[str], set[str]]:
    """The database's tables, views, and the indexes on QuantFarm's tables (not those behind constraints)."""
    with db.connect() as conn:
        insp = inspect(conn)
        tables, views = set(insp.get_table_names()), set(insp.get_view_names())
        indexes = {
            str(index["name"])
            for table in tables & FARM_TABLES
            for index in insp.get_indexes(table)
            if not index.get("duplicates_constraint")
        }
    return tables, views, indexes


def autogenerate_diff(db: Database, metadata: MetaData = Base.metadata) -> list[Any]:
    """What ``alembic revision --autogenerate`` would write to turn the database into ``metadata``."""
    with db.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True, "target_metadata": metadata})
        return list(compare_metadata(context, metadata))


def view_columns(db: Database) -> tuple[list[str], list[str]]:
    """results_flat's columns, as a query returns them and as the database's catalog lists them."""
    with db.connect() as conn:
        queried = list(conn.execute(text("SELECT * FROM results_flat WHERE 1 = 0")).keys())
        listed = [c["name"] for c in inspect(conn).get_columns("results_flat")]
    return queried, listed


NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)


def _job(key: str, **fields: Any) -> Job:
    base: dict[str, Any] = dict(
        key=key * 64,
        model="builtin:digits",
        dataset="builtin:digits",
        method="static",
        device="cpu",
        spec={"key": key},
        state="succeeded",
        created_at=NOW,
    )
    return Job(**(base | fields))


def seed(db: Database) -> None:
    """Write the data set (the database must be migrated and empty)."""
    with db.session() as s:
        demo = Sweep(name="demo", spec_text="{}", spec_hash="d" * 64, created_at=NOW, state="running")
        again = Sweep(name="again", spec_text="{}", spec_hash="a" * 64, created_at=NOW, state="succeeded")
        s.add_all([demo, again])
        s.flush()
        ref = _job("r", sweep_id=demo.id, role="reference", method="fp32", worker="w1", hardware="Xeon",
                   duration_s=2.5, finished_at=NOW)  # fmt: skip
        s.add(ref)
        s.flush()
        trial = _job("t", sweep_id=demo.id, reference_job_id=ref.id, bits=8, calibration_size=128,
                     backend="x86", observer="minmax", granularity="per_channel", worker="w2")  # fmt: skip
        failed = _job("f", sweep_id=demo.id, reference_job_id=ref.id, bits=4, state="failed", error="boom")
        sim = _job("s", sweep_id=demo.id, reference_job_id=ref.id, method="fake", bits=4)
        orphan = _job("o", reference_job_id=ref.id)
        s.add_all([trial, failed, sim, orphan])
        s.flush()
        s.add_all(
            [
                Metric(job_id=ref.id, batch_size=1, accuracy=0.98, accuracy_fp32=0.98, latency_p50_ms=10.0,
                       latency_p90_ms=11.0, latency_p99_ms=12.0, throughput=100.0, size_bytes=4000,
                       size_ratio=1.0, hardware_id="hw1"),
                Metric(job_id=ref.id, batch_size=8, accuracy=0.98, accuracy_fp32=0.98, latency_p50_ms=40.0,
                       hardware_id="hw1"),
                Metric(job_id=trial.id, batch_size=1, accuracy=0.97, accuracy_fp32=0.98, agreement=0.99,
                       sqnr_db=30.5, size_bytes=1000, size_ratio=0.25, latency_p50_ms=4.0, coverage=0.9,
                       hardware_id="hw1"),
                Metric(job_id=trial.id, batch_size=8, accuracy=0.97, accuracy_fp32=0.98, latency_p50_ms=20.0,
                       hardware_id="hw2"),
                Metric(job_id=sim.id, batch_size=1, accuracy=0.9, accuracy_fp32=0.98, latency_p50_ms=5.0,
                       simulated=True, hardware_id="hw1"),
                Metric(job_id=sim.id, batch_size=8, accuracy=0.9, accuracy_fp32=0.98, latency_p50_ms=0.0,
                       hardware_id="hw1"),
                Metric(job_id=orphan.id, batch_size=1, latency_p50_ms=1.0, hardware_id="hw1"),
            ]
        )  # fmt: skip
        s.flush()
        recompute_stored_figures(s)  # what workers store with each result
        s.add_all(
            [
                Artifact(job_id=trial.id, kind="model", uri="file:///art/t.pt", sha256="0" * 64, size_bytes=1000,
                         created_at=NOW),
                Artifact(job_id=trial.id, kind="manifest", uri="file:///art/t.json", sha256="1" * 64,
                         size_bytes=10, created_at=NOW),
                Artifact(job_id=ref.id, kind="model", uri="file:///art/r.pt", sha256="2" * 64, size_bytes=4000,
                         created_at=NOW),
            ]
        )  # fmt: skip
        links = [(demo, ref), (demo, trial), (demo, failed), (demo, sim), (again, trial)]
        s.add_all([SweepJob(sweep_id=sweep.id, job_id=job.id) for sweep, job in links])


# (sweep name, job key letter, batch size) -> the view's figures for that row.
EXPECTED: dict[tuple[str, str, int | None], dict[str, Any]] = {
    ("demo", "r", 1): dict(method="fp32", accuracy_drop=0.0, speedup=1.0, artifact_uri="file:///art/r.pt",
                           latency_p90_ms=11.0, throughput=100.0, worker="w1", hardware="Xeon", duration_s=2.5),
    ("demo", "r", 8): dict(method="fp32", accuracy_drop=0.0, speedup=1.0, artifact_uri="file:///art/r.pt"),
    ("demo", "t", 1): dict(bits=8, calibration_size=128, backend="x86", observer="minmax",
                           granularity="per_channel", accuracy=0.97, accuracy_drop=0.01, speedup=2.5,
                           agreement=0.99, sqnr_db=30.5, size_bytes=1000, size_ratio=0.25, coverage=0.9,
                           artifact_uri="file:///art/t.pt", simulated=False, state="succeeded"),
    ("demo", "t", 8): dict(accuracy_drop=0.01, speedup=None, artifact_uri="file:///art/t.pt"),  # other hardware
    ("demo", "f", None): dict(state="failed", error="boom", accuracy=None, accuracy_drop=None, speedup=None,
                              latency_p50_ms=None, simulated=None, artifact_uri=None),
    ("demo", "s", 1): dict(speedup=None, simulated=True, accuracy_drop=0.08),  # simulated
    ("demo", "s", 8): dict(speedup=None, simulated=False),  # zero latency
    ("again", "t", 1): dict(speedup=2.5, accuracy_drop=0.01, artifact_uri="file:///art/t.pt"),
    ("again", "t", 8): dict(speedup=None),
}  # fmt: skip


def view_rows(db: Database) -> list[dict[str, Any]]:
    """Every row of results_flat, as dicts."""
    with db.connect() as conn:
        return [dict(row) for row in conn.execute(text("SELECT * FROM results_flat")).mappings()]


def assert_expected(rows: Iterable[Mapping[str, Any]]) -> None:
    """Check the view's rows for the data set against :data:`EXPECTED`."""
    by_key: dict[tuple[str, str, int | None], Mapping[str, Any]] = {}
    for row in rows:
        key = (row["sweep_name"], row["job_key"][0], row["batch_size"])
        assert key not in by_key, f"duplicate row {key}"
        by_key[key] = row
    assert set(by_key) == set(EXPECTED)
    for key, want in EXPECTED.items():
        row = by_key[key]
        assert row["job_key"] == key[1] * 64
        for column, value in want.items():
            got = row[column]
            if column == "simulated" and got is not None:
                got = bool(got)  # SQLite stores booleans as 0/1
            if isinstance(value, float):
                assert got == pytest.approx(value), f"{key} {column}"
            else:
                assert got == value, f"{key} {column}: {got!r} != {value!r}"


# -- migration 0006: recipe backfill, params and its fields --------------------------------------------------------

#: Three jobs written at revision 0005 (before recipe existed): their specs' method configs and the labels 0006 gives.
PARAM_JOBS = [
    ({"method": "qat", "version": 1, "bits": 4, "calibration_size": 32, "epochs": 3}, "qat int4 mavg pc n=32 e3"),
    ({"method": "qat", "version": 1, "bits": 4, "calibration_size": 32, "epochs": 1}, "qat int4 mavg pc n=32"),
    (
        {"method": "static", "version": 1, "observer": "percentile", "percentile": 99.9},
        "static int8 pct pc n=256 p99.9",
    ),
]


def seed_at_0005(db: Database) -> None:
    """Write :data:`PARAM_JOBS` (one sweep, one metrics row each) into a database at revision 0005."""
    import json

    with db.connect() as conn:
        conn.execute(
            text(
                "INSERT INTO sweeps (id, name, spec_text, spec_hash, created_at, state) "
                "VALUES (1, 'p', '{}', :h, :t, 'x')"
            ),
            {"h": "p" * 64, "t": NOW},
        )
        for i, (method, _) in enumerate(PARAM_JOBS, start=1):
            conn.execute(
                text(
                    "INSERT INTO jobs (id, key, role, model, dataset, method, device, spec, state, attempts, "
                    "worker_losses, created_at, stage) VALUES (:i, :k, 'trial', 'm', 'd', :m, 'cpu', :s, 'succeeded', "
                    "0, 0, :t, 'all')"
                ),
                {"i": i, "k": str(i) * 64, "m": method["method"], "s": json.dumps({"method": method}), "t": NOW},
            )
            conn.execute(text("INSERT INTO sweep_jobs (sweep_id, job_id) VALUES (1, :i)"), {"i": i})
            conn.execute(
                text("INSERT INTO metrics (job_id, batch_size, simulated, extra) VALUES (:i, 1, false, '{}')"), {"i": i}
            )
        conn.commit()


#: --where expressions over params and the job ids (1-based, as PARAM_JOBS) each must select, on every database.
PARAM_FILTERS = {
    "params.epochs = 3": [1],
    "params.epochs >= 1": [1, 2],
    "params.epochs = '3'": [],  # the number 3 is not the string '3'
    "params.observer = 'percentile'": [3],
    "params.observer LIKE 'perc%'": [3],
    "params.epochs IS NULL": [3],
    "NOT params.epochs IS NULL AND params.bits IN (4, 8)": [1, 2],
    "params.percentile > 99.5": [3],
    "params.method = 'qat' AND recipe LIKE '%e3'": [1],
}


def assert_params(db: Database) -> None:
    """After 0006: each job's recipe was backfilled, params is its method config, and PARAM_FILTERS select."""
    import json

    from farm.store.results import ResultsQuery, query

    rows = query(db, ResultsQuery.parse(columns="job_id,recipe,params"))
    assert [(r["job_id"], r["recipe"]) for r in rows] == [(i, label) for i, (_, label) in enumerate(PARAM_JOBS, 1)]
    assert [json.loads(r["params"]) for r in rows] == [m for m, _ in PARAM_JOBS]
    for where, want in PARAM_FILTERS.items():
        got = [r["job_id"] for r in query(db, ResultsQuery.parse(where=where, columns="job_id"))]
        assert got == want, where
