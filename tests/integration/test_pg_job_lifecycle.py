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
from farm.spec.load import load_spec
from farm.store import lifecycle, plans
from farm.store.db import Database
from farm.store.migrate import upgrade
from farm.store.models import Sweep
from tests.job_rows import queue_as_sent

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
        queue_as_sent(s, [job_id], queue="cpu")
    with db.autocommit() as conn:
        assert lifecycle.claim_job(conn, job_id, worker, lease_s=60) is not None


def _result(job_id: int) -> tuple[dict, list]:
    obj = StoredObject(key=f"jobs/{job_id}/model.pt", uri=f"file:///a/{job_id}", sha256="0" * 64, size_bytes=3)
    return {"duration_s": 0.1, "latency": []}, [("model", obj)]


def _sweep_state(db: Database, sweep_id: int) -> str:
    with db.session(write=False) as s:
        return s.get(Sweep, sweep_id).state  # type: ignore[union-attr]


def _run_to_the_end(db: Database, job_id: int) -> None:
    _start(db, job_id)
    with db.session() as s:
        assert lifecycle.finish_job(s, job_id, "w1", *_result(job_id))


@pytest.mark.parametrize("order", ["oldest first", "newest first", "shuffled"])
def test_a_sweep_settles_when_its_last_job_ends_and_not_before(db: Database, order: str) -> None:
    """The fan-in looks for the newest unfinished job first; whatever order the jobs end in, the sweep settles on
    the last one and on no other."""
    with db.session() as s:
        record = plans.create_sweep(s, load_spec(SPEC), "tester")
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
        first = plans.create_sweep(s, load_spec(SPEC), "tester")
        second = plans.create_sweep(
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
        record = plans.create_sweep(s, load_spec(SPEC), "tester")
    *early, a, b = sorted(record.to_run)
    for job_id in early:
        _run_to_the_end(db, job_id)
    _start(db, a)
    _start(db, b)
    with db.session() as first, db.session() as second:  # two workers' transactions, open at the same time
        assert lifecycle.finish_job(first, a, "w1", *_result(a))
        assert lifecycle.finish_job(second, b, "w1", *_result(b))
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
            record = plans.create_sweep(s, load_spec(SPEC), "tester")
        job_id = record.to_run[0]
        _start(db, job_id)
        _terminate(pg_admin, _backend_pid(db))
        patience = runner._patience(job_id, 60)
        recorded = patience.call(lambda: runner._record_result(db, job_id, "w1", *_result(job_id)))
        assert recorded == ("succeeded", True)
        with db.session(write=False) as s:
            assert lifecycle.job_state(s, job_id) == "succeeded"
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
        record = plans.create_sweep(s, plan, "tester", route=lambda j: ("cpu", "all", None))
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


def test_a_failed_dependency_ends_its_waiters_and_theirs_but_a_stage_runs_on_what_finished(db: Database) -> None:
    import dataclasses

    from farm.jobs.stages import EXPANDERS, with_stage
    from farm.store import scheduling

    EXPANDERS.setdefault("noop-for-tests", lambda stage, inputs: [])
    plan = load_spec(SPEC)
    first, second, third = [j for j in plan.jobs if j.role == "trial"][:3]
    # A trial that waits for another trial besides its reference: it needs both to succeed.
    chained = dataclasses.replace(third, depends_on=(first.key,))
    plan = dataclasses.replace(plan, jobs=[chained if j.key == third.key else j for j in plan.jobs])
    plan = with_stage(plan, "noop-for-tests", {}, after=[first.key, second.key])
    with db.session() as s:
        record = plans.create_sweep(s, plan, "tester", route=lambda j: ("cpu", "all", None))
    reference, stage = record.ids[plan.references[0].key], record.ids[plan.jobs[-1].key]
    _start(db, reference)
    with db.session() as s:
        lifecycle.fail_job(s, reference, "model did not load")
        decision = scheduling.job_ended(s, reference)
    # The reference's trials end with its reason; the trial waiting for one of them too (the first blocking
    # dependency in its order names the reason): the decision follows the graph down.
    assert {record.ids[first.key], record.ids[chained.key]} <= set(decision.ended)
    assert _state_of(db, record.ids[first.key]) == (
        "failed",
        f"the fp32 reference (job {reference}) failed: model did not load",
    )
    assert _state_of(db, record.ids[chained.key])[0] == "failed"
    # The stage needs its inputs to have finished, however: it is released, to read what there is.
    assert stage not in decision.ended and [m.job_id for m in decision.messages] == [stage]
    assert _state_of(db, stage) == ("queued", None)
    assert _sweep_state(db, sweep_id := record.sweep_id) == "running"
    _run_to_the_end(db, stage)
    with db.session() as s:
        scheduling.job_ended(s, stage)
    assert _sweep_state(db, sweep_id) == "failed"


# --- stages adding jobs: the decision, the reaper, re-submits ------------------------------------------------------

#: What the "add-for-tests" expander saw (the input states) and adds (planned jobs after the stage).
_EXPANDED: dict[str, list] = {"seen": [], "add": []}

EXTRA = """\
name: extra
models: [farm:digits-cnn]
methods: [fp32, {static: {calibration_size: [8, 64]}}]
"""  # the same reference + two trials a stage adds


def _add_for_tests(stage, inputs):  # type: ignore[no-untyped-def]
    import dataclasses

    _EXPANDED["seen"] = sorted(i.state for i in inputs)
    if not any(i.state == "succeeded" for i in inputs):
        return []
    return [dataclasses.replace(j, depends_on=(stage.key,)) for j in _EXPANDED["add"]]


def _staged(db: Database, name: str = "lifecycle"):  # type: ignore[no-untyped-def]
    """The lifecycle sweep plus a stage after its first two trials that adds EXTRA's trials: (plan, record)."""
    from farm.jobs.stages import EXPANDERS, with_stage

    EXPANDERS.setdefault("add-for-tests", _add_for_tests)
    _EXPANDED["add"] = [j for j in load_spec(EXTRA).jobs if j.role == "trial"]
    plan = load_spec(SPEC.replace("lifecycle", name))
    trials = [j.key for j in plan.jobs if j.role == "trial"][:2]
    plan = with_stage(plan, "add-for-tests", {}, after=trials)
    with db.session() as s:
        return plan, plans.create_sweep(s, plan, "tester", route=lambda j: ("cpu", "all", None))


def _linked(db: Database, sweep_id: int) -> set[int]:
    from sqlalchemy import select

    from farm.store.models import SweepJob

    with db.session(write=False) as s:
        return set(s.scalars(select(SweepJob.job_id).where(SweepJob.sweep_id == sweep_id)))


def _through_stage_one(db: Database, plan, record, *, fail_second: bool = False) -> int:  # type: ignore[no-untyped-def]
    """Run the reference and the stage's two inputs (the second failed when asked) and claim the released stage;
    returns the stage's id."""
    from farm.store import scheduling

    reference, stage = record.ids[plan.references[0].key], record.ids[plan.jobs[-1].key]
    first, second = (record.ids[k] for k in plan.jobs[-1].depends_on)
    _run_to_the_end(db, reference)
    with db.session() as s:
        scheduling.job_ended(s, reference)
    _run_to_the_end(db, first)
    if fail_second:
        _start(db, second)
    else:
        _run_to_the_end(db, second)
    with db.session() as s:
        if fail_second:
            lifecycle.fail_job(s, second, "boom")
        released = scheduling.job_ended(s, first).messages + scheduling.job_ended(s, second).messages
        assert [m.job_id for m in released] == [stage]
    with db.autocommit() as conn:
        assert lifecycle.claim_job(conn, stage, "w1", lease_s=60) is not None
    return stage


def test_a_stage_with_a_failed_input_adds_jobs_that_the_reaper_releases_when_its_decision_was_missed(
    db: Database,
) -> None:
    """The window between a stage's record and its end's decision (its worker killed there): the jobs it added
    wait, and the reaper's round decides them; the decision taken later still names them as added."""
    from farm.jobs.stages import run_stage
    from farm.store import scheduling

    plan, record = _staged(db)
    stage = _through_stage_one(db, plan, record, fail_second=True)
    stage_job = plan.jobs[-1]
    assert run_stage(db, stage, "w1", stage_job.payload(), stage_job.key) == "succeeded"
    assert _EXPANDED["seen"] == ["failed", "succeeded"]  # the failed input is given to the expander too
    with db.session(write=False) as s:
        added = sorted(plans.ids_by_key(s, [j.key for j in _EXPANDED["add"]]).values())
    assert len(added) == 2 and all(_state_of(db, i) == ("pending", None) for i in added)
    assert set(added) <= _linked(db, record.sweep_id)
    # No job_ended for the stage (its worker died right after the record): the reaper's round releases them.
    reaped = scheduling.reap(db, max_attempts=3)
    assert sorted(m.job_id for m in reaped.messages) == added
    assert all(_state_of(db, i)[0] == "queued" for i in added)
    with db.session() as s:
        late = scheduling.job_ended(s, stage)
    assert sorted(late.added) == added and late.messages == []  # released once, by the reaper


def test_a_stage_decision_carries_the_jobs_it_added(db: Database) -> None:
    from farm.jobs.stages import run_stage
    from farm.store import scheduling

    plan, record = _staged(db)
    stage = _through_stage_one(db, plan, record)
    assert run_stage(db, stage, "w1", plan.jobs[-1].payload(), plan.jobs[-1].key) == "succeeded"
    with db.session() as s:
        decision = scheduling.job_ended(s, stage)
        added = sorted(plans.ids_by_key(s, [j.key for j in _EXPANDED["add"]]).values())
    assert sorted(decision.added) == added and sorted(m.job_id for m in decision.messages) == added


def test_resubmitting_a_staged_spec_keeps_the_jobs_its_stage_added(db: Database) -> None:
    """The plan names the stage, not what it added: a re-submit keeps those in the sweep (its total, its links),
    runs them again when they failed, and does not call the sweep done while they run."""
    from farm.jobs.stages import run_stage
    from farm.store import scheduling

    plan, record = _staged(db)
    stage = _through_stage_one(db, plan, record)
    assert run_stage(db, stage, "w1", plan.jobs[-1].payload(), plan.jobs[-1].key) == "succeeded"
    with db.session() as s:
        added = sorted(scheduling.job_ended(s, stage).added)
    with db.session() as s:
        lifecycle.fail_job(s, added[0], "out of memory")
        scheduling.job_ended(s, added[0])
    with db.session() as s:
        again = plans.create_sweep(s, plan, "tester", route=lambda j: ("cpu", "all", None))
    assert again.sweep_id == record.sweep_id and not again.created
    assert again.total == len(plan.jobs) + 2 and set(added) <= _linked(db, record.sweep_id)
    assert again.to_run == [added[0]]  # the failed one runs again; the other is still queued
    assert {again.ids[j.key] for j in _EXPANDED["add"]} == set(added)
    assert _state_of(db, added[0]) == ("pending", None) and _sweep_state(db, record.sweep_id) == "running"


def test_a_stage_adding_a_failed_job_of_another_sweep_links_it_and_runs_it_again(db: Database) -> None:
    from farm.jobs.stages import run_stage
    from farm.store import scheduling

    # Another sweep holds one of the jobs the stage will add, failed.
    _EXPANDED["add"] = [j for j in load_spec(EXTRA).jobs if j.role == "trial"]
    with db.session() as s:
        other = plans.create_sweep(s, load_spec(EXTRA), "tester", route=lambda j: ("cpu", "all", None))
    taken = other.ids[_EXPANDED["add"][0].key]
    _start(db, taken)
    with db.session() as s:
        lifecycle.fail_job(s, taken, "boom")
    plan, record = _staged(db)
    stage = _through_stage_one(db, plan, record)
    assert run_stage(db, stage, "w1", plan.jobs[-1].payload(), plan.jobs[-1].key) == "succeeded"
    assert taken in _linked(db, record.sweep_id) and _state_of(db, taken) == ("pending", None)
    with db.session() as s:
        decision = scheduling.job_ended(s, stage)
    assert taken in decision.added and taken in [m.job_id for m in decision.messages]


def test_the_downgrade_below_the_job_graph_refuses_while_stage_jobs_exist(db: Database) -> None:
    from farm.errors import ConfigError
    from farm.store.migrate import current_revision, downgrade, head_revision

    _staged(db)
    with pytest.raises(ConfigError, match=r"1 stage job\(s\) exist.*before downgrading"):
        downgrade(db, "0004")
    assert current_revision(db) == head_revision()  # nothing was dropped
