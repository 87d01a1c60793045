"""The sweep operations (farm.jobs.sweeps) on SQLite with a fake broker: no Redis, no Celery, no workers.

The operations take any :class:`farm.jobs.sweeps.Broker`; these tests hand them one that records what it was
sent (or fails to send), and check what the database holds afterwards.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest

from farm.errors import NotFound, TransientError
from farm.jobs import sweeps
from farm.jobs.local_workers import artifacts_url
from farm.jobs.policy import Message
from farm.routing import Pools
from farm.store import sweeps as store
from farm.store.migrate import open_database
from tests.sweeps import TOY_DATA, TOY_MLP, query, write_spec

SPEC = f"name: ops\nmodels: ['{TOY_MLP}']\ndataset: '{TOY_DATA}'\nmethods: [fp32, dynamic, static]\n"


class FakeBroker:
    """Records the messages it is sent; ``down`` makes every send fail as an unreachable broker does."""

    def __init__(self, down: bool = False) -> None:
        self.down = down
        self.sent: list[Message] = []
        self.reaped: list[int] = []

    def check(self) -> None:
        if self.down:
            raise TransientError("broker is unreachable")

    def send(self, messages: Iterable[Message]) -> int:
        self.check()
        batch = list(messages)
        self.sent += batch
        return len(batch)

    def reap(self, db: Any, sweep_id: int, *, max_attempts: int, store: Any) -> tuple[int, int]:
        self.reaped.append(sweep_id)
        return 0, 0


def _plan(tmp_path: Path) -> Any:
    return sweeps.load_plan(str(write_spec(tmp_path, SPEC)), False, Pools())


def _jobs(sweep_id: int) -> list[dict[str, Any]]:
    return query(
        "SELECT j.id, j.role, j.state, j.queue, j.error FROM jobs j JOIN sweep_jobs l ON l.job_id = j.id "
        "WHERE l.sweep_id = :s ORDER BY j.id",
        s=sweep_id,
    )


def test_submit_sends_the_references_and_leaves_the_trials_waiting(sweep_home: Path, tmp_path: Path) -> None:
    broker = FakeBroker()
    done = sweeps.submit(open_database(), broker, _plan(tmp_path), Pools(cpu="cpu-avx512"))

    jobs = _jobs(done.sweep_id)
    assert (done.name, done.total, done.cached, done.sent, done.waiting) == ("ops", 3, 0, 1, 2)
    reference = next(j for j in jobs if j["role"] == "reference")
    assert [(m.job_id, m.queue) for m in broker.sent] == [(reference["id"], "cpu-avx512")]
    assert sorted((j["role"], j["state"]) for j in jobs) == [("reference", "queued")] + [("trial", "pending")] * 2


def test_a_submit_the_broker_refuses_leaves_no_sweep_behind(sweep_home: Path, tmp_path: Path) -> None:
    db = open_database()
    with pytest.raises(TransientError):
        sweeps.submit(db, FakeBroker(down=True), _plan(tmp_path), Pools())

    assert store.list_sweeps(db, 10) == []
    assert query("SELECT id FROM jobs") == []


def test_a_re_submit_the_broker_refuses_keeps_the_sweep_and_cancels_what_was_not_sent(
    sweep_home: Path, tmp_path: Path
) -> None:
    db = open_database()
    first = sweeps.submit(db, FakeBroker(), _plan(tmp_path), Pools())
    sweeps.cancel(db, first.sweep_id)  # everything ends: the re-submit makes it pending again

    with pytest.raises(TransientError):
        sweeps.submit(db, FakeBroker(down=True), _plan(tmp_path), Pools())

    jobs = _jobs(first.sweep_id)
    reference = next(j for j in jobs if j["role"] == "reference")
    assert reference["state"] == "cancelled" and reference["error"] == sweeps.UNSENT_REASON
    # The trials waited for that reference: they end with it, and the sweep settles instead of running forever.
    assert {j["state"] for j in jobs if j["role"] == "trial"} == {"cancelled"}
    assert all(f"job {reference['id']}" in j["error"] for j in jobs if j["role"] == "trial")
    assert store.status(db, first.sweep_id).state == "cancelled"


def test_retry_sends_the_references_again_and_the_trials_wait_for_them(sweep_home: Path, tmp_path: Path) -> None:
    db = open_database()
    done = sweeps.submit(db, FakeBroker(), _plan(tmp_path), Pools())
    assert sweeps.cancel(db, done.sweep_id) == 3

    broker = FakeBroker()
    retried = sweeps.retry(db, broker, done.sweep_id, failed_only=False)

    assert (retried.to_retry, retried.sent, retried.waiting, retried.ended) == (3, 1, 2, 0)
    assert [j["state"] for j in _jobs(done.sweep_id) if j["role"] == "reference"] == ["queued"]
    assert sweeps.retry(db, FakeBroker(), done.sweep_id, failed_only=True).to_retry == 0  # nothing failed


def test_resume_reaps_and_sends_every_queued_job_again(sweep_home: Path, tmp_path: Path) -> None:
    db = open_database()
    done = sweeps.submit(db, FakeBroker(), _plan(tmp_path), Pools())

    broker = FakeBroker()
    resumed = sweeps.resume(db, broker, done.sweep_id)

    assert broker.reaped == [done.sweep_id]
    assert (resumed.sent, resumed.queued, resumed.released) == (1, 1, 0)
    assert [m.job_id for m in broker.sent] == [j["id"] for j in _jobs(done.sweep_id) if j["role"] == "reference"]


def test_operations_on_a_missing_sweep_say_not_found(sweep_home: Path) -> None:
    db = open_database()
    for operation in (
        lambda: sweeps.cancel(db, 99),
        lambda: sweeps.retry(db, FakeBroker(), 99, failed_only=False),
        lambda: sweeps.resume(db, FakeBroker(), 99),
    ):
        with pytest.raises(NotFound):
            operation()


def test_a_local_run_routes_its_jobs_to_the_local_queue(sweep_home: Path, tmp_path: Path) -> None:
    db = open_database()
    run = sweeps.start_local_run(db, _plan(tmp_path), 2, artifacts_url())

    assert (run.total, run.cached, len(run.to_run), run.workers) == (3, 0, 3, 2)
    assert {j["queue"] for j in _jobs(run.sweep_id)} == {"local"}
