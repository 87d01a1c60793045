"""Stored accuracy_drop and speedup, and the indexes that make analyst queries over millions of rows fast.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22

accuracy_drop and speedup were computed by the view; a computed column can't be indexed, so a query sorting
or filtering on them had to join and compute every row (about a second at a million rows). They are now
written with the metrics (speedup against the fp32 reference measured on the same hardware, NULL for
simulated figures), backfilled here, and the view reads them.

Sorting indexes: one ascending index per figure an analyst sorts by. farm.store.results asks for the rows with
the sort key set first (no NULLs, so plain ASC or DESC), which the database serves by walking the index forwards
or backwards and stopping at the LIMIT, instead of joining and sorting every row.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# One row per (sweep, job, batch size); jobs without metrics appear once, batch_size NULL.
RESULTS_FLAT = """
CREATE VIEW results_flat AS
SELECT
    s.id AS sweep_id,
    s.name AS sweep_name,
    j.id AS job_id,
    j.key AS job_key,
    j.model AS model,
    j.dataset AS dataset,
    j.method AS method,
    j.bits AS bits,
    j.calibration_size AS calibration_size,
    j.backend AS backend,
    j.observer AS observer,
    j.granularity AS granularity,
    j.device AS device,
    m.batch_size AS batch_size,
    j.state AS state,
    m.accuracy AS accuracy,
    m.accuracy_fp32 AS accuracy_fp32,
    m.accuracy_drop AS accuracy_drop,
    m.agreement AS agreement,
    m.sqnr_db AS sqnr_db,
    m.size_bytes AS size_bytes,
    m.size_ratio AS size_ratio,
    m.latency_p50_ms AS latency_p50_ms,
    m.latency_p90_ms AS latency_p90_ms,
    m.latency_p99_ms AS latency_p99_ms,
    m.throughput AS throughput,
    m.speedup AS speedup,
    m.coverage AS coverage,
    m.simulated AS simulated,
    a.uri AS artifact_uri,
    j.worker AS worker,
    j.hardware AS hardware,
    j.duration_s AS duration_s,
    j.finished_at AS finished_at,
    j.error AS error
FROM sweep_jobs sj
JOIN sweeps s ON s.id = sj.sweep_id
JOIN jobs j ON j.id = sj.job_id
LEFT JOIN metrics m ON m.job_id = j.id
LEFT JOIN artifacts a ON a.job_id = j.id AND a.kind = 'model'
"""


# The same computation as farm.store.results.recompute_stored_figures (kept here: a migration is frozen).
BACKFILL_SPEEDUP = """
UPDATE metrics SET speedup = (
    SELECT CASE
        WHEN metrics.simulated OR metrics.latency_p50_ms IS NULL OR metrics.latency_p50_ms = 0
            OR r.latency_p50_ms IS NULL
        THEN NULL
        ELSE r.latency_p50_ms / metrics.latency_p50_ms
    END
    FROM jobs j
    JOIN metrics r
        ON r.job_id = COALESCE(j.reference_job_id, j.id)
        AND r.batch_size = metrics.batch_size
        AND r.hardware_id = metrics.hardware_id
    WHERE j.id = metrics.job_id
)
"""

# The figures analysts sort by that had no index yet (latency_p50_ms and accuracy had one since 0001).
SORT_INDEXES = (
    "accuracy_drop",
    "agreement",
    "sqnr_db",
    "size_bytes",
    "size_ratio",
    "latency_p90_ms",
    "latency_p99_ms",
    "throughput",
    "speedup",
    "coverage",
)


def _view_sql(revision_file: str) -> str:
    path = Path(__file__).with_name(revision_file)
    spec = importlib.util.spec_from_file_location(f"farm_migration_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return str(module.RESULTS_FLAT)


def upgrade() -> None:
    op.execute("DROP VIEW results_flat")
    op.add_column("metrics", sa.Column("accuracy_drop", sa.Float(), nullable=True))
    op.add_column("metrics", sa.Column("speedup", sa.Float(), nullable=True))
    op.execute("UPDATE metrics SET accuracy_drop = accuracy_fp32 - accuracy")
    op.execute(BACKFILL_SPEEDUP)
    for column in SORT_INDEXES:
        op.create_index(op.f(f"ix_metrics_{column}"), "metrics", [column], unique=False)
    op.create_index(op.f("ix_jobs_finished_at"), "jobs", ["finished_at"], unique=False)
    op.execute(RESULTS_FLAT)


def downgrade() -> None:
    op.execute("DROP VIEW results_flat")
    op.drop_index(op.f("ix_jobs_finished_at"), table_name="jobs")
    for column in SORT_INDEXES:
        op.drop_index(op.f(f"ix_metrics_{column}"), table_name="metrics")
    with op.batch_alter_table("metrics") as batch:
        batch.drop_column("speedup")
        batch.drop_column("accuracy_drop")
    op.execute(_view_sql("0001_initial.py"))
