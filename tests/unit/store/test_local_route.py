"""A local run (``farm sweep run``) and a farm share one database: a local run never takes a farm's job, and the
farm never publishes a local one (review finding 2). The farm's broker is kombu's in-memory transport.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from celery import Celery
from sqlalchemy import select, update

from farm.jobs import policy
from farm.jobs.policy import LOCAL_QUEUE, Message
from farm.spec.load import load_spec
from farm.spec.plan import Plan
from farm.store import local_runs, scheduling
from farm.store import sweeps as store
from farm.store.db import Database
from farm.store.models import Job
from workers import dispatch

SPEC = "name: shared\nmodels: [farm:digits-mlp]\nmethods: [fp32, dynamic]\nbenchmark: {batch_size: [1]}\n"


def plan() -> Plan:
    return load_spec(SPEC)


@pytest.fixture
def app() -> Iterator[Celery]:
    app = Celery("local-route-test", broker="memory://")

    def purge() -> None:  # the in-memory broker's queues are the process's, shared by every test
        with app.connection_for_write() as conn:
            for queue in ("cpu", LOCAL_QUEUE):
                conn.default_channel.queue_purge(queue)

    purge()
    yield app
    purge()
    app.close()


def waiting(app: Celery, queue: str) -> int:
    return dispatch.queue_lengths(app, [queue])[queue]


def queues(db: Database) -> dict[str, tuple[str, str | None]]:
    """Each job's (state, queue), by role."""
    with db.session(write=False) as s:
        return {r.role: (r.state, r.queue) for r in s.execute(select(Job.role, Job.state, Job.queue))}


def submit_to_farm(db: Database, app: Celery) -> dict[str, int]:
    """``farm sweep submit``: the reference queued and sent on "cpu", the trial pending on it."""
    submission = store.create_and_queue(db, plan(), "farm@host", lambda job: ("cpu", "all", None))
    dispatch.send(app, submission.messages)
    return submission.record.ids


def start_local_run(db: Database) -> local_runs.LocalDecision:
    """``farm sweep run`` of the same spec, up to its first decision (farm.jobs.sweeps.start_local_run, then
    farm.jobs.local.run_local's start)."""
    record = store.create(db, plan(), "laptop@host", route=lambda job: policy.LOCAL_ROUTE)
    return local_runs.start(db, record.to_run, "local:laptop:1")


def test_a_local_run_leaves_a_farm_job_waiting_for_a_farm_reference_to_the_farm(
    migrated_db: Database, app: Celery
) -> None:
    submit_to_farm(migrated_db, app)
    assert queues(migrated_db) == {"reference": ("queued", "cpu"), "trial": ("pending", "cpu")}

    decided = start_local_run(migrated_db)

    assert decided.decision.messages == []  # nothing for the pool: the reference is the farm's, running there
    assert queues(migrated_db) == {"reference": ("queued", "cpu"), "trial": ("pending", "cpu")}
    # The reference succeeds on the farm: the trial it releases goes to a queue the farm's workers consume.
    with migrated_db.session() as s:
        ref = s.scalar(select(Job.id).where(Job.role == "reference"))
        s.execute(update(Job).where(Job.id == ref).values(state="succeeded"))
    released = scheduling.decide_ended(migrated_db, ref).messages
    assert [m.queue for m in released] == ["cpu"]


def test_a_local_run_takes_the_farm_jobs_that_ended_and_run_again(migrated_db: Database, app: Celery) -> None:
    submit_to_farm(migrated_db, app)
    with migrated_db.session() as s:  # the farm's reference failed, and its trial with it
        s.execute(update(Job).values(state="failed", error="the farm could not load the model"))

    decided = start_local_run(migrated_db)

    # Made pending again by the local run itself, nobody else runs them: they are the run's.
    assert queues(migrated_db) == {"reference": ("queued", LOCAL_QUEUE), "trial": ("pending", LOCAL_QUEUE)}
    assert [m.queue for m in decided.decision.messages] == [LOCAL_QUEUE]


def test_the_farm_never_publishes_a_local_run_message(app: Celery) -> None:
    sent = dispatch.send(app, [Message(1, LOCAL_QUEUE, "all"), Message(2, "cpu", "all")])

    assert sent == 1
    assert (waiting(app, "cpu"), waiting(app, LOCAL_QUEUE)) == (1, 0)


def test_whether_an_end_is_decided_is_one_rule_for_both_executors() -> None:
    assert not policy.needs_decision("trial", False)  # nobody waits: its end settled its sweeps already
    assert all(policy.needs_decision(role, False) for role in ("reference", "stage", None))
    assert policy.needs_decision("trial", True)


def test_a_pool_process_death_says_what_usually_kills_one() -> None:
    loss = policy.worker_lost(3, 3, "local:h:9", what="worker process", hint=policy.POOL_DEATH_HINT)
    assert loss.reason == (
        "its worker process died 3 times while running it (killed by the OS, out of memory, or a crash in native "
        "code); not retried again"
    )


def test_a_local_run_is_told_the_runtime_of_each_job_it_releases(migrated_db: Database) -> None:
    """The pool gives a job to a process that has its runtime loaded where it can (farm/jobs/lanes.py)."""
    spec = "name: rt\nmodels: [farm:digits-mlp]\nmethods: [fp32, dynamic]\nbenchmark: {batch_size: [1]}\n"
    spec += "runtime: [torch, onnxruntime]\n"
    record = store.create(migrated_db, load_spec(spec), "laptop@host", route=lambda job: policy.LOCAL_ROUTE)
    first = local_runs.start(migrated_db, record.to_run, "local:laptop:1")
    ref = first.decision.messages[0].job_id
    assert first.runtimes == {ref: "torch"}  # the fp32 reference
    with migrated_db.session() as s:
        s.execute(update(Job).where(Job.id == ref).values(state="succeeded"))
    released = local_runs.job_ended(migrated_db, ref, "local:laptop:1").decided
    assert sorted(released.runtimes.values()) == ["onnxruntime", "onnxruntime", "torch"]
    assert set(released.runtimes) == {m.job_id for m in released.decision.messages}
