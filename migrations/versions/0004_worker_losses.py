"""Count the times a job's worker died under it apart from the times it was claimed.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01

``attempts`` counts claims, and a job that hits a transient error (S3 or the database away) is claimed again
for each retry; counting those against FARM_MAX_ATTEMPTS failed a job as "its worker died" after a single
death. ``worker_losses`` counts only the claims that ended with the worker gone (a lease that ran out, a pool
process that died), and that is what FARM_MAX_ATTEMPTS bounds.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _view_sql(revision_file: str) -> str:
    path = Path(__file__).with_name(revision_file)
    spec = importlib.util.spec_from_file_location(f"farm_migration_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return str(module.RESULTS_FLAT)


def upgrade() -> None:
    # Plain ADD COLUMN: no table rebuild, so the view over jobs stays valid on SQLite.
    op.add_column("jobs", sa.Column("worker_losses", sa.Integer(), nullable=False, server_default="0"))


def downgrade() -> None:
    # SQLite drops a column by rebuilding the table, which the view over it would block.
    op.execute("DROP VIEW results_flat")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("worker_losses")
    op.execute(_view_sql("0003_stored_figures_and_sort_indexes.py"))
