"""farm.store.scheduling on SQLite: every way a job ends takes the same decision about its dependents and sweeps,
and the reaper sends again the queued jobs whose message a broker restart lost, and only those.

The broker is kombu's in-memory transport; nothing here runs a model.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import datetime, timedelta

import pytest
from celery import Celery

from farm.jobs import policy
from farm.jobs.policy import gave_up
from farm.spec.load import load_spec
from farm.spec.plan import Plan
from farm.store import execution, lifecycle, plans, scheduling, sweeps
from farm.store.db import Database
from farm.store.models import Job, Sweep
from tests.job_rows import submit_ready
from workers import dispatch

SPEC = """\
name: {name}
models: [farm:digits-mlp]
methods: {methods}
benchmark: {{batch_size: [1]}}
"""


def plan(name: str = "fanin", methods: str = "[fp32, dynamic, static]") -> Plan:
    return load_spec(SPEC.format(name=name, methods=methods))


def persist(db: Database, p: Plan, queue: str = "cpu") -> plans.SweepRecord:
    with db.session() as s:
        return plans.create_sweep(s, p, "tester", route=lambda j: (queue, "all", None))


def reference_and_dependents(db: Database, record: plans.SweepRecord) -> tuple[int, list[int]]:
    with db.session(write=False) as s:
        (ref,) = [i for i in record.to_run if s.get(Job, i).role == "reference"]  # type: ignore[union-attr]
        return ref, sorted(i for i in record.ids.values() if i != ref)


def states(db: Database, ids: list[int]) -> list[tuple[str, str | None]]:
    with db.session(write=False) as s:
        return [(j.state, j.error) for j in (s.get(Job, i) for i in ids) if j is not None]


def sweep_state(db: Database, sweep_id: int) -> str:
    with db.session(write=False) as s:
        sweep = s.get(Sweep, sweep_id)
        assert sweep is not None
        return sweep.state


@pytest.fixture
def app() -> Iterator[Celery]:
    app = Celery("scheduling-test", broker="memory://")

    def purge() -> None:  # the in-memory broker's queues are the process's, shared by every test
        with app.connection_for_write() as conn:
            conn.default_channel.queue_purge("cpu")

    purge()
    yield app
    purge()
    app.close()


def send_ready(db: Database, app: Celery, job_ids: list[int]) -> None:
    """What a submit does (farm.store.sweeps.create_and_queue, then the broker): queue the jobs that may start now
    and send them."""
    with db.session() as s:
        messages = scheduling.queue_ready(s, job_ids)
    dispatch.send(app, messages)


def kill_worker_under(db: Database, app: Celery, job_id: int, times: int) -> None:
    """The job is claimed and its worker dies, ``times`` times: the reaper re-queues it, then fails it."""
    for death in range(1, times + 1):
        with db.session() as s:
            assert lifecycle.claim_job(s, job_id, f"w{death}", lease_s=60, max_losses=3) is not None
            job = s.get(Job, job_id)
            assert job is not None
            job.lease_expires_at = lifecycle.utcnow() - timedelta(seconds=1)
        dispatch.reap(db, app, max_attempts=3)


def test_a_reference_the_reaper_fails_ends_its_dependents_and_settles_the_sweep(
    migrated_db: Database, app: Celery
) -> None:
    record = persist(migrated_db, plan())
    ref, deps = reference_and_dependents(migrated_db, record)
    send_ready(migrated_db, app, record.to_run)  # the reference is queued, its dependents wait

    kill_worker_under(migrated_db, app, ref, 3)

    reason = "its worker died 3 times while running it (last: w3); not retried again (FARM_MAX_ATTEMPTS=3)"
    assert states(migrated_db, [ref]) == [("failed", reason)]
    assert states(migrated_db, deps) == [("failed", f"the fp32 reference (job {ref}) failed: {reason}")] * 2
    assert sweep_state(migrated_db, record.sweep_id) == "failed"  # settled by the reaper, no resume


def test_a_retried_reference_that_fails_again_fails_its_dependents_again(migrated_db: Database, app: Celery) -> None:
    record = persist(migrated_db, plan())
    ref, deps = reference_and_dependents(migrated_db, record)
    send_ready(migrated_db, app, record.to_run)
    kill_worker_under(migrated_db, app, ref, 3)

    with migrated_db.session() as s:  # farm sweep retry --failed-only
        assert sorted(sweeps.reset_for_retry(s, record.sweep_id, failed_only=True)) == sorted([ref, *deps])
        decision = scheduling.schedule_pending(s, [ref, *deps])
    assert [m.job_id for m in decision.messages] == [ref] and decision.ended == []
    assert sweep_state(migrated_db, record.sweep_id) == "running"
    assert [st for st, _ in states(migrated_db, deps)] == ["pending", "pending"]

    kill_worker_under(migrated_db, app, ref, 3)

    assert [st for st, _ in states(migrated_db, [ref, *deps])] == ["failed"] * 3
    assert sweep_state(migrated_db, record.sweep_id) == "failed"


def test_dependents_retried_while_their_reference_stays_ended_end_at_once(migrated_db: Database, app: Celery) -> None:
    record = persist(migrated_db, plan())
    ref, deps = reference_and_dependents(migrated_db, record)
    with migrated_db.session() as s:
        lifecycle.fail_job(s, ref, "cancelled by hand", state="cancelled")
        for dep in deps:
            lifecycle.fail_job(s, dep, "an earlier failure")
        lifecycle.refresh_sweep_state(s, record.sweep_id)
    assert sweep_state(migrated_db, record.sweep_id) == "failed"

    with migrated_db.session() as s:  # --failed-only: the dependents go again, the cancelled reference does not
        ids = sweeps.reset_for_retry(s, record.sweep_id, failed_only=True)
        decision = scheduling.schedule_pending(s, ids)
        lifecycle.refresh_sweep_state(s, record.sweep_id)

    assert sorted(ids) == deps and decision.messages == [] and sorted(decision.ended) == deps
    expected = ("cancelled", f"the fp32 reference (job {ref}) cancelled: cancelled by hand")
    assert states(migrated_db, deps) == [expected] * 2
    assert sweep_state(migrated_db, record.sweep_id) == "cancelled"  # not left running with pending jobs


def _give_up(db: Database, app: Celery, ref: int) -> None:
    """workers.tasks (and the local pool): a transient error past FARM_TRANSIENT_RETRIES: ended by no particular
    worker, then decided as a job of unknown role."""
    execution.end_job(db, ref, None, "failed", gave_up(6, "S3 unreachable"))
    dispatch.after_job(db, app, ref, "failed", None)


def _deterministic(db: Database, app: Celery, ref: int) -> None:
    """farm.jobs.execute: a deterministic error, recorded by the worker holding the claim."""
    with db.session() as s:
        assert lifecycle.claim_job(s, ref, "w1", lease_s=60) is not None
        lifecycle.fail_job(s, ref, "the model does not load", worker="w1")
        lifecycle.settle_sweeps(s, ref)
    dispatch.after_job(db, app, ref, "failed", "reference")


def _reaper(db: Database, app: Celery, ref: int) -> None:
    kill_worker_under(db, app, ref, 3)


def _cancel(db: Database, app: Celery, ref: int) -> None:
    """farm sweep cancel of the reference's own sweep: the cancelled jobs are handed to the decision as a batch."""
    with db.session() as s:
        sweeps.cancel_unfinished(s, [ref], "cancelled by farm sweep cancel")
        scheduling.jobs_ended(s, [ref])


