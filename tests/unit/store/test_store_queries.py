"""The store on SQLite: persisting plans (jobs shared across sweeps), claims, leases and results.

Plans come from real specs (farm.spec.load.load_spec); results are hand-made ``JobResult.to_dict()``-shaped dicts,
so nothing here runs a model.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import func, select

from farm.artifacts import StoredObject
from farm.spec.load import load_spec
from farm.spec.plan import Plan
from farm.store import lifecycle, local_runs, plans, sweeps
from farm.store.db import Database
from farm.store.models import Artifact, Job, Metric, Sweep, SweepJob
from tests.job_rows import queue_as_sent

SPEC = """\
name: {name}
models: [farm:digits-mlp, farm:digits-cnn]
methods:
  - fp32
  - dynamic
  - static: {{observer: [minmax, histogram]}}
benchmark: {{batch_size: [1, 8]}}
"""  # 2 models x (reference + dynamic + 2 static) = 8 jobs


def plan(name: str = "first", extra: str = "") -> Plan:
    return load_spec(SPEC.format(name=name) + extra)


def result(*batch_sizes: int) -> dict[str, Any]:
    """What a worker records: JobResult.to_dict()'s shape, one latency entry per batch size."""
    return {
        "accuracy": 0.9,
        "accuracy_fp32": 0.95,
        "size_bytes": 1000,
        "size_ratio": 0.25,
        "simulated": False,
        "hardware": "test cpu",
        "hardware_id": "hw",
        "duration_s": 1.5,
        "warnings": ["a warning"],
        "latency": [
            {"batch_size": b, "latency_p50_ms": 1.0 * b, "latency_p90_ms": 1.1 * b, "latency_p99_ms": 1.2 * b,
             "throughput": 1000.0 / b, "reps": 20}
            for b in batch_sizes
        ],
    }  # fmt: skip


def persist(db: Database, p: Plan) -> plans.SweepRecord:
    with db.session() as s:
        return plans.create_sweep(s, p, "tester@host")


def jobs_by_key(db: Database) -> dict[str, Job]:
    with db.session(write=False) as s:
        return {j.key: j for j in s.scalars(select(Job))}


def count(db: Database, model: type) -> int:
    with db.session(write=False) as s:
        return int(s.scalar(select(func.count()).select_from(model)) or 0)


def succeed(db: Database, job_id: int, worker: str = "w1") -> None:
    with db.session() as s:
        queue_as_sent(s, [job_id], queue="local")
        assert lifecycle.claim_job(s, job_id, worker, lease_s=60) is not None
        obj = StoredObject(key=f"jobs/{job_id}/model.pt", uri=f"file:///a/{job_id}", sha256="0" * 64, size_bytes=3)
        assert lifecycle.finish_job(s, job_id, worker, result(1, 8), [("model", obj)])


def set_state(db: Database, job_id: int, state: str, error: str | None = None) -> None:
    with db.session() as s:
        job = s.get(Job, job_id)
        assert job is not None
        job.state, job.error, job.attempts = state, error, 3


# --- create_sweep ----------------------------------------------------------------------------------------


def test_a_plan_becomes_a_sweep_with_its_jobs_references_linked(migrated_db: Database) -> None:
    p = plan()
    record = persist(migrated_db, p)
    assert (record.created, record.total, record.cached) == (True, 8, 0)
    jobs = jobs_by_key(migrated_db)
    assert set(jobs) == {j.key for j in p.jobs}
    assert sorted(record.to_run) == sorted(j.id for j in jobs.values())
    for planned in p.jobs:
        job = jobs[planned.key]
        assert (job.role, job.state, job.sweep_id, job.model, job.method) == (
            planned.role, "pending", record.sweep_id, planned.spec.model, planned.method.method,
        )  # fmt: skip
        assert job.spec == planned.spec.to_dict()
        if planned.reference_key is None:
            assert job.reference_job_id is None
        else:
            assert job.reference_job_id == jobs[planned.reference_key].id
    with migrated_db.session(write=False) as s:
        sweep = s.get(Sweep, record.sweep_id)
        assert sweep is not None
        assert (sweep.name, sweep.spec_hash, sweep.state, sweep.submitter) == (
            "first", p.spec_hash, "running", "tester@host",
        )  # fmt: skip


