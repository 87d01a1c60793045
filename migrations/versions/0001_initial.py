"""Initial schema: sweeps, jobs, sweep_jobs, metrics, artifacts and the view results_flat.

Revision ID: 0001
Revises:
Create Date: 2026-11-22

Keep farm/store/models.py and this migration in step: the tests check that autogenerate finds no difference
between them, on SQLite and PostgreSQL. Constraint and index names follow farm.store.models.NAMING.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# One row per (sweep, job, batch size); a job without metrics (pending, failed, ...) appears once with
# batch_size NULL. speedup compares with the fp32 reference job at the same batch size on the same hardware
# (the reference job compares with itself: 1.0) and is NULL for simulated figures or missing latencies.
# Plain SQL that SQLite and PostgreSQL both accept: every column is aliased so that both name it the same.
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
    m.accuracy_fp32 - m.accuracy AS accuracy_drop,
    m.agreement AS agreement,
    m.sqnr_db AS sqnr_db,
    m.size_bytes AS size_bytes,
    m.size_ratio AS size_ratio,
    m.latency_p50_ms AS latency_p50_ms,
    m.latency_p90_ms AS latency_p90_ms,
    m.latency_p99_ms AS latency_p99_ms,
    m.throughput AS throughput,
    CASE
        WHEN m.simulated OR m.latency_p50_ms IS NULL OR r.latency_p50_ms IS NULL OR m.latency_p50_ms = 0
        THEN NULL
        ELSE r.latency_p50_ms / m.latency_p50_ms
    END AS speedup,
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
LEFT JOIN metrics r
    ON r.job_id = COALESCE(j.reference_job_id, j.id)
    AND r.batch_size = m.batch_size
    AND r.hardware_id = m.hardware_id
LEFT JOIN artifacts a ON a.job_id = j.id AND a.kind = 'model'
"""