@pytest.mark.parametrize("end", [_give_up, _deterministic, _reaper, _cancel])
def test_every_way_a_reference_ends_ends_its_dependents_in_every_sweep_and_settles_them(
    migrated_db: Database, app: Celery, end: Callable[[Database, Celery, int], None]
) -> None:
    # Two sweeps share the reference (jobs are unique by key); the second also has a job of its own.
    first = persist(migrated_db, plan("first", "[fp32, dynamic]"))
    second = persist(migrated_db, plan("second", "[fp32, dynamic, static]"))
    ref, deps = reference_and_dependents(migrated_db, second)
    send_ready(migrated_db, app, second.to_run)

    end(migrated_db, app, ref)

    ref_state = states(migrated_db, [ref])[0][0]
    assert ref_state in ("failed", "cancelled")
    assert {st for st, _ in states(migrated_db, deps)} == {ref_state}
    assert all(
        e is not None and e.startswith(f"the fp32 reference (job {ref}) {ref_state}")
        for _, e in states(migrated_db, deps)
    )
    assert sweep_state(migrated_db, first.sweep_id) == ref_state
    assert sweep_state(migrated_db, second.sweep_id) == ref_state


def test_the_decision_is_harmless_for_a_job_that_has_not_ended_or_ended_twice(migrated_db: Database) -> None:
    record = persist(migrated_db, plan())
    ref, deps = reference_and_dependents(migrated_db, record)
    with migrated_db.session() as s:
        assert scheduling.job_ended(s, ref) == scheduling.Decision()  # pending: nothing decided
        lifecycle.fail_job(s, ref, "boom")
        first = scheduling.job_ended(s, ref)
        again = scheduling.job_ended(s, ref)
    assert sorted(first.ended) == deps and first.settled == [record.sweep_id]
    assert again.ended == []  # nothing left to end the second time
    assert [st for st, _ in states(migrated_db, deps)] == ["failed", "failed"]


