"""Figures a user can trust and query: health, recipe, params, confidence intervals and isolation.

Revision ID: 0006
Revises: 0005
Create Date: 2027-02-01

- ``metrics.health``: whether the figures mean anything (ok / degenerate_reference / collapsed / nan);
- ``jobs.recipe``: a short label naming the method and every non-default parameter (``qat int4 mavg pc n=32 e3``):
  two QAT jobs differing only in epochs no longer look identical; backfilled from each job's spec;
- ``metrics.latency_p50_ci_low_ms`` / ``_high_ms``, ``speedup_ci_low`` / ``_high``: 95 % intervals, and
  ``metrics.isolation``: how the timing was shielded from other work on the host;
- the view ``results_flat`` gains those, ``cosine`` (stored since 0001, never shown), and ``params``: the job's
  full method config as JSON, which ``--where "params.epochs = 3"`` reads. JSON is spelled per dialect
  (``json_extract`` on SQLite, ``->`` on PostgreSQL), so the view is created from :func:`view_sql`.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import context, op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_PARAMS = {"sqlite": "json_extract(j.spec, '$.method')", "postgresql": "j.spec -> 'method'"}

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
    j.recipe AS recipe,
    j.bits AS bits,
    j.calibration_size AS calibration_size,
    j.backend AS backend,
    j.observer AS observer,
    j.granularity AS granularity,
    j.device AS device,
    m.batch_size AS batch_size,
    j.state AS state,
    m.health AS health,
    m.accuracy AS accuracy,
    m.accuracy_fp32 AS accuracy_fp32,
    m.accuracy_drop AS accuracy_drop,
    m.agreement AS agreement,
    m.sqnr_db AS sqnr_db,
    m.cosine AS cosine,
    m.size_bytes AS size_bytes,
    m.size_ratio AS size_ratio,
    m.latency_p50_ms AS latency_p50_ms,
    m.latency_p50_ci_low_ms AS latency_p50_ci_low_ms,
    m.latency_p50_ci_high_ms AS latency_p50_ci_high_ms,
    m.latency_p90_ms AS latency_p90_ms,
    m.latency_p99_ms AS latency_p99_ms,
    m.throughput AS throughput,
    m.speedup AS speedup,
    m.speedup_ci_low AS speedup_ci_low,
    m.speedup_ci_high AS speedup_ci_high,
    m.coverage AS coverage,
    m.simulated AS simulated,
    m.isolation AS isolation,
    a.uri AS artifact_uri,
    j.worker AS worker,
    j.hardware AS hardware,
    j.duration_s AS duration_s,
    j.finished_at AS finished_at,
    j.error AS error,
    {params} AS params
FROM sweep_jobs sj
JOIN sweeps s ON s.id = sj.sweep_id
JOIN jobs j ON j.id = sj.job_id
LEFT JOIN metrics m ON m.job_id = j.id
LEFT JOIN artifacts a ON a.job_id = j.id AND a.kind = 'model'
"""

_FLOATS = ("latency_p50_ci_low_ms", "latency_p50_ci_high_ms", "speedup_ci_low", "speedup_ci_high")


def view_sql(dialect: str) -> str:
    """The CREATE VIEW of results_flat on ``dialect`` (sqlite or postgresql)."""
    return RESULTS_FLAT.format(params=_PARAMS.get(dialect, _PARAMS["postgresql"]))


def _view_sql(revision_file: str) -> str:
    path = Path(__file__).with_name(revision_file)
    spec = importlib.util.spec_from_file_location(f"farm_migration_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return str(module.RESULTS_FLAT)


def _backfill_recipes() -> None:
    # The label is computed by the engine's own function: a migration that froze a copy would label old jobs
    # unlike new ones. A spec this QuantFarm cannot read keeps the method name, and so does every job when a later
    # QuantFarm no longer has the function (the migration must still run).
    try:
        from farm.quant import recipe
    except ImportError:
        recipe = None  # type: ignore[assignment]

    bind = op.get_bind()
    rows = bind.execute(sa.text("SELECT id, spec, method FROM jobs WHERE role != 'stage'")).all()
    updates: list[dict[str, Any]] = []
    for job_id, spec, method in rows:
        try:
            data = json.loads(spec) if isinstance(spec, str) else spec
            label = recipe.recipe_label(data["method"]) if recipe is not None else method
        except Exception:
            label = method
        updates.append({"id": job_id, "recipe": label})
    if updates:
        bind.execute(sa.text("UPDATE jobs SET recipe = :recipe WHERE id = :id"), updates)


def upgrade() -> None:
    op.execute("DROP VIEW results_flat")
    op.add_column("jobs", sa.Column("recipe", sa.String(length=200), nullable=True))
    op.add_column("metrics", sa.Column("health", sa.String(length=24), nullable=True))
    op.add_column("metrics", sa.Column("isolation", sa.String(length=16), nullable=True))
    for name in _FLOATS:
        op.add_column("metrics", sa.Column(name, sa.Float(), nullable=True))
    if not context.is_offline_mode():
        _backfill_recipes()
    op.execute(view_sql(op.get_context().dialect.name))


def downgrade() -> None:
    op.execute("DROP VIEW results_flat")
    # Plain DROP COLUMN (SQLite >= 3.35 has it): a batch copy of jobs would have to rebuild every table that
    # references it.
    for name in (*reversed(_FLOATS), "isolation", "health"):
        op.execute(f"ALTER TABLE metrics DROP COLUMN {name}")
    op.execute("ALTER TABLE jobs DROP COLUMN recipe")
    op.execute(_view_sql("0003_stored_figures_and_sort_indexes.py"))
