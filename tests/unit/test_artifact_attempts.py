"""Artifacts stay true (issue 10, section 3), on SQLite and the local store, no services.

Every claim uploads under ``jobs/<key>/<attempt>/``: a worker that lost its job (stalled past its lease, cancelled)
never writes over the objects a row points at, and deletes what it uploaded; ``farm artifacts gc`` removes what is
left behind (a worker killed mid-upload) and nothing else. The engine is replaced by a fake ``run_job`` that writes
known bytes: what is tested is the runner's bookkeeping, not quantization.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from farm.artifacts import LocalStore, file_uri_path
from farm.artifacts.attempts import attempt_prefix, is_live, new_attempt, parse_key, worker_slug
from farm.errors import ArtifactError
from farm.jobs import execute as runner
from farm.jobs.contract import JobResult
from farm.spec.load import load_spec
from farm.store import execution, lifecycle, plans, sweeps
from farm.store.db import Database
from farm.store.migrate import upgrade
from tests.job_rows import submit_ready
from tests.sweeps import describe, farm

SPEC = """\
name: attempts
models: [farm:digits-mlp]
methods: [fp32]
"""  # one job: the fp32 reference (no reference of its own to load)


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    monkeypatch.setenv("FARM_HOME", str(home))
    monkeypatch.delenv("FARM_DATABASE_URL", raising=False)
    monkeypatch.delenv("FARM_ARTIFACTS_URL", raising=False)
    return home


@pytest.fixture
def db(home: Path) -> Iterator[Database]:
    home.mkdir(parents=True, exist_ok=True)
    database = Database(f"sqlite:///{home / 'farm.db'}")
    upgrade(database)
    yield database
    database.dispose()


@pytest.fixture
def store(home: Path) -> LocalStore:
    return LocalStore(home / "artifacts")


def _queued_job(db: Database) -> int:
    with db.session() as s:
        (job_id,) = plans.create_sweep(s, load_spec(SPEC), "tester").to_run
        assert submit_ready(s, [job_id])
    return job_id


def _fake_run_job(monkeypatch: pytest.MonkeyPatch, during: Callable[[bytes], None] | None = None) -> None:
    """``run_job`` writes model.pt and manifest.json holding the worker's marker; ``during(marker)`` runs first."""
    markers = iter([b"first worker", b"second worker", b"third worker"])

    def run_job(spec: Any, out_dir: Path, **_: Any) -> JobResult:
        marker = next(markers)
        if during is not None:
            during(marker)
        (out_dir / "model.pt").write_bytes(marker * 100)
        (out_dir / "manifest.json").write_text(json.dumps({"by": marker.decode()}))
        return JobResult(
            model="m", dataset="d", method="fp32", config={}, bits=None, calibration_size=None, backend=None,
            observer=None, granularity=None, device="cpu", seed=0, threads=1, duration_s=0.01,
        )  # fmt: skip

    monkeypatch.setattr("farm.jobs.steps.run_job", run_job)


def _files(store: LocalStore) -> set[Path]:
    root = store.root / "jobs"
    return {p for p in root.rglob("*") if p.is_file()} if root.exists() else set()


def _rows(db: Database) -> list[dict[str, Any]]:
    with db.session(write=False) as s:
        return [dict(r) for r in s.execute(text("SELECT * FROM artifacts ORDER BY id")).mappings()]


def _assert_rows_true_and_no_orphans(db: Database, store: LocalStore) -> list[dict[str, Any]]:
    rows = _rows(db)
    for row in rows:
        path = file_uri_path(row["uri"])
        assert hashlib.sha256(path.read_bytes()).hexdigest() == row["sha256"], f"{row['uri']} changed after its row"
    assert _files(store) == {file_uri_path(r["uri"]) for r in rows}, "objects that no row points at"
    return rows


