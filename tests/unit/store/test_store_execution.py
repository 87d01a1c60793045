"""farm.store.execution on SQLite: what a worker's execution of a job reads and writes, as plain values.

The worker side (farm/jobs/execute.py, lease.py, attempt.py) holds no session and sees no ORM row: each function
here is one transaction and answers with a frozen dataclass (or a state, or a message).
"""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest

from farm.artifacts.base import StoredObject
from farm.spec.load import load_spec
from farm.store import execution, plans
from farm.store.db import Database
from farm.store.models import Job
from tests.job_rows import submit_ready

SPEC = """\
name: execution
models: [farm:digits-mlp]
methods: [fp32, dynamic]
benchmark: {batch_size: [1]}
"""
ROOT = Path(__file__).resolve().parents[3]


def _sweep(db: Database) -> tuple[int, int]:
    """A reference (queued) and the trial that compares with it (pending)."""
    with db.session() as s:
        record = plans.create_sweep(s, load_spec(SPEC), "tester", route=lambda j: ("cpu", "all", None))
        (ref,) = [i for i in record.to_run if s.get(Job, i).role == "reference"]  # type: ignore[union-attr]
        (trial,) = [i for i in record.ids.values() if i != ref]
        assert submit_ready(s, [ref])
    return ref, trial


def _object(name: str) -> StoredObject:
    return StoredObject(key=f"jobs/k/1-w-0000000a/{name}", uri=f"file:///store/{name}", sha256="ab" * 32, size_bytes=3)


RESULT = {"duration_s": 0.1, "latency": [{"batch_size": 1, "latency_p50_ms": 1.0}]}


def test_a_claim_is_plain_data_and_only_one_worker_gets_it(migrated_db: Database) -> None:
    ref, trial = _sweep(migrated_db)
    claim = execution.claim(migrated_db, ref, "w1", lease_s=60)
    assert claim is not None and dataclasses.is_dataclass(claim)
    assert (claim.id, claim.role, claim.attempts, claim.worker) == (ref, "reference", 1, "w1")
    assert execution.claim(migrated_db, ref, "w2", lease_s=60) is None  # held
    assert execution.claim(migrated_db, trial, "w2", lease_s=60) is None  # pending: its reference has not run


def test_the_reference_of_a_trial_says_its_state_error_and_file(migrated_db: Database) -> None:
    ref, _ = _sweep(migrated_db)
    pending = execution.reference_of(migrated_db, ref)
    assert (pending.state, pending.file) == ("queued", None)
    assert execution.claim(migrated_db, ref, "w1", lease_s=60) is not None
    stored = [("model", _object("model.pt")), ("reference", _object("reference.pt"))]
    assert execution.record_result(migrated_db, ref, "w1", RESULT, stored) == execution.Recorded("succeeded", True)
    done = execution.reference_of(migrated_db, ref)
    assert done.state == "succeeded" and done.file == execution.StoredFile("file:///store/reference.pt", "ab" * 32)
    assert execution.reference_of(migrated_db, 10_000) == execution.ReferenceInfo(10_000, None, None, None)


def test_a_failed_reference_carries_its_error(migrated_db: Database) -> None:
    ref, _ = _sweep(migrated_db)
    assert execution.claim(migrated_db, ref, "w1", lease_s=60) is not None
    assert execution.end_job(migrated_db, ref, "w1", "failed", "no kernel") == "failed"
    found = execution.reference_of(migrated_db, ref)
    assert (found.state, found.error, found.file) == ("failed", "no kernel", None)


def test_only_the_first_record_records_and_a_loser_learns_the_state(migrated_db: Database) -> None:
    ref, _ = _sweep(migrated_db)
    assert execution.claim(migrated_db, ref, "w1", lease_s=60) is not None
    stored = [("model", _object("model.pt"))]
    assert execution.record_result(migrated_db, ref, "w1", RESULT, stored) == execution.Recorded("succeeded", True)
    # A retry after a COMMIT that landed unseen: succeeded, but not recorded by this call.
    assert execution.record_result(migrated_db, ref, "w1", RESULT, stored) == execution.Recorded("succeeded", False)
    assert execution.recorded_here(migrated_db, ref, ["file:///store/model.pt"])
    assert not execution.recorded_here(migrated_db, ref, ["file:///elsewhere/model.pt"])
    # An ending that comes after the success changes nothing, and says so.
    assert execution.end_job(migrated_db, ref, "w1", "failed", "late") == "succeeded"


def test_a_cancelled_job_is_not_recorded_nor_released(migrated_db: Database) -> None:
    ref, _ = _sweep(migrated_db)
    assert execution.claim(migrated_db, ref, "w1", lease_s=60) is not None
    assert execution.extend_lease(migrated_db, ref, "w1", 60) == "running"
    assert execution.end_job(migrated_db, ref, None, "cancelled", "cancelled by the operator") == "cancelled"
    assert execution.extend_lease(migrated_db, ref, "w1", 60) == "cancelled"
    assert not execution.release(migrated_db, ref, "w1", "broker away")
    assert execution.record_result(migrated_db, ref, "w1", RESULT, []) == execution.Recorded("cancelled", False)


def test_a_released_job_is_queued_again_for_any_worker(migrated_db: Database) -> None:
    ref, _ = _sweep(migrated_db)
    assert execution.claim(migrated_db, ref, "w1", lease_s=60) is not None
    assert execution.checkpoint_of(migrated_db, ref) is None
    assert execution.release(migrated_db, ref, "w1", "store away")
    again = execution.claim(migrated_db, ref, "w2", lease_s=60)
    assert again is not None and again.attempts == 2


@pytest.mark.parametrize("module", ["execute", "lease", "attempt"])
def test_the_worker_side_opens_no_session_of_its_own(module: str) -> None:
    """farm/jobs' execution of a job reads and writes through farm.store.execution only."""
    tree = ast.parse((ROOT / "farm" / "jobs" / f"{module}.py").read_text(encoding="utf-8"))
    calls = [
        f"line {node.lineno}: .{node.func.attr}()"
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr in ("session", "autocommit", "connect")
    ]
    stores = {
        alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module == "farm.store"
        for alias in node.names
    }
    assert calls == [], f"farm/jobs/{module}.py opens database sessions: {calls}"
    assert stores <= {"execution"}, f"farm/jobs/{module}.py reads the store around farm.store.execution: {stores}"
