"""A job's life on both databases: claim, finish, and the fan-in that settles a sweep when its last job ends;
and the pool's check of connections a database restart may have closed."""

from __future__ import annotations

import random

import pytest
from sqlalchemy import text

import farm.store.db as store_db
from farm.artifacts import StoredObject
from farm.errors import StoreUnavailable
from farm.spec import load_spec
from farm.store import queries
from farm.store.db import Database, upgrade
from farm.store.models import Job, Sweep

pytestmark = pytest.mark.integration

SPEC = """\
name: lifecycle
models: [farm:digits-cnn]
methods: [fp32, dynamic, {static: {observer: [minmax, histogram, percentile]}}]
"""  # the fp32 reference + 4 trials


def _database(backend: str, fresh_pg_db: Database, tmp_path) -> Database:  # type: ignore[no-untyped-def]
    db = fresh_pg_db if backend == "postgresql" else Database(f"sqlite:///{tmp_path / 'life.db'}")
    upgrade(db)
    return db


def _run_to_the_end(db: Database, job_id: int) -> bool:
    with db.session() as s:
        queries.mark_queued(s, [job_id], queue="cpu")
    with db.autocommit() as conn:
        assert queries.claim_job(conn, job_id, "w1", lease_s=60) is not None
    obj = StoredObject(key=f"jobs/{job_id}/model.pt", uri=f"file:///a/{job_id}", sha256="0" * 64, size_bytes=3)
    with db.session() as s:
        assert queries.finish_job(s, job_id, "w1", {"duration_s": 0.1, "latency": []}, [("model", obj)])
    with db.session(write=False) as s:
        return s.get(Sweep, s.get(Job, job_id).sweep_id).state == "succeeded"  # type: ignore[union-attr]


@pytest.mark.parametrize("backend", ["postgresql", "sqlite"])
@pytest.mark.parametrize("order", ["oldest first", "newest first", "shuffled"])
def test_a_sweep_settles_when_its_last_job_ends_and_not_before(
    backend: str, order: str, fresh_pg_db: Database, tmp_path
) -> None:
    """The fan-in looks for the newest unfinished job first; whatever order the jobs end in, the sweep settles on
    the last one and on no other."""
    db = _database(backend, fresh_pg_db, tmp_path)
    plan = load_spec(SPEC)
    with db.session() as s:
        ids = queries.create_sweep(s, plan, "tester").to_run
    assert len(ids) == 5
    ids = sorted(ids) if order == "oldest first" else sorted(ids, reverse=True)
    if order == "shuffled":
        random.Random(0).shuffle(ids)
    settled = [_run_to_the_end(db, job_id) for job_id in ids]
    assert settled == [False, False, False, False, True]
    if backend == "sqlite":
        db.dispose()


def _backend_pid(db: Database) -> int:
    with db.session(write=False) as s:
        return int(s.scalar(text("SELECT pg_backend_pid()")))


def test_a_pooled_connection_closed_while_idle_is_replaced_unseen(
    fresh_pg_db: Database, pg_admin, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A connection that sat idle is pinged before it is handed out: one the server closed meanwhile (a restart,
    an idle timeout) is replaced, and the session using it never sees the difference."""
    monkeypatch.setattr(store_db, "PING_AFTER_IDLE_S", 0.0)
    db = Database(fresh_pg_db.url)
    try:
        first = _backend_pid(db)
        with pg_admin.connect() as conn:
            conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": first})
        assert _backend_pid(db) != first
    finally:
        db.dispose()


def test_a_connection_used_moments_ago_is_not_pinged(fresh_pg_db: Database, pg_admin, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """The control: within the idle window no ping is spent, so a connection closed meanwhile fails its statement
    (as StoreUnavailable, which the runners retry), and the pool connects afresh for the next one."""
    monkeypatch.setattr(store_db, "PING_AFTER_IDLE_S", 3600.0)
    db = Database(fresh_pg_db.url)
    try:
        first = _backend_pid(db)
        with pg_admin.connect() as conn:
            conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": first})
        with pytest.raises(StoreUnavailable):
            _backend_pid(db)
        assert _backend_pid(db) != first
    finally:
        db.dispose()