def test_persisting_the_same_plan_again_reuses_the_sweep_and_its_links(migrated_db: Database) -> None:
    first = persist(migrated_db, plan())
    again = persist(migrated_db, plan())
    assert (again.sweep_id, again.created, again.total) == (first.sweep_id, False, 8)
    assert sorted(again.to_run) == sorted(first.to_run)
    assert (count(migrated_db, Sweep), count(migrated_db, Job), count(migrated_db, SweepJob)) == (1, 8, 8)


def test_a_changed_spec_text_is_another_sweep_sharing_the_unchanged_jobs(migrated_db: Database) -> None:
    first = persist(migrated_db, plan())
    for job_id in first.to_run[:3]:
        succeed(migrated_db, job_id)
    wider = plan(extra="bits: [8, 4]\n")  # same name, other text: 2 more static jobs per model
    second = persist(migrated_db, wider)
    assert second.sweep_id != first.sweep_id and second.created
    assert (second.total, second.cached) == (12, 3)
    assert count(migrated_db, Job) == 12  # the 8 shared jobs were linked, not created again
    assert count(migrated_db, SweepJob) == 8 + 12
    assert set(first.to_run[:3]).isdisjoint(second.to_run) and len(second.to_run) == 12 - 3


def test_another_sweep_reuses_every_job_that_succeeded_in_any_sweep(migrated_db: Database) -> None:
    first = persist(migrated_db, plan("first"))
    for job_id in first.to_run:
        succeed(migrated_db, job_id)
    with migrated_db.session() as s:
        assert lifecycle.refresh_sweep_state(s, first.sweep_id) == "succeeded"
    second = persist(migrated_db, plan("second"))
    assert (second.created, second.total, second.cached, second.to_run) == (True, 8, 8, [])
    with migrated_db.session(write=False) as s:
        sweep = s.get(Sweep, second.sweep_id)
        assert sweep is not None and sweep.state == "succeeded" and sweep.finished_at is not None
        assert sweeps.sweep_job_ids(s, second.sweep_id) == sorted(first.to_run)
        # the jobs still belong to the sweep that created them
        assert set(s.scalars(select(Job.sweep_id))) == {first.sweep_id}


def test_failed_and_cancelled_jobs_run_again_with_a_fresh_budget(migrated_db: Database) -> None:
    first = persist(migrated_db, plan())
    done, failed, cancelled, running, *rest = first.to_run
    succeed(migrated_db, done)
    set_state(migrated_db, failed, "failed", "boom")
    set_state(migrated_db, cancelled, "cancelled", "cancelled (Ctrl-C)")
    with migrated_db.session() as s:
        queue_as_sent(s, [running], queue="local")
        assert lifecycle.claim_job(s, running, "w9", lease_s=60) is not None
    again = persist(migrated_db, plan())
    assert again.cached == 1
    assert sorted(again.to_run) == sorted([failed, cancelled, *rest])  # not the running one
    with migrated_db.session(write=False) as s:
        for job_id in (failed, cancelled):
            job = s.get(Job, job_id)
            assert job is not None
            assert (job.state, job.error, job.attempts, job.worker) == ("pending", None, 0, None)
        kept = s.get(Job, running)
        assert kept is not None and (kept.state, kept.worker) == ("running", "w9")
        sweep = s.get(Sweep, again.sweep_id)
        assert sweep is not None and sweep.state == "running"


# --- claims, leases, results -----------------------------------------------------------------------------


def test_a_claim_is_exclusive(migrated_db: Database) -> None:
    job_id = persist(migrated_db, plan()).to_run[0]
    with migrated_db.session() as s:
        assert queue_as_sent(s, [job_id], queue="local") == 1
        job = lifecycle.claim_job(s, job_id, "w1", lease_s=60)
        assert job is not None and (job.state, job.worker, job.attempts) == ("running", "w1", 1)
    with migrated_db.session() as s:
        assert lifecycle.claim_job(s, job_id, "w2", lease_s=60) is None
        assert lifecycle.claim_job(s, job_id, "w1", lease_s=60) is None  # not twice by the same worker either
        assert lifecycle.extend_lease(s, job_id, "w2", 60) == "lost"
        assert lifecycle.extend_lease(s, job_id, "w1", 60) == "running"
    with migrated_db.session(write=False) as s:
        job = s.get(Job, job_id)
        assert job is not None and (job.worker, job.attempts) == ("w1", 1)


