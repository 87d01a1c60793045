"""A job's life on both databases: claim, finish, and the fan-in that settles a sweep when its last job ends;
and the pool's check of connections a database restart may have closed."""

from __future__ import annotations

import random
from collections.abc import Iterator

import pytest
from sqlalchemy import text

import farm.store.engines as store_engines
from farm.artifacts import StoredObject
from farm.errors import StoreUnavailable
from farm.spec import load_spec
from farm.store import queries
from farm.store.db import Database
from farm.store.migrate import upgrade
from farm.store.models import Sweep

pytestmark = pytest.mark.integration

SPEC = """\
name: lifecycle
models: [farm:digits-cnn]
methods: [fp32, dynamic, {static: {observer: [minmax, histogram, percentile]}}]
"""  # the fp32 reference + 4 trials


@pytest.fixture(params=["postgresql", "sqlite"])
def db(request: pytest.FixtureRequest, tmp_path) -> Iterator[Database]:  # type: ignore[no-untyped-def]
    """A migrated database of each kind (PostgreSQL only where the test asks for it: SQLite needs no server)."""
    if request.param == "postgresql":
        database = request.getfixturevalue("fresh_pg_db")
        upgrade(database)
        yield database
        return
    database = Database(f"sqlite:///{tmp_path / 'life.db'}")
    upgrade(database)
    yield database
    database.dispose()


def _start(db: Database, job_id: int, worker: str = "w1") -> None:
    with db.session() as s:
        queries.mark_queued(s, [job_id], queue="cpu")
    with db.autocommit() as conn:
        assert queries.claim_job(conn, job_id, worker, lease_s=60) is not None


def _result(job_id: int) -> tuple[dict, list]:
    obj = StoredObject(key=f"jobs/{job_id}/model.pt", uri=f"file:///a/{job_id}", sha256="0" * 64, size_bytes=3)
    return {"duration_s": 0.1, "latency": []}, [("model", obj)]


def _sweep_state(db: Database, sweep_id: int) -> str:
    with db.session(write=False) as s:
        return s.get(Sweep, sweep_id).state  # type: ignore[union-attr]


def _run_to_the_end(db: Database, job_id: int) -> None:
    _start(db, job_id)
    with db.session() as s:
        assert queries.finish_job(s, job_id, "w1", *_result(job_id))


@pytest.mark.parametrize("order", ["oldest first", "newest first", "shuffled"])
def test_a_sweep_settles_when_its_last_job_ends_and_not_before(db: Database, order: str) -> None:
    """The fan-in looks for the newest unfinished job first; whatever order the jobs end in, the sweep settles on
    the last one and on no other."""
    with db.session() as s:
        record = queries.create_sweep(s, load_spec(SPEC), "tester")
    ids = record.to_run
    assert len(ids) == 5
    ids = sorted(ids) if order == "oldest first" else sorted(ids, reverse=True)
    if order == "shuffled":
        random.Random(0).shuffle(ids)
    settled = []
    for job_id in ids:
        _run_to_the_end(db, job_id)
        settled.append(_sweep_state(db, record.sweep_id) == "succeeded")
    assert settled == [False, False, False, False, True]


def test_a_job_shared_by_two_sweeps_settles_each_only_when_its_own_jobs_are_done(db: Database) -> None:
    """Jobs are unique by key across sweeps: a second spec with one more method links the first's jobs. Ending
    the shared ones settles the first sweep, not the second, which waits for its own extra job."""
    with db.session() as s:
        first = queries.create_sweep(s, load_spec(SPEC), "tester")
        second = queries.create_sweep(
            s,
            load_spec(
                SPEC.replace("name: lifecycle", "name: wider") + "bits: [8]\n"
                "include: [{method: static, observer: moving_average}]\n"
            ),
            "tester",
        )
    extra = sorted(set(second.to_run) - set(first.to_run))
    assert len(extra) == 1 and set(first.to_run) <= set(second.to_run)
    for job_id in first.to_run:
        _run_to_the_end(db, job_id)
    assert (_sweep_state(db, first.sweep_id), _sweep_state(db, second.sweep_id)) == ("succeeded", "running")
    _run_to_the_end(db, extra[0])
    assert _sweep_state(db, second.sweep_id) == "succeeded"


def test_two_last_jobs_ending_at_once_leave_the_sweep_to_the_reaper(fresh_pg_db: Database) -> None:
    """On PostgreSQL each of two concurrent finishes sees the other job still running, so neither settles the
    sweep; the reaper's round does."""
    from workers import dispatch

    db = fresh_pg_db
    upgrade(db)
    with db.session() as s:
        record = queries.create_sweep(s, load_spec(SPEC), "tester")
    *early, a, b = sorted(record.to_run)
    for job_id in early:
        _run_to_the_end(db, job_id)
    _start(db, a)
    _start(db, b)
    with db.session() as first, db.session() as second:  # two workers' transactions, open at the same time
        assert queries.finish_job(first, a, "w1", *_result(a))
        assert queries.finish_job(second, b, "w1", *_result(b))
    assert _sweep_state(db, record.sweep_id) == "running"  # the race: nobody settled it
    assert dispatch.reap(db, None, max_attempts=3) == (0, 0)
    assert _sweep_state(db, record.sweep_id) == "succeeded"


def _backend_pid(db: Database) -> int:
    with db.session(write=False) as s:
        return int(s.scalar(text("SELECT pg_backend_pid()")))


