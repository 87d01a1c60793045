"""A job waits for a list of jobs: the job_dependencies table, backfilled from jobs.reference_job_id.

Revision ID: 0005
Revises: 0004
Create Date: 2027-01-10

Until now a job could wait only for its model's fp32 reference (``jobs.reference_job_id``). A stage job (one
that adds the next stage's jobs from its dependencies' results) waits for many, so dependencies become rows:
``job_dependencies(job_id, depends_on_id)``, the scheduling truth. ``reference_job_id`` stays: it says which
reference a trial compares with (speedup, accuracy drop).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from alembic.util import CommandError

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "job_dependencies",
        sa.Column("job_id", sa.Integer(), nullable=False),
        sa.Column("depends_on_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name="fk_job_dependencies_job_id_jobs", ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["depends_on_id"], ["jobs.id"], name="fk_job_dependencies_depends_on_id_jobs"),
        sa.PrimaryKeyConstraint("job_id", "depends_on_id", name="pk_job_dependencies"),
    )
    op.create_index("ix_job_dependencies_depends_on_id", "job_dependencies", ["depends_on_id"])
    op.execute(
        "INSERT INTO job_dependencies (job_id, depends_on_id) "
        "SELECT id, reference_job_id FROM jobs WHERE reference_job_id IS NOT NULL"
    )


def downgrade() -> None:
    # Before 0005 a job waits only for its reference: a stage job (and the order of the jobs it added) cannot be
    # kept. Refused, not silently dropped: the operator deletes those sweeps first, knowing what goes.
    stages = op.get_bind().execute(sa.text("SELECT count(*) FROM jobs WHERE role = 'stage'")).scalar() or 0
    if stages:
        raise CommandError(
            f"{stages} stage job(s) exist; the schema before 0005 cannot hold them: delete the sweeps with stages "
            "(and the jobs their stages added) before downgrading"
        )
    op.drop_index("ix_job_dependencies_depends_on_id", table_name="job_dependencies")
    op.drop_table("job_dependencies")
