"""A database outage is not a worker loss (issue 10, section 2): a worker keeps the result it computed and records
it once the database is back; ``--wait`` / ``--watch`` reconnect. SQLite, the local store and a fake engine here;
tests/integration/farm/test_farm_outages.py injects the outages for real (a TCP proxy in front of PostgreSQL and
Redis).
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from farm.artifacts import LocalStore
from farm.errors import StoreUnavailable
from farm.jobs import execute as runner
from farm.jobs.contract import JobResult
from farm.outage import Patience
from farm.spec.load import load_spec
from farm.store import plans
from farm.store.db import Database
from farm.store.migrate import upgrade
from tests.job_rows import submit_ready

SPEC = "name: outage\nmodels: [farm:digits-mlp]\nmethods: [fp32]\n"


# --- Patience: the retry policy -----------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def sleep(self, s: float) -> None:
        self.sleeps.append(s)
        self.now += s

    def __call__(self) -> float:
        return self.now


def _flaky(failures: int) -> Any:
    calls = {"n": 0}

    def step() -> str:
        calls["n"] += 1
        if calls["n"] <= failures:
            raise StoreUnavailable("database x is unreachable: connection refused")
        return "done"

    step.calls = calls  # type: ignore[attr-defined]
    return step


def test_patience_retries_with_backoff_and_says_so_once_per_outage() -> None:
    clock, said = FakeClock(), []
    patience = Patience(
        60,
        setting="FARM_X_S",
        on_wait=lambda e, left: said.append(("wait", left)),
        on_back=lambda: said.append(("back", 0)),
        sleep=clock.sleep,
        clock=clock,
    )
    assert patience.call(_flaky(6)) == "done"
    assert clock.sleeps == [0.0, 0.5, 1.0, 2.0, 4.0, 5.0]  # at once (a dead pooled connection), then backoff, capped
    assert said == [("wait", 60), ("back", 0)]
    assert patience.call(_flaky(1)) == "done"  # a second outage: its own clock, said again
    assert said[2:] == [("wait", 60), ("back", 0)]


def test_patience_gives_up_after_its_bound_naming_the_setting_then_tries_once() -> None:
    clock = FakeClock()
    patience = Patience(10, setting="FARM_X_S", sleep=clock.sleep, clock=clock)
    step = _flaky(10**6)
    with pytest.raises(StoreUnavailable, match=r"unreachable: connection refused \(for 10 s, FARM_X_S\); giving up"):
        patience.call(step)
    assert 10 <= clock.now < 16
    tried = step.calls["n"]
    with pytest.raises(StoreUnavailable):
        patience.call(step)  # the outage goes on: no second wait of 10 s
    assert step.calls["n"] == tried + 1


def test_a_step_that_fails_otherwise_is_not_retried() -> None:
    calls = []

    def step() -> None:
        calls.append(1)
        raise ValueError("a bug")

    with pytest.raises(ValueError):
        Patience(60, setting="FARM_X_S", sleep=lambda s: None).call(step)
    assert calls == [1]


# --- a worker's record through an outage ----------------------------------------------------------------------


class OutageDb:
    """A Database whose every session / connection raises StoreUnavailable while ``down`` is set."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.down = threading.Event()
        self.refused = 0

    def _check(self) -> None:
        if self.down.is_set():
            self.refused += 1
            raise StoreUnavailable(f"database {self.db.redacted_url} is unreachable: connection refused")

    @contextlib.contextmanager
    def session(self, **kw: Any) -> Iterator[Any]:
        self._check()
        with self.db.session(**kw) as s:
            yield s

    @contextlib.contextmanager
    def autocommit(self) -> Iterator[Any]:
        self._check()
        with self.db.autocommit() as c:
            yield c


@pytest.fixture
def db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Database]:
    monkeypatch.setenv("FARM_HOME", str(tmp_path / "home"))
    database = Database(f"sqlite:///{tmp_path / 'farm.db'}")
    upgrade(database)
    yield database
    database.dispose()


def _queued_job(db: Database) -> int:
    with db.session() as s:
        (job_id,) = plans.create_sweep(s, load_spec(SPEC), "tester").to_run
        assert submit_ready(s, [job_id])
    return job_id


