"""The farm: a workers table (heartbeats), and job stages for chains across queues.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _results_flat_sql() -> str:
    """The view's definition from 0001 (SQLite can only drop columns by rebuilding the table under it)."""
    path = Path(__file__).with_name("0001_initial.py")
    spec = importlib.util.spec_from_file_location("farm_migration_0001", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return str(module.RESULTS_FLAT)


def upgrade() -> None:
    # Plain ADD COLUMN: no table rebuild, so the view over jobs stays valid on SQLite.
    op.add_column("jobs", sa.Column("stage", sa.String(length=16), nullable=False, server_default="all"))
    op.add_column("jobs", sa.Column("finish_queue", sa.String(length=64), nullable=True))
    op.create_table(
        "workers",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("hostname", sa.String(length=200), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("queues", sa.JSON(), nullable=False),
        sa.Column("capabilities", sa.JSON(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_heartbeat", sa.DateTime(timezone=True), nullable=False),
        sa.Column("current_job_id", sa.Integer(), nullable=True),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.ForeignKeyConstraint(
            ["current_job_id"], ["jobs.id"], name=op.f("fk_workers_current_job_id_jobs"), ondelete="SET NULL"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_workers")),
        sa.UniqueConstraint("name", name=op.f("uq_workers_name")),
    )
    op.create_index(op.f("ix_workers_last_heartbeat"), "workers", ["last_heartbeat"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_workers_last_heartbeat"), table_name="workers")
    op.drop_table("workers")
    op.execute("DROP VIEW results_flat")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("finish_queue")
        batch.drop_column("stage")
    op.execute(_results_flat_sql())
