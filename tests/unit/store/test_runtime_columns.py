"""The runtime in the results database (migration 0007), on SQLite and PostgreSQL: ``jobs.runtime`` written when a
plan is persisted, ``metrics.runtime_version`` / ``execution_provider`` from a result, and the view's ``runtime``,
``runtime_version``, ``execution_provider`` and ``speedup_vs_best_fp32``; 0006 -> 0007 -> 0006 -> 0007 with rows.

PostgreSQL is the server at FARM_TEST_POSTGRES_URL (default postgres@127.0.0.1:5432, trust auth), a database of
its own per test; unreachable, those cases skip with the reason, except under CI=true where they fail.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from sqlalchemy import create_engine, inspect
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError
from store_support import assert_params, seed_at_0005, view_columns

from farm.artifacts import StoredObject
from farm.spec.load import load_spec
from farm.store import lifecycle, plans
from farm.store.db import Database, redact_url
from farm.store.migrate import current_revision, downgrade, head_revision, upgrade
from farm.store.results import ResultsQuery, query
from tests.job_rows import queue_as_sent

PG_ADMIN = os.environ.get("FARM_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request: pytest.FixtureRequest, sqlite_url: str, make_db: Callable[[str], Database]) -> Iterator[Database]:
    """An empty database: an SQLite file, or a fresh PostgreSQL database dropped at teardown."""
    if request.param == "sqlite":
        yield make_db(sqlite_url)
        return
    admin = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 5})
    try:
        with admin.connect():
            pass
    except OperationalError as e:
        admin.dispose()
        if os.environ.get("CI") == "true":
            raise
        pytest.skip(f"PostgreSQL unreachable at {redact_url(PG_ADMIN)}: {' '.join(str(e.orig).split())}")
    name = f"farm_test_{secrets.token_hex(6)}"
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    database = Database(make_url(PG_ADMIN).set(database=name).render_as_string(hide_password=False))
    try:
        yield database
    finally:
        database.dispose()
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


SPEC = """\
name: runtimes
models: [farm:digits-cnn]
runtime: [torch, onnxruntime]
methods: [fp32, static]
benchmark: {batch_size: [1, 8]}
"""
#: p50 at batch size 1 per (method, runtime): the fastest fp32 is onnxruntime's, 6 ms.
P50 = {("fp32", "torch"): 10.0, ("fp32", "onnxruntime"): 6.0, ("static", "torch"): 4.0, ("static", "onnxruntime"): 3.0}


def _result(method: str, runtime: str) -> dict[str, Any]:
    """A worker's result as JobResult.to_dict() has it; the fp32 jobs time batch size 1 only."""
    sizes = (1,) if method == "fp32" else (1, 8)
    result: dict[str, Any] = {
        "accuracy": 0.9,
        "accuracy_fp32": 0.9,
        "accuracy_drop": 0.0,
        "hardware_id": "hw1",
        "latency": [{"batch_size": b, "latency_p50_ms": P50[(method, runtime)] * b, "speedup": 1.0} for b in sizes],
    }
    if runtime != "torch":
        result |= {"runtime_version": "1.32.0", "execution_provider": "CPUExecutionProvider"}
    return result


def _run_sweep(
    db: Database, result: Callable[[str, str], dict[str, Any]] = _result
) -> tuple[dict[tuple[str, str], int], int]:
    """Persist SPEC's plan and record ``result(method, runtime)`` for each of its jobs; returns the job ids by
    (method, runtime) and the sweep's id."""
    plan = load_spec(SPEC)
    upgrade(db)
    with db.session() as s:
        record = plans.create_sweep(s, plan, "tester")
        ids = {(j.spec.method.method, j.spec.method.runtime): record.ids[j.key] for j in plan.jobs}
        queue_as_sent(s, list(ids.values()), queue="cpu")
        for (method, runtime), job_id in ids.items():
            lifecycle.claim_job(s, job_id, "w", 60)
            obj = StoredObject(f"jobs/{job_id}/model", f"file:///store/{job_id}", "0" * 64, 1)
            assert lifecycle.finish_job(s, job_id, "w", result(method, runtime), [("model", obj)])
    return ids, record.sweep_id