def test_a_finished_job_is_never_claimed_again(migrated_db: Database) -> None:
    job_id = persist(migrated_db, plan()).to_run[0]
    succeed(migrated_db, job_id)
    with migrated_db.session() as s:
        assert lifecycle.claim_job(s, job_id, "w2", lease_s=60) is None
        assert lifecycle.claim_job(s, job_id, "w2", lease_s=-1) is None


def test_an_expired_lease_can_be_claimed_and_the_old_holder_writes_nothing(migrated_db: Database) -> None:
    job_id = persist(migrated_db, plan()).to_run[0]
    with migrated_db.session() as s:
        assert lifecycle.claim_job(s, job_id, "w1", lease_s=60) is None  # pending: not sent yet
        queue_as_sent(s, [job_id], queue="cpu")
        assert lifecycle.claim_job(s, job_id, "w1", lease_s=-1) is not None  # its lease is already over
        assert lifecycle.claim_job(s, job_id, "w2", lease_s=60) is not None
    stored = StoredObject(key="jobs/k/model.pt", uri="file:///a/k", sha256="1" * 64, size_bytes=1)
    with migrated_db.session() as s:
        assert lifecycle.extend_lease(s, job_id, "w1", 60) == "lost"
        assert not lifecycle.finish_job(s, job_id, "w1", result(1), [("model", stored)])
        assert not lifecycle.fail_job(s, job_id, "w1 gave up", worker="w1")
        assert not lifecycle.release_job(s, job_id, "w1", "retry")
    with migrated_db.session(write=False) as s:
        job = s.get(Job, job_id)
        assert job is not None
        assert (job.state, job.worker, job.attempts, job.error) == ("running", "w2", 2, None)
        assert job.worker_losses == 1  # w1's lease ran out under it
        assert job.lease_expires_at is not None
        soon = lifecycle.utcnow().replace(tzinfo=None) + timedelta(seconds=30)
        assert job.lease_expires_at.replace(tzinfo=None) > soon
    assert (count(migrated_db, Metric), count(migrated_db, Artifact)) == (0, 0)
    with migrated_db.session() as s:
        assert lifecycle.finish_job(s, job_id, "w2", result(1, 8), [("model", stored)])
    assert (count(migrated_db, Metric), count(migrated_db, Artifact)) == (2, 1)


def _expire(db: Database, job_id: int) -> None:
    with db.session() as s:
        job = s.get(Job, job_id)
        assert job is not None and job.state == "running"
        job.lease_expires_at = lifecycle.utcnow() - timedelta(seconds=1)


def _reap(db: Database, max_attempts: int = 3) -> tuple[int, int]:
    from celery import Celery

    from workers import dispatch

    app = Celery("reaper-test", broker="memory://")
    return dispatch.reap(db, app, max_attempts)


def test_transient_retries_do_not_count_as_worker_deaths(migrated_db: Database) -> None:
    job_id = persist(migrated_db, plan()).to_run[0]
    for _ in range(4):  # S3 away: claimed, handed back, claimed again ...
        with migrated_db.session() as s:
            queue_as_sent(s, [job_id], queue="cpu")
            assert lifecycle.claim_job(s, job_id, "w1", lease_s=60, max_losses=3) is not None
            assert lifecycle.release_job(s, job_id, "w1", "retrying: S3 unreachable")
    with migrated_db.session() as s:
        assert lifecycle.claim_job(s, job_id, "w1", lease_s=60, max_losses=3) is not None
    _expire(migrated_db, job_id)  # ... then its worker dies once
    assert _reap(migrated_db) == (1, 0)
    with migrated_db.session(write=False) as s:
        job = s.get(Job, job_id)
        assert job is not None and (job.state, job.attempts, job.worker_losses) == ("queued", 5, 1)


def test_a_job_that_kills_its_worker_three_times_fails_with_the_reason(migrated_db: Database) -> None:
    record = persist(migrated_db, plan())
    job_id = record.to_run[0]  # a reference: its dependents end with it
    with migrated_db.session() as s:
        queue_as_sent(s, [job_id], queue="cpu")
    for death in (1, 2, 3):
        with migrated_db.session() as s:
            assert lifecycle.claim_job(s, job_id, f"w{death}", lease_s=60, max_losses=3) is not None
        _expire(migrated_db, job_id)
        assert _reap(migrated_db) == ((1, 0) if death < 3 else (0, 1))
    with migrated_db.session(write=False) as s:
        job = s.get(Job, job_id)
        assert job is not None and (job.state, job.worker_losses) == ("failed", 2)
        assert job.error == (
            "its worker died 3 times while running it (last: w3); not retried again (FARM_MAX_ATTEMPTS=3)"
        )
        assert lifecycle.sweep_counts(s, record.sweep_id)["failed"] >= 1