def test_a_reference_that_succeeds_releases_its_dependents(migrated_db: Database, app: Celery) -> None:
    record = persist(migrated_db, plan())
    ref, deps = reference_and_dependents(migrated_db, record)
    with migrated_db.session() as s:
        assert submit_ready(s, [ref])
        assert lifecycle.claim_job(s, ref, "w1", lease_s=60) is not None
        assert lifecycle.finish_job(s, ref, "w1", {"latency": []})
        decision = scheduling.job_ended(s, ref)
    assert sorted(m.job_id for m in decision.messages) == deps and decision.ended == []
    assert [st for st, _ in states(migrated_db, deps)] == ["queued", "queued"]


# --- queued jobs whose message is gone ---------------------------------------------------------------------


def _queued(db: Database, n: int, queue: str = "cpu", name: str = "lost") -> list[int]:
    """``n`` queued jobs (their messages never sent: as after a broker restart), sent an hour ago."""
    methods = "[fp32, dynamic, static, {qat: {epochs: [1, 2, 3, 4, 5, 6]}}]"
    record = persist(db, plan(name, methods), queue)
    ids = sorted(record.ids.values())[:n]
    assert len(ids) == n
    with db.session() as s:
        for i in ids:
            job = s.get(Job, i)
            assert job is not None
            job.state, job.queued_at = "queued", lifecycle.utcnow() - timedelta(hours=1, seconds=-i)
    return ids


def _cutoff(seconds: float = 60) -> datetime:
    return lifecycle.utcnow() - timedelta(seconds=seconds)


def test_lost_messages_are_taken_oldest_first_only_where_the_broker_holds_fewer(migrated_db: Database) -> None:
    ids = _queued(migrated_db, 5)
    with migrated_db.session() as s:
        assert scheduling.stale_queues(s, _cutoff()) == ["cpu"]
        assert scheduling.take_lost(s, {"cpu": 5}, _cutoff()) == []  # a backlog: every message is there
        taken = scheduling.take_lost(s, {"cpu": 2}, _cutoff())  # three are missing
    assert [m.job_id for m in taken] == ids[:3] and {(m.queue, m.stage) for m in taken} == {("cpu", "all")}
    with migrated_db.session() as s:
        # Marked as sent now: not taken again before another bound, even if the broker still looks short.
        assert [m.job_id for m in scheduling.take_lost(s, {"cpu": 0}, _cutoff())] == ids[3:]
        assert scheduling.take_lost(s, {"cpu": 0}, _cutoff()) == []
        assert scheduling.stale_queues(s, _cutoff()) == []


def test_jobs_sent_moments_ago_or_of_a_local_run_are_never_taken(migrated_db: Database) -> None:
    ids = _queued(migrated_db, 3)
    local = _queued(migrated_db, 2, queue="local", name="local-run")
    with migrated_db.session() as s:
        assert scheduling.take_lost(s, {"cpu": 0}, _cutoff(seconds=7200)) == []  # all sent within the bound
        assert scheduling.stale_queues(s, _cutoff()) == ["cpu"]  # the local queue is nobody's broker queue
        assert {m.job_id for m in scheduling.take_lost(s, {"cpu": 0}, _cutoff())} == set(ids)
    assert [st for st, _ in states(migrated_db, local)] == ["queued", "queued"]


def _broker_length(app: Celery, queue: str) -> int:
    return dispatch.queue_lengths(app, [queue])[queue]


def test_the_reaper_sends_lost_messages_again_once(migrated_db: Database, app: Celery) -> None:
    ids = _queued(migrated_db, 4)
    assert _broker_length(app, "cpu") == 0  # the broker restarted empty

    assert dispatch.resend_lost(migrated_db, app, requeue_after_s=60) == 4
    assert _broker_length(app, "cpu") == 4
    assert dispatch.resend_lost(migrated_db, app, requeue_after_s=0) == 0  # all there now: nothing sent twice
    with migrated_db.session(write=False) as s:
        sent = [s.get(Job, i).queued_at for i in ids]  # type: ignore[union-attr]
    assert all(t is not None and t.replace(tzinfo=None) > _cutoff().replace(tzinfo=None) for t in sent)


def test_a_backlog_whose_messages_are_there_is_not_sent_again(migrated_db: Database, app: Celery) -> None:
    ids = _queued(migrated_db, 3)  # queued an hour ago, no worker has taken them yet: a backlog
    dispatch.send(app, [policy.Message(i, "cpu", "all") for i in ids])
    assert dispatch.resend_lost(migrated_db, app, requeue_after_s=0) == 0
    assert _broker_length(app, "cpu") == 3