def test_the_runtime_is_written_and_the_view_compares_every_runtime_with_the_fastest_fp32(db: Database) -> None:
    ids, _ = _run_sweep(db)
    assert set(ids) == set(P50)
    rows = query(db, ResultsQuery.parse(columns="job_id,batch_size,runtime,runtime_version,execution_provider,"
                                                "speedup_vs_best_fp32,recipe"))  # fmt: skip
    by_key = {(r["job_id"], r["batch_size"]): r for r in rows}
    for (method, runtime), job_id in ids.items():
        row = by_key[(job_id, 1)]
        assert row["runtime"] == runtime
        ort = runtime == "onnxruntime"
        assert (row["runtime_version"], row["execution_provider"]) == (
            ("1.32.0", "CPUExecutionProvider") if ort else (None, None)
        )
        assert row["speedup_vs_best_fp32"] == pytest.approx(6.0 / P50[(method, runtime)])
        assert row["recipe"].endswith(" ort") == ort
        if method == "static":  # no fp32 was timed at batch size 8
            assert by_key[(job_id, 8)]["speedup_vs_best_fp32"] is None
    ort_ids = sorted(i for (_, runtime), i in ids.items() if runtime == "onnxruntime")
    for where in ("runtime = 'onnxruntime'", "params.runtime = 'onnxruntime'"):
        got = query(db, ResultsQuery.parse(where=where, columns="job_id"))
        assert sorted({r["job_id"] for r in got}) == ort_ids, where
    torch_ids = sorted(i for (_, runtime), i in ids.items() if runtime == "torch")
    got = query(db, ResultsQuery.parse(where="params.runtime IS NULL", columns="job_id"))
    assert sorted({r["job_id"] for r in got}) == torch_ids  # torch configs keep their old JSON: no runtime key


def test_0007_reads_old_jobs_as_torch_and_goes_down_and_up_again(db: Database) -> None:
    upgrade(db, "0005")
    seed_at_0005(db)  # three jobs written before recipes and runtimes existed
    upgrade(db)
    assert current_revision(db) == head_revision()
    assert_params(db)

    def runtimes() -> list[tuple[int, str, Any, Any]]:
        rows = query(db, ResultsQuery.parse(columns="job_id,runtime,runtime_version,speedup_vs_best_fp32"))
        return [(r["job_id"], r["runtime"], r["runtime_version"], r["speedup_vs_best_fp32"]) for r in rows]

    assert runtimes() == [(1, "torch", None, None), (2, "torch", None, None), (3, "torch", None, None)]
    downgrade(db, "0006")
    assert "runtime" not in view_columns(db)[0]
    with db.connect() as conn:
        insp = inspect(conn)
        assert "runtime" not in {c["name"] for c in insp.get_columns("jobs")}
        assert not {"runtime_version", "execution_provider"} & {c["name"] for c in insp.get_columns("metrics")}
    assert_params(db)  # 0006's view is back, whole
    upgrade(db)
    assert runtimes() == [(1, "torch", None, None), (2, "torch", None, None), (3, "torch", None, None)]


def test_the_rivals_a_trial_was_timed_beside_reach_the_figures_a_tune_reads(db: Database) -> None:
    """``latency[i].rivals`` (benchmark.rivals) is stored in metrics.extra and read back, by the database's own JSON
    path, into the figures of farm.store.expansion.sweep_jobs: on SQLite and PostgreSQL alike."""
    from farm.store.expansion import sweep_jobs

    rival = {"runtime": "openvino", "fp32_p50_ms": 6.5, "p50_ms": 3.0, "speedup": 2.1, "speedup_ci_low": 2.0,
             "speedup_ci_high": 2.2, "stable": True, "blocks": 8}  # fmt: skip

    def result(method: str, runtime: str) -> dict[str, Any]:
        out = _result(method, runtime)
        if (method, runtime) == ("static", "onnxruntime"):
            out["latency"][0]["rivals"] = [rival]
        return out

    ids, sweep_id = _run_sweep(db, result)
    figures = {j.id: j.figures for j in sweep_jobs(db, sweep_id)}
    assert figures[ids[("static", "onnxruntime")]]["rivals"] == [rival]  # batch size 1's, the first row
    assert figures[ids[("static", "torch")]]["rivals"] is None
    assert figures[ids[("static", "onnxruntime")]]["latency_p50_ms"] == 3.0
