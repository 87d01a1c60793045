"""The metric function in the results database (migration 0008), on SQLite: ``metrics.metric_name`` and
``metric_value`` written from a result's ``metric_name`` / ``metric``, read by the view and filterable; 0007 -> 0008
-> 0007 -> 0008 with rows (PostgreSQL runs the same migrations in tests/unit/store/test_runtime_columns.py).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import inspect
from store_support import assert_params, seed_at_0005, view_columns

from farm.artifacts import StoredObject
from farm.spec.load import load_spec
from farm.store import lifecycle, plans
from farm.store.db import Database
from farm.store.metric_rows import metric_rows
from farm.store.migrate import current_revision, downgrade, head_revision, upgrade
from farm.store.results import ResultsQuery, query
from tests.job_rows import queue_as_sent

FN = "entrypoint:my_metrics.retrieval:recall_at_1"
SPEC = f"""\
name: own-metric
models: [farm:digits-cnn]
methods: [fp32, dynamic]
metric: {FN}
benchmark: {{batch_size: [1, 8]}}
"""


def test_metric_rows_rename_the_value_and_leave_jobs_without_one_null() -> None:
    rows = metric_rows(7, {"metric": 0.8, "metric_name": FN, "latency": [{"batch_size": 1}, {"batch_size": 8}]})
    assert [(r["metric_name"], r["metric_value"]) for r in rows] == [(FN, 0.8), (FN, 0.8)]
    (plain,) = metric_rows(7, {"latency": [{"batch_size": 1}]})
    assert plain["metric_name"] is None and plain["metric_value"] is None
    assert "metric" not in plain  # not a column of metrics


def test_a_result_with_a_metric_lands_in_the_view(migrated_db: Database) -> None:
    plan = load_spec(SPEC)
    assert {j.spec.metric for j in plan.jobs} == {FN}  # the reference carries it too
    values = {"fp32": 0.9, "dynamic": 0.85}
    with migrated_db.session() as s:
        record = plans.create_sweep(s, plan, "tester")
        ids = {j.spec.method.method: record.ids[j.key] for j in plan.jobs}
        queue_as_sent(s, list(ids.values()), queue="cpu")
        for method, job_id in ids.items():
            lifecycle.claim_job(s, job_id, "w", 60)
            result: dict[str, Any] = {
                "metric_name": FN,
                "metric": values[method],
                "latency": [{"batch_size": 1, "latency_p50_ms": 1.0}],
            }
            obj = StoredObject(f"jobs/{job_id}/model", f"file:///store/{job_id}", "0" * 64, 1)
            assert lifecycle.finish_job(s, job_id, "w", result, [("model", obj)])
    rows = query(migrated_db, ResultsQuery.parse(columns="job_id,method,metric_name,metric_value"))
    assert sorted((r["method"], r["metric_name"], r["metric_value"]) for r in rows) == [
        ("dynamic", FN, 0.85),
        ("fp32", FN, 0.9),
    ]
    got = query(migrated_db, ResultsQuery.parse(where="metric_value > 0.86", columns="job_id"))
    assert [r["job_id"] for r in got] == [ids["fp32"]]


def test_0008_goes_down_and_up_again_with_old_rows(sqlite_db: Database) -> None:
    upgrade(sqlite_db, "0005")
    seed_at_0005(sqlite_db)
    upgrade(sqlite_db)
    assert current_revision(sqlite_db) == head_revision()

    def metrics() -> list[tuple[int, Any, Any]]:
        rows = query(sqlite_db, ResultsQuery.parse(columns="job_id,metric_name,metric_value"))
        return [(r["job_id"], r["metric_name"], r["metric_value"]) for r in rows]

    assert metrics() == [(1, None, None), (2, None, None), (3, None, None)]
    downgrade(sqlite_db, "0007")
    assert not {"metric_name", "metric_value"} & set(view_columns(sqlite_db)[0])
    assert "runtime" in view_columns(sqlite_db)[0]  # 0007's view is back, whole
    with sqlite_db.connect() as conn:
        assert not {"metric_name", "metric_value"} & {c["name"] for c in inspect(conn).get_columns("metrics")}
    assert_params(sqlite_db)
    upgrade(sqlite_db)
    assert metrics() == [(1, None, None), (2, None, None), (3, None, None)]
    queried, listed = view_columns(sqlite_db)
    assert queried == listed and queried.index("metric_name") == queried.index("cosine") + 1