def test_a_late_duplicate_message_cannot_take_over_past_the_loss_budget(migrated_db: Database) -> None:
    job_id = persist(migrated_db, plan()).to_run[0]
    with migrated_db.session() as s:
        queue_as_sent(s, [job_id], queue="cpu")
        assert lifecycle.claim_job(s, job_id, "w1", lease_s=-1, max_losses=2) is not None
        assert lifecycle.claim_job(s, job_id, "w2", lease_s=-1, max_losses=2) is not None  # w1 died: loss 1
        assert lifecycle.claim_job(s, job_id, "w3", lease_s=60, max_losses=2) is None  # would be loss 2 of 2
        assert lifecycle.claim_job(s, job_id, "w3", lease_s=60, max_losses=3) is not None
    with migrated_db.session(write=False) as s:
        job = s.get(Job, job_id)
        assert job is not None and (job.worker, job.worker_losses) == ("w3", 2)


def test_local_jobs_of_a_gone_process_or_an_expired_lease_go_back_to_pending(migrated_db: Database) -> None:
    queued_dead, running_expired, running_live, queued_live, *_ = persist(migrated_db, plan()).to_run
    with migrated_db.session() as s:
        queue_as_sent(s, [queued_dead], queue="local", owner="local:h:1")
        queue_as_sent(s, [queued_live, running_expired, running_live], queue="local", owner="local:h:2")
        assert lifecycle.claim_job(s, running_expired, "local:h:3", lease_s=-1) is not None  # lease already over
        assert lifecycle.claim_job(s, running_live, "local:h:4", lease_s=60) is not None
    gone = {"local:h:1"}  # only process 1 has exited; 3 still runs, but its job's lease ran out
    ids = [queued_dead, running_expired, running_live, queued_live]
    with migrated_db.session() as s:
        reset = local_runs.reset_abandoned(s, ids, lambda w: w in gone, max_losses=3)
    assert sorted(reset) == sorted([queued_dead, running_expired])
    with migrated_db.session(write=False) as s:
        states = {i: (s.get(Job, i).state, s.get(Job, i).worker_losses) for i in ids}  # type: ignore[union-attr]
    assert states == {
        queued_dead: ("pending", 0),
        running_expired: ("pending", 1),  # a running job whose worker is gone counts a loss
        running_live: ("running", 0),
        queued_live: ("queued", 0),
    }


def test_a_local_job_whose_worker_process_died_too_often_fails_with_the_reason(migrated_db: Database) -> None:
    job_id = persist(migrated_db, plan()).to_run[0]
    with migrated_db.session() as s:
        queue_as_sent(s, [job_id], queue="local", owner="local:h:2")
        assert lifecycle.claim_job(s, job_id, "local:h:3", lease_s=-1) is not None  # its lease is over
        job = s.get(Job, job_id)
        assert job is not None
        job.worker_losses = 2
    with migrated_db.session() as s:
        assert local_runs.reset_abandoned(s, [job_id], lambda w: False, max_losses=3) == []
    with migrated_db.session(write=False) as s:
        job = s.get(Job, job_id)
        assert job is not None and job.state == "failed"
        assert job.error == "its worker process died 3 times while running it (last: local:h:3); not retried again"


def test_requeue_lost_moves_a_job_only_as_it_was_read(migrated_db: Database) -> None:
    job_id = persist(migrated_db, plan()).to_run[0]
    with migrated_db.session() as s:
        queue_as_sent(s, [job_id], queue="local")
        assert lifecycle.claim_job(s, job_id, "w1", lease_s=60) is not None
        assert not local_runs.requeue_lost(s, job_id, "running", "w2", 1)  # someone else's now
        assert local_runs.requeue_lost(s, job_id, "running", "w1", 1)
        assert not local_runs.requeue_lost(s, job_id, "running", "w1", 1)  # already moved
        job = s.get(Job, job_id)
        assert job is not None and (job.state, job.worker, job.worker_losses) == ("pending", None, 1)


