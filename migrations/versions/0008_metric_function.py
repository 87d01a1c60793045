"""A sweep's own metric function: its name and value on every metrics row, and in the view.

Revision ID: 0008
Revises: 0007
Create Date: 2027-04-01

- ``metrics.metric_name``: the metric function a job was measured with (``entrypoint:pkg.mod:fn``, the spec's
  top-level ``metric`` or ``farm quantize --metric-fn``); NULL without one;
- ``metrics.metric_value``: its value on the test split (higher is better);
- the view ``results_flat`` gains ``metric_name`` and ``metric_value`` after ``cosine``, and ``split`` after
  ``runtime``: the samples a job's figures were computed on (``test``, or ``validation`` for a tune's sensitivity
  jobs, which ``farm results best`` / ``pareto`` and the report's planes leave out unless asked).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_PARAMS = {"sqlite": "json_extract(j.spec, '$.method')", "postgresql": "j.spec -> 'method'"}
_SPLIT = {"sqlite": "json_extract(j.spec, '$.split')", "postgresql": "j.spec ->> 'split'"}

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
    COALESCE(j.runtime, 'torch') AS runtime,
    COALESCE({split}, 'test') AS split,
    m.batch_size AS batch_size,
    j.state AS state,
    m.health AS health,
    m.accuracy AS accuracy,
    m.accuracy_fp32 AS accuracy_fp32,
    m.accuracy_drop AS accuracy_drop,
    m.agreement AS agreement,
    m.sqnr_db AS sqnr_db,
    m.cosine AS cosine,
    m.metric_name AS metric_name,
    m.metric_value AS metric_value,
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
    CASE WHEN m.latency_p50_ms > 0 AND NOT m.simulated THEN (
        SELECT MIN(f.latency_p50_ms)
        FROM metrics f
        JOIN jobs fj ON fj.id = f.job_id
        WHERE fj.method = 'fp32' AND fj.state = 'succeeded' AND fj.model = j.model AND fj.dataset = j.dataset
            AND f.batch_size = m.batch_size AND f.hardware_id = m.hardware_id AND f.latency_p50_ms > 0
    ) / m.latency_p50_ms END AS speedup_vs_best_fp32,
    m.coverage AS coverage,
    m.simulated AS simulated,
    m.isolation AS isolation,
    m.runtime_version AS runtime_version,
    m.execution_provider AS execution_provider,
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

_METRICS = (("metric_name", sa.String(length=500)), ("metric_value", sa.Float()))


def view_sql(dialect: str) -> str:
    """The CREATE VIEW of results_flat on ``dialect`` (sqlite or postgresql)."""
    return RESULTS_FLAT.format(
        params=_PARAMS.get(dialect, _PARAMS["postgresql"]), split=_SPLIT.get(dialect, _SPLIT["postgresql"])
    )


def _revision(revision_file: str) -> Any:
    path = Path(__file__).with_name(revision_file)
    spec = importlib.util.spec_from_file_location(f"farm_migration_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def upgrade() -> None:
    op.execute("DROP VIEW results_flat")
    for name, kind in _METRICS:
        op.add_column("metrics", sa.Column(name, kind, nullable=True))
    op.execute(view_sql(op.get_context().dialect.name))


def downgrade() -> None:
    op.execute("DROP VIEW results_flat")
    # Plain DROP COLUMN (SQLite >= 3.35 has it), as 0006 and 0007 do.
    for name, _ in reversed(_METRICS):
        op.execute(f"ALTER TABLE metrics DROP COLUMN {name}")
    op.execute(_revision("0007_runtime.py").view_sql(op.get_context().dialect.name))