def _fake_run_job(monkeypatch: pytest.MonkeyPatch, outage: OutageDb, restore_after_s: float | None) -> None:
    """run_job computes a result, and the database goes away as it ends (back ``restore_after_s`` later)."""

    def run_job(spec: Any, out_dir: Path, **_: Any) -> JobResult:
        (out_dir / "model.pt").write_bytes(b"weights" * 10)
        (out_dir / "manifest.json").write_text(json.dumps({"ok": True}))
        outage.down.set()
        if restore_after_s is not None:
            threading.Timer(restore_after_s, outage.down.clear).start()
        return JobResult(
            model="m", dataset="d", method="fp32", config={}, bits=None, calibration_size=None, backend=None,
            observer=None, granularity=None, device="cpu", seed=0, threads=1, duration_s=0.01,
            accuracy=0.97,
        )  # fmt: skip

    monkeypatch.setattr("farm.jobs.steps.run_job", run_job)


def test_a_result_computed_during_a_database_outage_is_recorded_when_it_comes_back(
    db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    job_id = _queued_job(db)
    outage = OutageDb(db)
    _fake_run_job(monkeypatch, outage, restore_after_s=2.0)

    outcome = runner.execute_job(
        job_id, db=outage, store=LocalStore(tmp_path / "artifacts"), worker="host:1", heartbeat_s=5, record_retry_s=30
    )

    assert outcome.state == "succeeded"
    assert outage.refused >= 3  # the record was refused for a while, not just once
    with db.session(write=False) as s:
        job = s.execute(text("SELECT state, attempts, worker_losses, error FROM jobs")).one()
        kinds = sorted(s.scalars(text("SELECT kind FROM artifacts")))
    assert tuple(job) == ("succeeded", 1, 0, None)
    assert kinds == ["manifest", "model"]


def test_a_lease_renewal_that_cannot_reach_the_database_keeps_the_job_running(
    db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    job_id = _queued_job(db)
    outage = OutageDb(db)
    stopped_during_outage = []

    def run_job(spec: Any, out_dir: Path, should_stop: Any, **_: Any) -> JobResult:
        outage.down.set()
        refused = outage.refused
        deadline = threading.Event()
        deadline.wait(0.6)  # several renewals (every 0.1 s) fail meanwhile
        stopped_during_outage.append((should_stop(), outage.refused - refused))
        outage.down.clear()
        deadline.wait(0.3)  # renewed again
        (out_dir / "model.pt").write_bytes(b"w")
        return JobResult(
            model="m", dataset="d", method="fp32", config={}, bits=None, calibration_size=None, backend=None,
            observer=None, granularity=None, device="cpu", seed=0, threads=1, duration_s=0.01,
        )  # fmt: skip

    monkeypatch.setattr("farm.jobs.steps.run_job", run_job)
    outcome = runner.execute_job(
        job_id, db=outage, store=LocalStore(tmp_path / "artifacts"), worker="host:1", lease_s=60, heartbeat_s=0.1
    )
    ((stopped, refused),) = stopped_during_outage
    assert not stopped and refused >= 3
    assert outcome.state == "succeeded"


def test_a_record_that_outlasts_the_bound_hands_the_error_on_and_keeps_the_objects(
    db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    job_id = _queued_job(db)
    outage = OutageDb(db)
    _fake_run_job(monkeypatch, outage, restore_after_s=None)
    store = LocalStore(tmp_path / "artifacts")

    with pytest.raises(StoreUnavailable, match=r"FARM_RECORD_RETRY_S\); giving up"):
        runner.execute_job(job_id, db=outage, store=store, worker="host:1", heartbeat_s=5, record_retry_s=1.0)

    # The job is still the worker's (the reaper re-runs it once its lease runs out); the objects stay, since a
    # COMMIT may have landed unseen (farm artifacts gc removes them if not).
    with db.session(write=False) as s:
        assert tuple(s.execute(text("SELECT state, worker FROM jobs")).one()) == ("running", "host:1")
    assert {p.name for p in (tmp_path / "artifacts").rglob("*") if p.is_file()} == {"model.pt", "manifest.json"}