def test_a_cancelled_job_keeps_no_result_from_its_worker(migrated_db: Database) -> None:
    record = persist(migrated_db, plan())
    job_id, other = record.to_run[:2]
    succeed(migrated_db, other)
    with migrated_db.session() as s:
        queue_as_sent(s, [job_id], queue="local")
        assert lifecycle.claim_job(s, job_id, "w1", lease_s=60) is not None
        assert sweeps.cancel_unfinished(s, record.to_run, "cancelled (Ctrl-C)") == len(record.to_run) - 1
        assert lifecycle.extend_lease(s, job_id, "w1", 60) == "cancelled"  # what the running job sees
        assert not lifecycle.finish_job(s, job_id, "w1", result(1))
        assert not lifecycle.fail_job(s, job_id, "late failure", worker="w1")
    with migrated_db.session(write=False) as s:
        job = s.get(Job, job_id)
        assert job is not None and (job.state, job.error) == ("cancelled", "cancelled (Ctrl-C)")
        assert s.get(Job, other).state == "succeeded"  # type: ignore[union-attr]
        assert s.scalar(select(func.count()).select_from(Metric).where(Metric.job_id == job_id)) == 0
        assert lifecycle.sweep_counts(s, record.sweep_id) == {"succeeded": 1, "cancelled": 7}


def test_a_result_is_one_metrics_row_per_batch_size(migrated_db: Database) -> None:
    job_id = persist(migrated_db, plan()).to_run[0]
    succeed(migrated_db, job_id)
    with migrated_db.session(write=False) as s:
        rows = s.scalars(select(Metric).where(Metric.job_id == job_id).order_by(Metric.batch_size)).all()
        assert [(m.batch_size, m.latency_p50_ms, m.accuracy, m.size_bytes) for m in rows] == [
            (1, 1.0, 0.9, 1000),
            (8, 8.0, 0.9, 1000),
        ]
        assert rows[0].extra["warnings"] == ["a warning"] and rows[0].extra["latency"] == {"reps": 20}
        job = s.get(Job, job_id)
        assert job is not None
        assert (job.state, job.duration_s, job.hardware, job.lease_expires_at) == ("succeeded", 1.5, "test cpu", None)


def test_the_sweep_state_follows_its_jobs(migrated_db: Database) -> None:
    record = persist(migrated_db, plan())
    first, second, *rest = record.to_run
    states = []
    with migrated_db.session() as s:
        states.append(lifecycle.refresh_sweep_state(s, record.sweep_id))
    succeed(migrated_db, first)
    with migrated_db.session() as s:
        lifecycle.fail_job(s, second, "boom")
        sweeps.cancel_unfinished(s, rest)
        states.append(lifecycle.refresh_sweep_state(s, record.sweep_id))
        sweeps.cancel_unfinished(s, [second])  # a finished job stays as it ended
        assert s.get(Job, second).state == "failed"  # type: ignore[union-attr]
    assert states == ["running", "failed"]


def test_routes_are_written_with_new_jobs_and_reset_on_jobs_that_run_again(migrated_db: Database) -> None:
    """farm sweep submit routes jobs as create_sweep inserts them; a re-run moves the jobs that will run (failed
    ones reset to pending, pending ones an interrupted submit left) to today's pools, and leaves the ones that
    succeeded where they ran."""

    def pool(route: tuple[str, str, str | None]):  # type: ignore[no-untyped-def]
        return lambda job: route

    def routes(ids: list[int]) -> dict[int, tuple]:
        with migrated_db.session() as s:
            rows = s.execute(select(Job.id, Job.queue, Job.stage, Job.finish_queue).where(Job.id.in_(ids))).all()
        return {r[0]: tuple(r[1:]) for r in rows}

    old, new = ("cpu-old", "all", None), ("gpu", "train", "cpu")
    first = persist_routed(migrated_db, plan(), pool(old))
    failed_id, done_id, left_id = first.to_run[:3]
    assert set(routes(first.to_run).values()) == {old}
    set_state(migrated_db, failed_id, "failed", "boom")
    set_state(migrated_db, done_id, "succeeded")  # left_id stays pending, as an interrupted submit leaves it
    again = persist_routed(migrated_db, plan(), pool(new))
    assert {failed_id, left_id} <= set(again.to_run) and done_id not in again.to_run
    now = routes(first.to_run)
    assert (now[failed_id], now[left_id], now[done_id]) == (new, new, old)


def persist_routed(db: Database, p: Plan, route) -> plans.SweepRecord:  # type: ignore[no-untyped-def]
    with db.session() as s:
        return plans.create_sweep(s, p, "tester@host", route=route)