def test_a_worker_that_lost_its_lease_never_overwrites_the_recorded_objects(
    db: Database, store: LocalStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first worker stalls past its lease; the second takes the job over and records it; the first wakes,
    uploads and finds the job no longer its own. The recorded objects are the second's, byte for byte, and the
    first's are gone (on the code before attempts, the first overwrote jobs/<key>/model.pt)."""
    job_id = _queued_job(db)
    outcomes: list[runner.Outcome] = []

    def stall(marker: bytes) -> None:
        if marker == b"first worker":
            time.sleep(0.3)  # past the 0.1 s lease: the job is up for takeover
            outcomes.append(runner.execute_job(job_id, db=db, store=store, worker="host:2", lease_s=30))

    _fake_run_job(monkeypatch, stall)
    first = runner.execute_job(job_id, db=db, store=store, worker="host:1", lease_s=0.1, heartbeat_s=5)

    assert [o.state for o in outcomes] == ["succeeded"]
    assert first.state == "succeeded"  # the job's state: the second worker's result is what was recorded
    rows = _assert_rows_true_and_no_orphans(db, store)
    model = next(r for r in rows if r["kind"] == "model")
    assert file_uri_path(model["uri"]).read_bytes() == b"second worker" * 100
    assert "/2-host_2-" in model["uri"]  # the second claim's attempt: jobs/<key>/2-host_2-<random>/model.pt
    with db.session(write=False) as s:
        assert s.execute(text("SELECT attempts, worker FROM jobs")).one() == (2, "host:2")


def test_a_job_cancelled_while_it_uploaded_leaves_no_object(
    db: Database, store: LocalStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    job_id = _queued_job(db)

    def cancel(marker: bytes) -> None:  # cancelled after the run, before the upload and the record
        with db.session() as s:
            sweeps.cancel_unfinished(s, [job_id], "cancelled by a test")

    _fake_run_job(monkeypatch, cancel)
    outcome = runner.execute_job(job_id, db=db, store=store, worker="host:1", heartbeat_s=5)
    assert outcome.state == "cancelled"
    assert _rows(db) == [] and _files(store) == set()
    assert not (store.root / "jobs").exists()  # no empty directories left behind either


def test_an_upload_that_fails_half_way_deletes_what_it_wrote(
    db: Database, store: LocalStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    job_id = _queued_job(db)
    _fake_run_job(monkeypatch)
    real_put = LocalStore.put_file
    calls = []

    def put_file(self: LocalStore, local_path: Path, key: str, **kw: Any) -> Any:
        calls.append(key)
        if len(calls) == 2:
            raise ArtifactError("disk full")
        return real_put(self, local_path, key, **kw)

    monkeypatch.setattr(LocalStore, "put_file", put_file)
    outcome = runner.execute_job(job_id, db=db, store=store, worker="host:1", heartbeat_s=5)
    assert (outcome.state, outcome.error) == ("failed", "disk full")
    assert len(calls) == 2 and _files(store) == set()


def test_a_train_stage_that_lost_its_job_deletes_its_checkpoint(
    db: Database, store: LocalStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    job_id = _queued_job(db)
    with db.session() as s:
        s.execute(text("UPDATE jobs SET stage = 'train' WHERE id = :id"), {"id": job_id})

    def train_job(spec: Any, out_dir: Path, **_: Any) -> Path:
        with db.session() as s:  # cancelled while it trained
            sweeps.cancel_unfinished(s, [job_id], "cancelled by a test")
        path = out_dir / "checkpoint.pt"
        path.write_bytes(b"weights")
        return path

    monkeypatch.setattr("farm.jobs.train.train_job", train_job)
    outcome = runner.execute_job(job_id, db=db, store=store, worker="gpu:1", heartbeat_s=5)
    assert outcome.state == "cancelled" and _files(store) == set()


def test_a_train_stage_hands_off_a_checkpoint_under_its_attempt(
    db: Database, store: LocalStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    job_id = _queued_job(db)
    with db.session() as s:
        s.execute(text("UPDATE jobs SET stage = 'train' WHERE id = :id"), {"id": job_id})

    def train_job(spec: Any, out_dir: Path, **_: Any) -> Path:
        (out_dir / "checkpoint.pt").write_bytes(b"weights")
        return out_dir / "checkpoint.pt"

    monkeypatch.setattr("farm.jobs.train.train_job", train_job)
    assert runner.execute_job(job_id, db=db, store=store, worker="gpu:1", heartbeat_s=5).state == "handoff"
    (row,) = _assert_rows_true_and_no_orphans(db, store)
    parsed = parse_key(store.key_for(row["uri"]))
    assert row["kind"] == "checkpoint" and parsed is not None and parsed.attempts == 1 and parsed.worker_slug == "gpu_1"


def test_attempt_names_are_unique_and_parse_back() -> None:
    names = {new_attempt(3, "celery@host:1234") for _ in range(200)}
    assert len(names) == 200
    name = names.pop()
    parsed = parse_key(f"{attempt_prefix('k' * 64, name)}/model.pt")
    assert parsed is not None and (parsed.job_key, parsed.attempts, parsed.worker_slug) == (
        "k" * 64,
        3,
        "celery_host_1234",
    )
    assert is_live(parsed, "running", 3, "celery@host:1234")
    assert not is_live(parsed, "running", 4, "celery@host:1234")  # taken over since
    assert not is_live(parsed, "running", 3, "other:1")
    assert not is_live(parsed, "succeeded", 3, "celery@host:1234")
    assert parse_key("jobs/k/model.pt") is None and parse_key("jobs/k/not-an-attempt/model.pt") is None
    assert worker_slug("a b/c\\d") == "a_b_c_d"


# --- the store's listing -------------------------------------------------------------------------------------


def test_list_objects_lists_a_prefix_as_a_path_and_never_follows_a_symlink(store: LocalStore, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.write_bytes(b"12345")
    for key in ("jobs/ab", "jobs/ab/x/m.pt", "jobs/ab/y.pt", "jobs/abc/m.pt"):
        if key == "jobs/ab":
            continue
        store.put_file(src, key)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_bytes(b"s")
    (store.root / "jobs" / "ab" / "link").symlink_to(outside, target_is_directory=True)
    (store.root / "jobs" / "ab" / "file-link").symlink_to(outside / "secret")

    listed = sorted(store.list_objects("jobs/ab"), key=lambda o: o.key)
    assert [(o.key, o.size_bytes) for o in listed] == [("jobs/ab/x/m.pt", 5), ("jobs/ab/y.pt", 5)]
    assert listed[0].uri == store.uri_for("jobs/ab/x/m.pt") and listed[0].modified_at.tzinfo is not None
    assert abs(listed[0].modified_at.timestamp() - time.time()) < 60
    assert [o.key for o in store.list_objects("jobs/abc/m.pt")] == ["jobs/abc/m.pt"]
    assert list(store.list_objects("jobs/never")) == []
    for bad in ("", "../x", "jobs//a"):
        with pytest.raises(ArtifactError):
            list(store.list_objects(bad))


def test_delete_prefix_leaves_no_empty_directories(store: LocalStore, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.write_bytes(b"x")
    store.put_file(src, "jobs/k/1-w-00000000/model.pt")
    store.put_file(src, "jobs/k/2-w-00000000/model.pt")
    store.delete_prefix("jobs/k/1-w-00000000")
    assert [p.name for p in (store.root / "jobs" / "k").iterdir()] == ["2-w-00000000"]
    store.delete_prefix("jobs/k/2-w-00000000/model.pt")
    assert not (store.root / "jobs").exists() and store.root.is_dir()


# --- farm artifacts gc -----------------------------------------------------------------------------------------


def _age(path: Path, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then))


def test_gc_counts_first_then_removes_exactly_the_orphans(
    db: Database, store: LocalStore, home: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Recorded objects, objects of an attempt that still runs and young objects stay; the rest goes."""
    job_id = _queued_job(db)
    _fake_run_job(monkeypatch)
    assert runner.execute_job(job_id, db=db, store=store, worker="host:1", heartbeat_s=5).state == "succeeded"
    recorded = _files(store)
    assert len(recorded) == 2
    with db.session(write=False) as s:
        key = s.execute(text("SELECT key FROM jobs")).scalar_one()
    # A second job that runs now, under attempt 1 of worker host:7.
    with db.session() as s:
        other = plans.create_sweep(s, load_spec(SPEC.replace("digits-mlp", "digits-cnn")), "tester").to_run[0]
        assert submit_ready(s, [other])
        other_key = s.execute(text("SELECT key FROM jobs WHERE id = :id"), {"id": other}).scalar_one()
    with db.autocommit() as conn:
        assert lifecycle.claim_job(conn, other, "host:7", lease_s=60) is not None

    src = tmp_path / "blob"
    src.write_bytes(b"b" * 1000)
    live = store.put_file(src, f"jobs/{other_key}/1-host_7-0000000a/model.pt")  # running: kept, however old
    dead = store.put_file(src, f"jobs/{key}/1-host_9-0000000b/model.pt")  # a killed attempt: orphan
    dead_young = store.put_file(src, f"jobs/{key}/1-host_9-0000000c/model.pt")  # killed moments ago: kept
    legacy = store.put_file(src, f"jobs/{key}/model.pt")  # the layout before attempts, unreferenced: orphan
    stray = store.put_file(src, "jobs/no-such-job/x.bin")  # no job at all: orphan
    for obj in (live, dead, legacy, stray):
        _age(file_uri_path(obj.uri), 7200)
    orphans = {file_uri_path(o.uri) for o in (dead, legacy, stray)}

    dry = farm("artifacts", "gc", "--dry-run")
    assert dry.exit_code == 0, describe(dry)
    assert f"{store.url}/jobs: 7 objects (" in dry.stdout
    assert "3 orphans (2.9 KiB); kept 4: 2 recorded, 1 of running attempts, 1 younger than 3600 s" in dry.stdout
    assert dry.stdout.count("would delete") == 3 and _files(store) == recorded | orphans | {
        file_uri_path(live.uri),
        file_uri_path(dead_young.uri),
    }

    done = farm("artifacts", "gc")
    assert done.exit_code == 0, describe(done)
    assert "deleted 3 objects (2.9 KiB)" in done.stdout
    assert _files(store) == recorded | {file_uri_path(live.uri), file_uri_path(dead_young.uri)}
    for row in _rows(db):  # the recorded ones are untouched
        assert hashlib.sha256(file_uri_path(row["uri"]).read_bytes()).hexdigest() == row["sha256"]

    # --older-than 0: the young orphan goes too; the running attempt's object still stays.
    again = farm("artifacts", "gc", "--older-than", "0")
    assert again.exit_code == 0 and "deleted 1 objects" in again.stdout, describe(again)
    assert _files(store) == recorded | {file_uri_path(live.uri)}


@pytest.mark.parametrize("value", ["soon", "-1h", "1w", "99999d", ""])
def test_gc_refuses_a_bad_grace_period_in_one_line(db: Database, value: str) -> None:
    result = farm("artifacts", "gc", "--older-than", value)
    assert result.exit_code == 2, describe(result)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "--older-than" in lines[0] and "Traceback" not in result.output


def test_gc_refuses_a_bad_store_url_in_one_line(db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FARM_ARTIFACTS_URL", "s3://bucket/../x")
    result = farm("artifacts", "gc", "--dry-run")
    assert result.exit_code == 2 and "FARM_ARTIFACTS_URL" in result.stderr, describe(result)
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_record_whose_commit_landed_unseen_keeps_its_objects(
    db: Database, store: LocalStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The database goes away during COMMIT after the row was written: the retry finds the job succeeded without
    having recorded it this time. The rows show it was this attempt's result: its objects stay."""
    from farm.errors import StoreUnavailable

    job_id = _queued_job(db)
    _fake_run_job(monkeypatch)
    real_record = runner._record_result
    calls = []

    def record(*args: Any) -> tuple[str, bool]:
        state, recorded = real_record(*args)
        calls.append(state)
        if len(calls) == 1:
            raise StoreUnavailable("the connection was closed during COMMIT")
        assert not recorded  # the retry did not record it: the rows must say whose it is
        return state, recorded

    monkeypatch.setattr(runner, "_record_result", record)
    monkeypatch.setattr("farm.outage.time.sleep", lambda s: None)
    outcome = runner.execute_job(job_id, db=db, store=store, worker="host:1", heartbeat_s=5, record_retry_s=60)
    assert outcome.state == "succeeded" and calls == ["succeeded", "succeeded"]
    assert len(_assert_rows_true_and_no_orphans(db, store)) == 2


def _dead_attempt_leftover(store: LocalStore, db: Database, job_id: int) -> Path:
    """An object a worker killed mid-upload left below the job's key (its attempt 1 never recorded)."""
    with db.session(write=False) as s:
        key = s.execute(text("SELECT key FROM jobs WHERE id = :i"), {"i": job_id}).scalar_one()
    leftover = store.root / attempt_prefix(key, new_attempt(1, "dead-host:9")) / "model.pt"
    leftover.parent.mkdir(parents=True)
    leftover.write_bytes(b"half an upload")
    return leftover


def test_the_winner_deletes_what_dead_attempts_left_below_its_job(
    db: Database, store: LocalStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker SIGKILLed mid-upload can't delete its objects; the attempt that records the job does, so no object
    outlives the settled sweep without a row (before, they stayed until someone ran gc)."""
    job_id = _queued_job(db)
    with db.autocommit() as conn:  # attempt 1: its worker dies mid-upload, its lease runs out
        assert lifecycle.claim_job(conn, job_id, "dead-host:9", 0.01) is not None
    leftover = _dead_attempt_leftover(store, db, job_id)
    time.sleep(0.05)
    _fake_run_job(monkeypatch)
    outcome = runner.execute_job(job_id, db=db, store=store, worker="host:1", lease_s=30)  # attempt 2 takes over
    assert outcome.state == "succeeded"
    assert not leftover.exists()
    assert len(_assert_rows_true_and_no_orphans(db, store)) >= 2


def test_the_reaper_deletes_the_leftovers_of_a_job_it_fails(db: Database, store: LocalStore) -> None:
    """A job whose worker died under it for the last time ends failed by the reaper, and its dead attempts'
    objects go with it."""
    from workers import dispatch
    from workers.app import make_app

    job_id = _queued_job(db)
    with db.autocommit() as conn:
        assert lifecycle.claim_job(conn, job_id, "dead-host:9", 0.01) is not None
    with db.session() as s:
        s.execute(text("UPDATE jobs SET worker_losses = 2 WHERE id = :i"), {"i": job_id})
    leftover = _dead_attempt_leftover(store, db, job_id)
    time.sleep(0.05)
    app = make_app("memory://")
    assert dispatch.reap(db, app, max_attempts=3, store=store) == (0, 1)
    assert not leftover.exists()
    assert _files(store) == set()


def test_a_hand_off_whose_commit_landed_unseen_sends_the_finish_stage_on_the_retry(
    db: Database, store: LocalStore, tmp_path: Path
) -> None:
    """The retry of a hand-off (its first COMMIT landed, the answer was lost) gets the same message back, not
    None: the finish stage would otherwise never be sent."""
    job_id = _queued_job(db)
    with db.session() as s:
        s.execute(text("UPDATE jobs SET stage = 'train', finish_queue = 'cpu' WHERE id = :id"), {"id": job_id})
    with db.autocommit() as conn:
        assert lifecycle.claim_job(conn, job_id, "gpu:1", lease_s=60) is not None
    src = tmp_path / "checkpoint.pt"
    src.write_bytes(b"weights")
    stored = store.put_file(src, "jobs/k/1-gpu_1-0000000a/checkpoint.pt")
    with db.session() as s:
        first = execution.queue_finish_stage(s, job_id, "gpu:1", stored)
    with db.session() as s:
        again = execution.queue_finish_stage(s, job_id, "gpu:1", stored)
    assert first is not None and again == first and first.stage == "finish"
    other = store.put_file(src, "jobs/k/2-gpu_2-0000000b/checkpoint.pt")
    with db.session() as s:  # another attempt's checkpoint is not this hand-off's: nothing to send
        assert execution.queue_finish_stage(s, job_id, "gpu:2", other) is None


def test_gc_refuses_when_the_rows_point_at_another_store(
    db: Database, store: LocalStore, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A gc run with the wrong FARM_ARTIFACTS_URL / FARM_HOME would see every recorded object as an orphan: it
    refuses, deleting nothing."""
    from farm.artifact_gc import plan_gc
    from farm.errors import ArtifactError

    job_id = _queued_job(db)
    _fake_run_job(monkeypatch)
    assert runner.execute_job(job_id, db=db, store=store, worker="host:1", heartbeat_s=5).state == "succeeded"
    elsewhere = LocalStore(tmp_path / "elsewhere")
    for path in _files(store):  # the same objects, seen through another root
        target = elsewhere.root / path.relative_to(store.root)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(path.read_bytes())
    with pytest.raises(ArtifactError, match="lies outside the store"):
        plan_gc(db, elsewhere, grace_s=0)
    assert len(_files(elsewhere)) == 2
