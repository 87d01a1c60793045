"""A job whose pool process Celery killed at the hard time limit ends failed with that reason, at once."""

from __future__ import annotations

import socket
from datetime import timedelta
from pathlib import Path

from celery.exceptions import TimeLimitExceeded

from farm.spec.load import load_spec
from farm.store import lifecycle, plans
from farm.store.db import Database
from farm.store.migrate import ensure_schema
from farm.store.models import Job
from tests.job_rows import queue_as_sent
from tests.sweeps import FAST_BENCHMARK, TOY_DATA, TOY_MLP

SPEC = (
    f"name: limit\nmodels: ['{TOY_MLP}']\ndataset: '{TOY_DATA}'\nmethods: [fp32, dynamic, static]\n{FAST_BENCHMARK}\n"
)


def _running_trials(db: Database, worker: str | None = None) -> tuple[int, list[int]]:
    with db.session() as s:
        record = plans.create_sweep(s, load_spec(SPEC), "tester@host")
        ref, *trials = record.to_run
        queue_as_sent(s, trials, queue="cpu")
        for job_id in trials:
            assert lifecycle.claim_job(s, job_id, worker or f"{socket.gethostname()}:123", lease_s=3600) is not None
    return record.sweep_id, trials


def test_a_hard_time_limit_fails_the_job_with_the_reason(sweep_home: Path, monkeypatch) -> None:
    from workers import tasks

    monkeypatch.setenv("FARM_TASK_TIME_LIMIT_S", "90")
    db = Database()
    ensure_schema(db)
    sweep_id, (killed, other) = _running_trials(db)
    # Both have run for 95 s, on this host (the claims name host:123).
    with db.session() as s:
        for job_id in (killed, other):
            job = s.get(Job, job_id)
            job.started_at = lifecycle.utcnow() - timedelta(seconds=95)

    tasks._on_hard_time_limit(sender=tasks.run_job_task, exception=TimeLimitExceeded(90), args=[killed])
    # Other failures, and other tasks' time limits, are not this hook's business.
    tasks._on_hard_time_limit(sender=tasks.run_job_task, exception=RuntimeError("boom"), args=[other])

    class Foreign:
        name = "someone.else"

    tasks._on_hard_time_limit(sender=Foreign(), exception=TimeLimitExceeded(90), args=[other])
    with db.session(write=False) as s:
        job = s.get(Job, killed)
        assert job is not None and job.state == "failed" and job.lease_expires_at is None
        assert job.error == (
            "the job ran past its hard time limit of 90 s (FARM_TASK_TIME_LIMIT_S) and its worker process was killed"
        )
        assert lifecycle.job_state(s, other) == "running"
    db.dispose()


def test_a_job_already_finished_is_left_as_it_ended(sweep_home: Path) -> None:
    from workers import tasks

    db = Database()
    ensure_schema(db)
    _, (done, _) = _running_trials(db)
    with db.session() as s:
        lifecycle.fail_job(s, done, "cancelled while running", state="cancelled")
    tasks._on_hard_time_limit(sender=tasks.run_job_task, exception=TimeLimitExceeded(90), args=[done])
    with db.session(write=False) as s:
        job = s.get(Job, done)
        assert job is not None and (job.state, job.error) == ("cancelled", "cancelled while running")
    db.dispose()


def test_a_job_taken_over_since_is_not_failed_by_the_old_holders_limit(sweep_home: Path, monkeypatch) -> None:
    from workers import tasks

    monkeypatch.setenv("FARM_TASK_TIME_LIMIT_S", "90")
    db = Database()
    ensure_schema(db)
    _, (elsewhere, recent) = _running_trials(db, worker="other-host:77")
    with db.session() as s:
        s.get(Job, elsewhere).started_at = lifecycle.utcnow() - timedelta(seconds=95)  # type: ignore[union-attr]
        job = s.get(Job, recent)
        job.worker, job.started_at = f"{socket.gethostname()}:5", lifecycle.utcnow() - timedelta(seconds=3)  # type: ignore[union-attr]
    for job_id in (elsewhere, recent):  # held by another host; claimed here 3 s ago (a takeover)
        tasks._on_hard_time_limit(sender=tasks.run_job_task, exception=TimeLimitExceeded(90), args=[job_id])
    with db.session(write=False) as s:
        assert [lifecycle.job_state(s, i) for i in (elsewhere, recent)] == ["running", "running"]
    db.dispose()