def _terminate(pg_admin, pid: int) -> None:  # type: ignore[no-untyped-def]
    """Close a server connection as a restart or an idle timeout would (waiting until it is gone)."""
    with pg_admin.connect() as conn:
        conn.execute(text("SELECT pg_terminate_backend(:pid, 5000)"), {"pid": pid})


def test_a_pooled_connection_closed_while_idle_is_replaced_unseen(
    fresh_pg_db: Database, pg_admin, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A connection that sat idle is pinged before it is handed out: one the server closed meanwhile (a restart,
    an idle timeout) is replaced, and the session using it never sees the difference."""
    monkeypatch.setattr(store_engines, "PING_AFTER_IDLE_S", 0.0)
    db = Database(fresh_pg_db.url)
    try:
        first = _backend_pid(db)
        _terminate(pg_admin, first)
        assert _backend_pid(db) != first
    finally:
        db.dispose()


def test_a_connection_used_moments_ago_is_not_pinged(fresh_pg_db: Database, pg_admin, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """The control: within the idle window no ping is spent, so a connection closed meanwhile fails its statement
    (as StoreUnavailable, which the runners retry), and the pool connects afresh for the next one."""
    monkeypatch.setattr(store_engines, "PING_AFTER_IDLE_S", 3600.0)
    db = Database(fresh_pg_db.url)
    try:
        first = _backend_pid(db)
        _terminate(pg_admin, first)
        with pytest.raises(StoreUnavailable):
            _backend_pid(db)
        assert _backend_pid(db) != first
    finally:
        db.dispose()


def test_a_result_survives_a_connection_closed_moments_ago(fresh_pg_db: Database, pg_admin, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """A connection used moments ago is not pinged; if the database closed it meanwhile, recording the result
    fails on it once and goes through at once on the connection the pool opens instead: the job's work is not
    lost (the runner's patience with an unreachable database, farm.outage)."""
    from farm.jobs import execute as runner

    monkeypatch.setattr(store_engines, "PING_AFTER_IDLE_S", 3600.0)
    db = Database(fresh_pg_db.url)
    try:
        upgrade(db)
        with db.session() as s:
            record = queries.create_sweep(s, load_spec(SPEC), "tester")
        job_id = record.to_run[0]
        _start(db, job_id)
        _terminate(pg_admin, _backend_pid(db))
        patience = runner._patience(job_id, 60)
        assert patience.call(lambda: runner._record(db, job_id, "w1", *_result(job_id))) == "succeeded"
        with db.session(write=False) as s:
            assert queries.job_state(s, job_id) == "succeeded"
    finally:
        db.dispose()


# --- the job graph (job_dependencies) -----------------------------------------------------------------------------


def _graph(db: Database) -> tuple[int, list[int], int]:
    """The lifecycle sweep plus a stage-like job waiting for two of its trials: (sweep, trials, waiter)."""
    from farm.jobs.stages import EXPANDERS, with_stage

    EXPANDERS.setdefault("noop-for-tests", lambda stage, inputs: [])
    plan = load_spec(SPEC)
    trials = [j.key for j in plan.jobs if j.role == "trial"][:2]
    plan = with_stage(plan, "noop-for-tests", {}, after=trials)
    with db.session() as s:
        record = queries.create_sweep(s, plan, "tester", route=lambda j: ("cpu", "all", None))
    return record.sweep_id, [record.ids[k] for k in trials], record.ids[plan.jobs[-1].key]


def _state_of(db: Database, job_id: int) -> tuple[str, str | None]:
    from farm.store.models import Job

    with db.session(write=False) as s:
        job = s.get(Job, job_id)
        assert job is not None
        return job.state, job.error


def test_a_job_with_two_dependencies_is_released_only_when_both_succeeded(db: Database) -> None:
    from farm.store import scheduling

    _, (first, second), waiter = _graph(db)
    with db.session() as s:
        assert sorted(scheduling.dependents(s, first) + scheduling.dependents(s, second)) == [waiter, waiter]
        assert scheduling.queue_ready(s, [waiter]) == []  # its dependencies have not even run
    _run_to_the_end(db, first)
    with db.session() as s:
        assert scheduling.job_ended(s, first).messages == []
    assert _state_of(db, waiter) == ("pending", None)
    _run_to_the_end(db, second)
    with db.session() as s:
        assert [m.job_id for m in scheduling.job_ended(s, second).messages] == [waiter]
    assert _state_of(db, waiter)[0] == "queued"


def test_a_failed_dependency_ends_its_waiters_and_theirs(db: Database) -> None:
    from farm.store import scheduling

    sweep_id, (first, _), waiter = _graph(db)
    with db.session() as s:
        (reference,) = [j for j in queries.sweep_job_ids(s, sweep_id) if scheduling.dependents(s, j, ("pending",))][:1]
    _start(db, reference)
    with db.session() as s:
        queries.fail_job(s, reference, "model did not load")
        decision = scheduling.job_ended(s, reference)
    # The reference's trials end with its reason, and the job waiting for two of them ends with theirs.
    assert first in decision.ended and waiter in decision.ended
    assert _state_of(db, first) == ("failed", f"the fp32 reference (job {reference}) failed: model did not load")
    state, error = _state_of(db, waiter)
    assert state == "failed" and error is not None and error.startswith("job ")
    assert _sweep_state(db, sweep_id) == "failed"