def upgrade() -> None:
    op.create_table(
        "sweeps",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("spec_text", sa.Text(), nullable=False),
        sa.Column("spec_hash", sa.String(length=64), nullable=False),
        sa.Column("submitter", sa.String(length=200), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sweeps")),
    )
    op.create_index(op.f("ix_sweeps_name"), "sweeps", ["name"])
    op.create_index(op.f("ix_sweeps_spec_hash"), "sweeps", ["spec_hash"])

    op.create_table(
        "jobs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("sweep_id", sa.Integer(), nullable=True),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("reference_job_id", sa.Integer(), nullable=True),
        sa.Column("model", sa.String(length=500), nullable=False),
        sa.Column("dataset", sa.String(length=500), nullable=False),
        sa.Column("method", sa.String(length=32), nullable=False),
        sa.Column("bits", sa.Integer(), nullable=True),
        sa.Column("calibration_size", sa.Integer(), nullable=True),
        sa.Column("backend", sa.String(length=16), nullable=True),
        sa.Column("observer", sa.String(length=32), nullable=True),
        sa.Column("granularity", sa.String(length=16), nullable=True),
        sa.Column("device", sa.String(length=16), nullable=False),
        sa.Column("queue", sa.String(length=64), nullable=True),
        sa.Column("spec", sa.JSON(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("worker", sa.String(length=200), nullable=True),
        sa.Column("hardware", sa.String(length=300), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("queued_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("duration_s", sa.Float(), nullable=True),
        sa.ForeignKeyConstraint(["reference_job_id"], ["jobs.id"], name=op.f("fk_jobs_reference_job_id_jobs")),
        sa.ForeignKeyConstraint(["sweep_id"], ["sweeps.id"], name=op.f("fk_jobs_sweep_id_sweeps"), ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_jobs")),
        sa.UniqueConstraint("key", name=op.f("uq_jobs_key")),
    )
    op.create_index("ix_jobs_model_method", "jobs", ["model", "method"])
    op.create_index(op.f("ix_jobs_reference_job_id"), "jobs", ["reference_job_id"])
    op.create_index(op.f("ix_jobs_state"), "jobs", ["state"])
    op.create_index(op.f("ix_jobs_sweep_id"), "jobs", ["sweep_id"])

    op.create_table(
        "sweep_jobs",
        sa.Column("sweep_id", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["sweep_id"], ["sweeps.id"], name=op.f("fk_sweep_jobs_sweep_id_sweeps"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name=op.f("fk_sweep_jobs_job_id_jobs"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("sweep_id", "job_id", name=op.f("pk_sweep_jobs")),
    )
    op.create_index(op.f("ix_sweep_jobs_job_id"), "sweep_jobs", ["job_id"])

    op.create_table(
        "metrics",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=False),
        sa.Column("batch_size", sa.Integer(), nullable=False),
        sa.Column("accuracy", sa.Float(), nullable=True),
        sa.Column("accuracy_fp32", sa.Float(), nullable=True),
        sa.Column("top5", sa.Float(), nullable=True),
        sa.Column("agreement", sa.Float(), nullable=True),
        sa.Column("sqnr_db", sa.Float(), nullable=True),
        sa.Column("cosine", sa.Float(), nullable=True),
        sa.Column("size_bytes", sa.BigInteger(), nullable=True),
        sa.Column("size_fp32_bytes", sa.BigInteger(), nullable=True),
        sa.Column("size_ratio", sa.Float(), nullable=True),
        sa.Column("coverage", sa.Float(), nullable=True),
        sa.Column("coverage_macs", sa.Float(), nullable=True),
        sa.Column("simulated", sa.Boolean(), nullable=False),
        sa.Column("latency_p50_ms", sa.Float(), nullable=True),
        sa.Column("latency_p90_ms", sa.Float(), nullable=True),
        sa.Column("latency_p99_ms", sa.Float(), nullable=True),
        sa.Column("throughput", sa.Float(), nullable=True),
        sa.Column("peak_memory_bytes", sa.BigInteger(), nullable=True),
        sa.Column("hardware_id", sa.String(length=32), nullable=True),
        sa.Column("extra", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name=op.f("fk_metrics_job_id_jobs"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_metrics")),
        sa.UniqueConstraint("job_id", "batch_size", name="uq_metrics_job_id_batch_size"),
    )
    op.create_index("ix_metrics_accuracy", "metrics", ["accuracy"])
    op.create_index("ix_metrics_latency_p50_ms", "metrics", ["latency_p50_ms"])

    op.create_table(
        "artifacts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("uri", sa.String(length=1000), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name=op.f("fk_artifacts_job_id_jobs"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_artifacts")),
        sa.UniqueConstraint("job_id", "kind", name="uq_artifacts_job_id_kind"),
    )
    op.create_index(op.f("ix_artifacts_job_id"), "artifacts", ["job_id"])

    op.execute(RESULTS_FLAT)


def downgrade() -> None:
    op.execute("DROP VIEW IF EXISTS results_flat")

    op.drop_index(op.f("ix_artifacts_job_id"), table_name="artifacts")
    op.drop_table("artifacts")

    op.drop_index("ix_metrics_latency_p50_ms", table_name="metrics")
    op.drop_index("ix_metrics_accuracy", table_name="metrics")
    op.drop_table("metrics")

    op.drop_index(op.f("ix_sweep_jobs_job_id"), table_name="sweep_jobs")
    op.drop_table("sweep_jobs")

    op.drop_index(op.f("ix_jobs_sweep_id"), table_name="jobs")
    op.drop_index(op.f("ix_jobs_state"), table_name="jobs")
    op.drop_index(op.f("ix_jobs_reference_job_id"), table_name="jobs")
    op.drop_index("ix_jobs_model_method", table_name="jobs")
    op.drop_table("jobs")

    op.drop_index(op.f("ix_sweeps_spec_hash"), table_name="sweeps")
    op.drop_index(op.f("ix_sweeps_name"), table_name="sweeps")
    op.drop_table("sweeps")
