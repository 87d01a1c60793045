"""bench/chaos.py's audit finds what it claims to count: on a database and an S3 bucket (moto's server) holding
one of each flaw, every figure of the audit is that flaw's."""

from __future__ import annotations

import hashlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import sqlalchemy as sa

pytestmark = pytest.mark.integration

BENCH = Path(__file__).resolve().parents[2] / "bench"
LOG_LINE = "Task farm.run_job[{}] succeeded in 1.2s: '{}'\n"
SCHEMA = [
    "CREATE TABLE jobs (id INTEGER PRIMARY KEY, state TEXT, method TEXT, attempts INT, worker_losses INT, error TEXT)",
    "CREATE TABLE sweep_jobs (sweep_id INT, job_id INT)",
    "CREATE TABLE metrics (job_id INT, batch_size INT)",
    "CREATE TABLE artifacts (job_id INT, kind TEXT, uri TEXT, sha256 TEXT, size_bytes INT)",
]


def _audit_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("chaos_audit", BENCH / "chaos_audit.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_the_audit_counts_each_flaw_once(tmp_path: Path, s3_client: Any, s3_bucket: str) -> None:
    chaos_audit = _audit_module()
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'farm.db'}")

    def put(key: str, body: bytes) -> tuple[str, str, int]:
        s3_client.put_object(Bucket=s3_bucket, Key=f"r1/{key}", Body=body)
        return f"s3://{s3_bucket}/r1/{key}", hashlib.sha256(body).hexdigest(), len(body)

    good = put("jobs/k1/1-w-00000001/model.pt", b"model one")
    other_attempt = put("jobs/k1/2-v-0000000a/manifest.json", b"{}")
    changed = put("jobs/k2/1-w-00000002/model.pt", b"model two")
    put("jobs/k2/1-w-00000002/model.pt", b"written over by a late worker")
    missing = (f"s3://{s3_bucket}/r1/jobs/k3/1-w-00000003/model.pt", "0" * 64, 3)
    put("jobs/k9/2-w-00000009/model.pt", b"nobody's")  # an orphan
    put("elsewhere/not-a-job-object", b"outside jobs/: not the audit's business")

    with engine.begin() as c:
        for ddl in SCHEMA:
            c.exec_driver_sql(ddl)
        for job_id, state in ((1, "succeeded"), (2, "succeeded"), (3, "succeeded"), (4, "queued")):
            c.execute(
                sa.text("INSERT INTO jobs VALUES (:i, :s, 'qat', 1, :l, NULL)"), {"i": job_id, "s": state, "l": 0}
            )
            c.execute(sa.text("INSERT INTO sweep_jobs VALUES (1, :i)"), {"i": job_id})
        c.execute(sa.text("UPDATE jobs SET worker_losses = 1 WHERE id = 3"))
        for job_id in (1, 2, 2, 3):  # job 2's metrics twice
            c.execute(sa.text("INSERT INTO metrics VALUES (:i, 1)"), {"i": job_id})
        for job_id, (uri, sha, size) in ((1, good), (1, other_attempt), (2, changed), (3, missing)):
            c.execute(
                sa.text("INSERT INTO artifacts VALUES (:i, :k, :u, :h, :n)"),
                {"i": job_id, "k": uri.rsplit("/", 1)[1].split(".")[0], "u": uri, "h": sha, "n": size},
            )
    log = tmp_path / "worker1.log"
    log.write_text(
        LOG_LINE.format("a", "succeeded") + LOG_LINE.format("b", "skipped") + LOG_LINE.format("c", "succeeded")
    )

    audit = chaos_audit.audit_round(engine, 1, s3_client, s3_bucket, "r1", [log, tmp_path / "never-written.log"])

    assert (audit.jobs, audit.succeeded, audit.lost) == (4, 3, 1)
    assert (audit.duplicate_rows, audit.missing_objects, audit.sha_mismatches) == (1, 1, 1)
    assert (audit.orphans, audit.orphan_bytes) == (1, len(b"nobody's"))
    assert (audit.runs_completed, audit.worker_losses, audit.mixed_records) == (2, 1, 1)
    assert not audit.exactly_once
    assert any("job 4 (qat) queued" in p for p in audit.problems)
    assert any(p.startswith("job 1: artifact rows from 2 attempts") for p in audit.problems)

    outcome = chaos_audit.Outcome(1, "db-drop", "db down 15 s", 0, "failed", "failed", True, 30.0, audit)
    assert not outcome.wait_truthful and not outcome.passed and outcome.verdict == "FAIL"
    clean = chaos_audit.Audit(jobs=14, succeeded=14, runs_completed=15, worker_losses=1)
    assert chaos_audit.Outcome(2, "pool-kill", "SIGKILL", 0, "succeeded", "succeeded", True, 20.0, clean).passed
    assert not chaos_audit.Outcome(3, "s3-drop", "s3 down", 0, "succeeded", "succeeded", True, 20.0, clean).passed
    assert chaos_audit.Outcome(4, "s3-drop", "no fault", 0, "succeeded", "succeeded", True, 9.0, clean).verdict == (
        "no fault"
    )
